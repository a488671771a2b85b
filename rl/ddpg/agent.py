"""DDPG with TD3 options, trained entirely on the device and vmapped over seeds.

``make_train(config) -> train(key)`` builds one pure function that runs a whole
training run — environment steps, replay buffer, gradient updates and periodic
deterministic evaluation — as nested ``lax.scan``s inside one ``jax.jit``, in the
style of PureJaxRL. ``jax.vmap(train)(keys)`` trains one agent per seed at once;
the seed axis can be sharded over devices (``common.sharding``).

Structure of a run of ``total_steps`` environment steps (per seed)::

    scan over periods p = 0 .. total_steps / eval_every − 1
        scan over env steps t = p · eval_every .. (p + 1) · eval_every − 1
            a_t = uniform(low, high)                       if t < learning_starts
                = clip(μ(s_t) + n_t ⊙ half_range, low, high)   otherwise (n: noise)
            s_{t+1}, r_t, terminated, truncated = env.step(s_t, a_t)   (auto-reset)
            buffer ← add(buffer, (s_t, a_t, r_t, s'_t, 1 − terminated))
            if t >= learning_starts and (t − learning_starts) % train_every == 0:
                updates_per_step × [critic step; every policy_delay-th: actor step
                                    and soft target updates]
        deterministic evaluation of μ on eval_episodes episodes

Randomness: step ``t`` draws from ``fold_in(key_run, t)``, evaluation from
``key_eval``; nothing depends on how the run is split into scan chunks, so a run
resumed from a checkpoint between chunks equals the uninterrupted one.

TD3 (Fujimoto et al. 2018) is the same agent with ``num_critics=2`` (minimum
target), ``target_noise=0.2`` (target policy smoothing, noise clipped at
``target_noise_clip``) and ``policy_delay=2`` (actor and target updates every
second critic update); see :func:`td3_config`.

Failures are never silent NaNs: a non-finite reward, observation or loss sets a
sticky error flag in the state (with the first env step it was seen at), and
:func:`train_seeds` — the seeds vmapped in chunks driven by ``common.train.fit``, the
project's one host loop — raises ``FloatingPointError`` after the chunk
(:func:`raise_on_error` does the same for states from ``train``).

Example:
    >>> cfg = ddpg_config(total_steps=5_000)
    >>> train = jax.jit(jax.vmap(make_train(cfg)))
    >>> state, metrics = train(jax.random.split(jax.random.key(0), 8))
    >>> metrics["eval_return"].shape                     # [seeds, periods]
    (8, 5)

References: D. Silver et al., "Deterministic Policy Gradient Algorithms", ICML 2014;
T. P. Lillicrap et al., "Continuous control with deep reinforcement learning", ICLR
2016; S. Fujimoto, H. van Hoof, D. Meger, "Addressing Function Approximation Error
in Actor-Critic Methods", ICML 2018; C. Lu et al., "Discovered Policy Optimisation"
(PureJaxRL), NeurIPS 2022.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct

from common.distributed import to_host
from common.optim import OptimConfig, build_optimizer
from common.registry import Registry
from rl import replay
from rl.ddpg.losses import (
    critic_loss,
    dpg_actor_loss,
    smoothed_target_action,
    soft_update,
    td_target,
    validate_dqda_clipping,
    validate_tau,
)
from rl.ddpg.networks import Actor, Critic
from rl.ddpg.noise import NOISES
from rl.envs.gymnax_env import ContinuousEnv, make_env

__all__ = [
    "ERROR_BITS",
    "PRESETS",
    "DDPGAgent",
    "DDPGConfig",
    "DDPGState",
    "Learner",
    "TrainResult",
    "ddpg_config",
    "make_agent",
    "make_chunk_fn",
    "make_train",
    "raise_on_error",
    "seed_keys",
    "seed_rows",
    "td3_config",
    "train_seeds",
]

# Sticky error flags in DDPGState.error.
ERROR_BITS = {1: "non-finite reward from the environment",
              2: "non-finite observation from the environment",
              4: "non-finite loss (a NaN/inf update, or a replay batch sampled from a "
                 "buffer holding fewer transitions than batch_size)"}


@dataclasses.dataclass(frozen=True)
class DDPGConfig:
    """Everything that defines a DDPG/TD3 run of one seed.

    Attributes:
      env: gymnax environment id with a Box action space.
      total_steps: environment steps per seed (a multiple of ``eval_every``).
      learning_starts: uniform random actions and no updates before this step
        (``>= batch_size``, so every sampled batch comes from filled slots).
      buffer_size: replay capacity (ring overwrite).
      batch_size: transitions per update.
      gamma: discount factor in [0, 1].
      tau: soft target update step in (0, 1].
      actor_hidden, critic_hidden: hidden layer sizes of the MLPs.
      activation: hidden activation of both networks.
      actor_optim, critic_optim: optimizers (``common.optim.build_optimizer``).
      exploration: name in ``rl.ddpg.noise.NOISES`` ("gaussian", "ou").
      exploration_std: noise scale in units of the half action range.
      ou_theta, ou_dt: Ornstein–Uhlenbeck parameters (``exploration="ou"``).
      train_every: update every this many env steps ...
      updates_per_step: ... with this many gradient updates (update-to-data ratio
        ``updates_per_step / train_every``).
      num_critics: 1 (DDPG) or 2 (TD3's twin critics, minimum target).
      policy_delay: actor and target updates every this many critic updates.
      target_noise: TD3 target policy smoothing std (half-range units; 0 disables).
      target_noise_clip: clip of the smoothing noise (half-range units).
      dqda_clipping: clip each ``∂Q/∂a`` of the actor update to ``[−c, c]`` (rlax's
        ``dpg_loss`` option); None (default) is the plain DPG.
      eval_every: env steps between deterministic evaluations.
      eval_episodes: episodes per evaluation.
    """

    env: str = "Pendulum-v1"
    total_steps: int = 20_000
    learning_starts: int = 1_000
    buffer_size: int = 20_000
    batch_size: int = 128
    gamma: float = 0.98
    tau: float = 0.005
    actor_hidden: tuple[int, ...] = (64, 64)
    critic_hidden: tuple[int, ...] = (64, 64)
    activation: str = "relu"
    actor_optim: OptimConfig = OptimConfig(name="adam", learning_rate=1e-3)
    critic_optim: OptimConfig = OptimConfig(name="adam", learning_rate=1e-3)
    exploration: str = "gaussian"
    exploration_std: float = 0.1
    ou_theta: float = 0.15
    ou_dt: float = 1e-2
    train_every: int = 1
    updates_per_step: int = 1
    num_critics: int = 1
    policy_delay: int = 1
    target_noise: float = 0.0
    target_noise_clip: float = 0.5
    dqda_clipping: float | None = None
    eval_every: int = 1_000
    eval_episodes: int = 10

    @property
    def num_periods(self) -> int:
        return self.total_steps // self.eval_every

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistent field."""
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(f"DDPGConfig: {message}")

        validate_tau(self.tau)
        validate_dqda_clipping(self.dqda_clipping)
        need(0.0 <= self.gamma <= 1.0, f"gamma must be in [0, 1], got {self.gamma}")
        need(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        need(self.buffer_size >= self.batch_size,
             f"buffer_size ({self.buffer_size}) must be >= batch_size ({self.batch_size})")
        need(self.learning_starts >= self.batch_size,
             f"learning_starts ({self.learning_starts}) must be >= batch_size "
             f"({self.batch_size}) so the first update samples filled slots only")
        need(self.eval_every >= 1, f"eval_every must be >= 1, got {self.eval_every}")
        need(self.total_steps >= self.eval_every and self.total_steps % self.eval_every == 0,
             f"total_steps ({self.total_steps}) must be a positive multiple of eval_every "
             f"({self.eval_every})")
        need(self.eval_episodes >= 1, f"eval_episodes must be >= 1, got {self.eval_episodes}")
        need(self.train_every >= 1 and self.updates_per_step >= 1,
             f"train_every and updates_per_step must be >= 1, got {self.train_every}, "
             f"{self.updates_per_step}")
        need(self.num_critics >= 1, f"num_critics must be >= 1, got {self.num_critics}")
        need(self.policy_delay >= 1, f"policy_delay must be >= 1, got {self.policy_delay}")
        need(self.target_noise >= 0.0 and self.target_noise_clip > 0.0,
             f"need target_noise >= 0 and target_noise_clip > 0, got {self.target_noise}, "
             f"{self.target_noise_clip}")
        need(self.exploration_std >= 0.0,
             f"exploration_std must be >= 0, got {self.exploration_std}")
        need(len(self.actor_hidden) >= 1 and len(self.critic_hidden) >= 1,
             "actor_hidden and critic_hidden need at least one layer")
        NOISES.get(self.exploration)


PRESETS: Registry[Callable[..., DDPGConfig]] = Registry("agent preset")
"""Named algorithm presets of the one DDPG agent: ``PRESETS.get(name)(**overrides)`` is a
:class:`DDPGConfig`. Every preset runs through the behavioural suite in the tests
(TD target, delayed updates, target smoothing)."""


@PRESETS.register("ddpg")
def ddpg_config(**overrides) -> DDPGConfig:
    """DDPG (Lillicrap et al. 2016): one critic, no smoothing, no delay."""
    return dataclasses.replace(DDPGConfig(), **overrides)


@PRESETS.register("td3")
def td3_config(**overrides) -> DDPGConfig:
    """TD3 (Fujimoto et al. 2018): twin critics, target smoothing 0.2 clipped at 0.5,
    actor/target updates every second critic update."""
    base = dataclasses.replace(DDPGConfig(), num_critics=2, target_noise=0.2,
                               target_noise_clip=0.5, policy_delay=2)
    return dataclasses.replace(base, **overrides)


@struct.dataclass
class Learner:
    """Network parameters and optimizer states. ``critic`` and ``target_critic`` are
    the ``C`` critics stacked along a leading axis ``[C, ...]``."""

    actor: Any
    critic: Any
    target_actor: Any
    target_critic: Any
    actor_opt: Any
    critic_opt: Any


@struct.dataclass
class DDPGState:
    """The whole state of one seed's run: a pytree, so it vmaps, shards and checkpoints.

    Attributes:
      learner: parameters, targets, optimizer states.
      buffer: the replay buffer (``rl.replay.ReplayState``).
      env_state: the environment state; ``obs [O]`` its observation.
      noise: ``[A]`` exploration-noise state (OU).
      episode_return, episode_length: of the episode in progress.
      step: int32, environment steps taken.
      key: the seed's key (never advanced; steps use ``fold_in``).
      error: int32 bitmask of ``ERROR_BITS``; ``error_step``: the env step it was
        first set at (−1 if never).
      eval_return: the latest deterministic evaluation's mean return (NaN before
        the first).
    """

    learner: Learner
    buffer: replay.ReplayState
    env_state: Any
    obs: jax.Array
    noise: jax.Array
    episode_return: jax.Array
    episode_length: jax.Array
    step: jax.Array
    key: jax.Array
    error: jax.Array
    error_step: jax.Array
    eval_return: jax.Array


def _nan_mean(values, weights):
    total = jnp.sum(weights)
    return jnp.where(total > 0, jnp.sum(values * weights) / jnp.maximum(total, 1), jnp.nan)


class DDPGAgent:
    """The pure functions of one configuration (build with :func:`make_agent`).

    Every method is a pure, jittable function of arrays; ``self`` only holds static
    structure (network graph definitions, optimizers, the environment).
    """

    def __init__(self, config: DDPGConfig, env: ContinuousEnv | None = None):
        config.validate()
        self.config = config
        self.env = make_env(config.env) if env is None else env
        env = self.env
        self.low = jnp.asarray(env.action_low)
        self.high = jnp.asarray(env.action_high)
        self.half_range = 0.5 * (self.high - self.low)
        self.actor_tx = build_optimizer(config.actor_optim)
        self.critic_tx = build_optimizer(config.critic_optim)
        self.noise = NOISES.get(config.exploration)(std=config.exploration_std,
                                                    theta=config.ou_theta, dt=config.ou_dt)
        # Static structure (graph definitions) and the non-parameter state the MLPs
        # carry (dropout RNG counters, unused at rate 0), built without eager op-by-op
        # initialisation: the graph from an abstract model, the rest in one jitted call.
        self._actor_def, self._actor_rest = self._structure(self._actor)
        self._critic_def, self._critic_rest = self._structure(self._critic)

    # ------------------------------------------------------------------ networks

    @staticmethod
    def _structure(build):
        graphdef = nnx.split(nnx.eval_shape(lambda: build(jax.random.key(0))), nnx.Param, ...)[0]
        rest = jax.jit(lambda k: nnx.split(build(k), nnx.Param, ...)[2])(jax.random.key(0))
        return graphdef, rest

    def _actor(self, key) -> Actor:
        cfg, env = self.config, self.env
        return Actor(env.obs_dim, env.action_dim, low=env.action_low.tolist(),
                     high=env.action_high.tolist(), hidden=cfg.actor_hidden,
                     activation=cfg.activation, rngs=nnx.Rngs(key))

    def _critic(self, key) -> Critic:
        cfg, env = self.config, self.env
        return Critic(env.obs_dim, env.action_dim, hidden=cfg.critic_hidden,
                      activation=cfg.activation, rngs=nnx.Rngs(key))

    def init_actor(self, key: jax.Array):
        """Fresh actor parameters (an ``nnx.State``)."""
        return nnx.split(self._actor(key), nnx.Param, ...)[1]

    def init_critic(self, key: jax.Array):
        """Fresh parameters of one critic (an ``nnx.State``)."""
        return nnx.split(self._critic(key), nnx.Param, ...)[1]

    def act(self, actor_params, obs: jax.Array) -> jax.Array:
        """Deterministic policy ``μ(obs)``: ``[..., O] → [..., A]`` inside the bounds."""
        return nnx.merge(self._actor_def, actor_params, self._actor_rest)(obs)

    def q_value(self, critic_params, obs: jax.Array, action: jax.Array) -> jax.Array:
        """One critic: ``Q(obs [..., O], action [..., A]) → [...]``."""
        return nnx.merge(self._critic_def, critic_params, self._critic_rest)(obs, action)

    def q_values(self, critics, obs: jax.Array, action: jax.Array) -> jax.Array:
        """All ``C`` stacked critics: ``[C, ...]``."""
        return jax.vmap(self.q_value, in_axes=(0, None, None))(critics, obs, action)

    # ------------------------------------------------------------------ losses

    def critic_loss_fn(self, critics, learner: Learner, batch, key):
        """TD loss of the stacked critics against the target networks (module docstring)."""
        cfg = self.config
        next_action = self.act(learner.target_actor, batch["next_obs"])  # [B, A]
        next_action = smoothed_target_action(next_action, key, cfg.target_noise,
                                             cfg.target_noise_clip, self.low, self.high)
        next_q = jnp.min(self.q_values(learner.target_critic, batch["next_obs"], next_action),
                         axis=0)  # [B]
        target = td_target(batch["reward"], batch["discount"], next_q, cfg.gamma)
        q = self.q_values(critics, batch["obs"], batch["action"])  # [C, B]
        return critic_loss(q, target), jnp.mean(q)

    def actor_loss_fn(self, actor_params, critics, obs):
        """DPG loss ``−mean Q_1(s, μ(s))`` (first critic), with ``∂Q/∂a`` clipped to
        ``[−c, c]`` when ``dqda_clipping = c`` is set."""
        first = jax.tree.map(lambda x: x[0], critics)
        action = self.act(actor_params, obs)
        clip = self.config.dqda_clipping
        if clip is None:
            return dpg_actor_loss(self.q_value(first, obs, action))
        # Q(s_b, a_b) depends on a_b only: the pullback of ones is ∂Q/∂a per sample
        q, pullback = jax.vjp(lambda a: self.q_value(first, obs, a), action)
        return dpg_actor_loss(q, action, pullback(jnp.ones_like(q))[0], dqda_clipping=clip)

    def update(self, learner: Learner, batch, key: jax.Array, update_index) -> tuple[Learner,
                                                                                   dict]:
        """One gradient update from a replay batch.

        A critic step always; when ``update_index % policy_delay == 0`` also an actor
        step and soft updates of both targets.

        Args:
          learner: current parameters and optimizer states.
          batch: ``{"obs": [B, O], "action": [B, A], "reward": [B], "next_obs": [B, O],
            "discount": [B]}``.
          key: PRNG key (target policy smoothing).
          update_index: int scalar, the number of updates before this one.

        Returns:
          ``(learner, metrics)`` with scalar ``critic_loss``, ``q_mean``,
          ``actor_loss`` and ``actor_updated`` (1.0 when the actor stepped).
        """
        cfg = self.config
        (c_loss, q_mean), grads = jax.value_and_grad(self.critic_loss_fn, has_aux=True)(
            learner.critic, learner, batch, key)
        updates, critic_opt = self.critic_tx.update(grads, learner.critic_opt, learner.critic)
        learner = learner.replace(critic=optax.apply_updates(learner.critic, updates),
                                  critic_opt=critic_opt)

        def actor_step(learner):
            a_loss, grads = jax.value_and_grad(self.actor_loss_fn)(
                learner.actor, learner.critic, batch["obs"])
            updates, actor_opt = self.actor_tx.update(grads, learner.actor_opt, learner.actor)
            actor = optax.apply_updates(learner.actor, updates)
            learner = learner.replace(
                actor=actor, actor_opt=actor_opt,
                target_actor=soft_update(learner.target_actor, actor, cfg.tau),
                target_critic=soft_update(learner.target_critic, learner.critic, cfg.tau))
            return learner, a_loss, jnp.ones((), jnp.float32)

        def skip(learner):
            return learner, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32)

        if cfg.policy_delay == 1:
            learner, a_loss, stepped = actor_step(learner)
        else:
            learner, a_loss, stepped = jax.lax.cond(update_index % cfg.policy_delay == 0,
                                                    actor_step, skip, learner)
        return learner, {"critic_loss": c_loss, "q_mean": q_mean, "actor_loss": a_loss,
                         "actor_updated": stepped}

    # ------------------------------------------------------------------ state

    def example_transition(self) -> dict:
        env = self.env
        return {"obs": jnp.zeros((env.obs_dim,), jnp.float32),
                "action": jnp.zeros((env.action_dim,), jnp.float32),
                "reward": jnp.zeros((), jnp.float32),
                "next_obs": jnp.zeros((env.obs_dim,), jnp.float32),
                "discount": jnp.zeros((), jnp.float32)}

    def init(self, key: jax.Array) -> DDPGState:
        """The state of one seed before its first step (vmap it over seeds)."""
        cfg = self.config
        k_actor, k_critic, k_env = jax.random.split(key, 3)
        actor = self.init_actor(k_actor)
        critics = jax.vmap(self.init_critic)(jax.random.split(k_critic, cfg.num_critics))
        learner = Learner(actor=actor, critic=critics, target_actor=actor,
                          target_critic=critics, actor_opt=self.actor_tx.init(actor),
                          critic_opt=self.critic_tx.init(critics))
        obs, env_state = self.env.reset(k_env)
        return DDPGState(learner=learner,
                         buffer=replay.init(self.example_transition(), cfg.buffer_size),
                         env_state=env_state, obs=obs,
                         noise=self.noise.init(self.env.action_dim),
                         episode_return=jnp.zeros((), jnp.float32),
                         episode_length=jnp.zeros((), jnp.int32),
                         step=jnp.zeros((), jnp.int32), key=key,
                         error=jnp.zeros((), jnp.int32), error_step=-jnp.ones((), jnp.int32),
                         eval_return=jnp.full((), jnp.nan, jnp.float32))

    def _step_key(self, key, t):
        return jax.random.fold_in(jax.random.fold_in(key, 0), t)

    def eval_key(self, key):
        """The evaluation key of a seed (the same episodes at every evaluation)."""
        return jax.random.fold_in(key, 1)

    def explore(self, state: DDPGState, key: jax.Array, t) -> tuple[jax.Array, jax.Array]:
        """Behaviour action ``[A]`` at step ``t`` and the new noise state."""
        k_noise, k_random = jax.random.split(key)
        noise, noise_state = self.noise.sample(state.noise, k_noise, state.episode_length == 0)
        action = jnp.clip(self.act(state.learner.actor, state.obs) + noise * self.half_range,
                          self.low, self.high)
        random_action = self.env.random_action(k_random)
        return jnp.where(t < self.config.learning_starts, random_action, action), noise_state

    def env_step(self, state: DDPGState, t, learn: bool = True) -> tuple[DDPGState, dict]:
        """One environment step at (unbatched) step index ``t``, then the updates due."""
        cfg = self.config
        k_act, k_env, k_update = jax.random.split(self._step_key(state.key, t), 3)
        action, noise_state = self.explore(state, k_act, t)
        step = self.env.step(k_env, state.env_state, action)
        transition = {"obs": state.obs, "action": action, "reward": step.reward,
                      "next_obs": step.next_obs, "discount": step.discount}
        buffer = replay.add(state.buffer, transition)
        episode_return = state.episode_return + step.reward
        flags = (jnp.where(jnp.isfinite(step.reward), 0, 1)
                 | jnp.where(jnp.all(jnp.isfinite(step.next_obs)), 0, 2))
        learner, upd = state.learner, self._no_update_metrics()
        if learn:
            due = (t >= cfg.learning_starts) & ((t - cfg.learning_starts) % cfg.train_every == 0)
            learner, upd = jax.lax.cond(due, self._updates, self._skip_updates,
                                        learner, buffer, k_update, t)
            flags = flags | jnp.where(jnp.isfinite(upd["critic_loss"])
                                      & jnp.isfinite(upd["actor_loss"]), 0, 4)
        error = state.error | flags
        error_step = jnp.where((state.error_step < 0) & (flags != 0), t, state.error_step)
        done = step.done
        new_state = state.replace(
            learner=learner, buffer=buffer, env_state=step.state, obs=step.obs,
            noise=noise_state, episode_return=jnp.where(done, 0.0, episode_return),
            episode_length=jnp.where(done, 0, state.episode_length + 1).astype(jnp.int32),
            step=state.step + 1, error=error, error_step=error_step)
        info = {"done": done, "return": episode_return, **upd}
        return new_state, info

    def _no_update_metrics(self):
        zero = jnp.zeros((), jnp.float32)
        return {"critic_loss": zero, "q_mean": zero, "actor_loss": zero, "actor_updated": zero,
                "updates": zero}

    def _skip_updates(self, learner, buffer, key, t):
        return learner, self._no_update_metrics()

    def _updates(self, learner, buffer, key, t):
        cfg = self.config
        first = (t - cfg.learning_starts) // cfg.train_every * cfg.updates_per_step

        def one(learner, j):
            k_sample, k_update = jax.random.split(jax.random.fold_in(key, j))
            batch = replay.sample(buffer, k_sample, cfg.batch_size)
            return self.update(learner, batch, k_update, first + j)

        if cfg.updates_per_step == 1:
            learner, metrics = one(learner, jnp.zeros((), jnp.int32))
            metrics = jax.tree.map(lambda x: x[None], metrics)
        else:
            learner, metrics = jax.lax.scan(one, learner, jnp.arange(cfg.updates_per_step))
        actor_loss = _nan_mean(metrics["actor_loss"], metrics["actor_updated"])
        return learner, {"critic_loss": jnp.mean(metrics["critic_loss"]),
                         "q_mean": jnp.mean(metrics["q_mean"]),
                         "actor_loss": jnp.nan_to_num(actor_loss, nan=0.0),
                         "actor_updated": jnp.sum(metrics["actor_updated"]),
                         "updates": jnp.asarray(cfg.updates_per_step, jnp.float32)}

    # ------------------------------------------------------------------ loops

    def run_steps(self, state: DDPGState, first_step, num_steps: int, learn: bool = True):
        """``num_steps`` env steps (with updates if ``learn``) under one ``lax.scan``.

        Args:
          state: one seed's state.
          first_step: int scalar, the step index of the first step (must equal
            ``state.step``; passed separately so that it stays unbatched under vmap
            and the update/no-update branch is a real ``lax.cond``).
          num_steps: static.
          learn: static; False runs the behaviour policy and the buffer only.

        Returns:
          ``(state, info)`` with per-step ``info`` leaves ``[num_steps]``.
        """
        ts = first_step + jnp.arange(num_steps, dtype=jnp.int32)
        return jax.lax.scan(lambda s, t: self.env_step(s, t, learn), state, ts)

    def evaluate(self, actor_params, key: jax.Array, num_episodes: int) -> jax.Array:
        """Undiscounted returns ``[E]`` of the deterministic policy on ``E`` episodes.

        Each episode runs until its first ``terminated or truncated`` (at most the
        environment's time limit); the episodes are vmapped.
        """
        env = self.env
        obs, env_state = jax.vmap(env.reset)(jax.random.split(key, num_episodes))

        def body(carry, i):
            obs, env_state, total, alive = carry
            action = self.act(actor_params, obs)  # [E, A]
            keys = jax.random.split(jax.random.fold_in(key, i), num_episodes)
            step = jax.vmap(env.step)(keys, env_state, action)
            total = total + jnp.where(alive, step.reward, 0.0)
            alive = alive & ~step.done
            return (step.obs, step.state, total, alive), None

        init = (obs, env_state, jnp.zeros((num_episodes,), jnp.float32),
                jnp.ones((num_episodes,), bool))
        (_, _, total, _), _ = jax.lax.scan(body, init, jnp.arange(env.max_steps))
        return total

    def run_periods(self, state: DDPGState, first_period, num_periods: int):
        """``num_periods`` periods of ``eval_every`` steps, each followed by an evaluation.

        Args:
          state: one seed's state at step ``first_period * eval_every``.
          first_period: int scalar (unbatched under vmap).
          num_periods: static.

        Returns:
          ``(state, metrics)``, each metric ``[num_periods]``: ``eval_return``,
          ``train_return`` (mean over episodes finished in the period, NaN if none),
          ``episodes``, ``critic_loss``, ``actor_loss``, ``q_mean`` (NaN without
          updates), ``env_steps``.
        """
        cfg = self.config

        def period(state, p):
            state, info = self.run_steps(state, p * cfg.eval_every, cfg.eval_every)
            done = info["done"].astype(jnp.float32)
            updates = info["updates"]
            returns = self.evaluate(state.learner.actor, self.eval_key(state.key),
                                    cfg.eval_episodes)
            state = state.replace(eval_return=jnp.mean(returns))
            metrics = {
                "eval_return": state.eval_return,
                "train_return": _nan_mean(info["return"], done),
                "episodes": jnp.sum(done),
                "critic_loss": _nan_mean(info["critic_loss"], updates),
                "q_mean": _nan_mean(info["q_mean"], updates),
                "actor_loss": _nan_mean(info["actor_loss"], info["actor_updated"]),
                "env_steps": state.step.astype(jnp.float32),
            }
            return state, metrics

        periods = first_period + jnp.arange(num_periods, dtype=jnp.int32)
        return jax.lax.scan(period, state, periods)

    def train(self, key: jax.Array):
        """The whole run of one seed: ``(final state, metrics [num_periods])``."""
        return self.run_periods(self.init(key), jnp.zeros((), jnp.int32),
                                self.config.num_periods)


def make_agent(config: DDPGConfig, env: ContinuousEnv | None = None) -> DDPGAgent:
    """The agent's pure functions for ``config`` (validated here)."""
    return DDPGAgent(config, env)


def make_train(config: DDPGConfig, env: ContinuousEnv | None = None):
    """``train(key) -> (state, metrics)``: a whole run of one seed, pure and jittable.

    ``jax.jit(jax.vmap(make_train(cfg)))(keys)`` trains one agent per key.
    """
    return make_agent(config, env).train


def raise_on_error(state: DDPGState, seeds: Sequence[int] | None = None) -> None:
    """Raise ``FloatingPointError`` if any seed's sticky error flag is set.

    Args:
      state: one state or a batch of states (leading seed axis).
      seeds: labels of the batch entries for the message (default 0..S−1).
    """
    error = np.atleast_1d(to_host(state.error))
    where = np.atleast_1d(to_host(state.error_step))
    bad = np.nonzero(error)[0]
    if bad.size == 0:
        return
    labels = list(seeds) if seeds is not None else list(range(error.size))
    lines = []
    for i in bad:
        causes = [text for bit, text in ERROR_BITS.items() if error[i] & bit]
        lines.append(f"seed {labels[i]}: {'; '.join(causes)} (first at env step {where[i]})")
    raise FloatingPointError("DDPG training produced non-finite values:\n  " + "\n  ".join(lines))


@dataclasses.dataclass
class TrainResult:
    """What :func:`train_seeds` returns.

    Attributes:
      state: the final states, leading axis ``[S]``.
      history: ``(env_step, row)`` for every row logged in this call (``fit``'s
        history): per period ``eval_return_mean/std/min/max``, ``eval_return/seed{s}``
        and the seed means ``train_return_mean``, ``critic_loss_mean``,
        ``actor_loss_mean``, ``q_mean_mean``, ``episodes_mean`` (NaN where no seed had
        one in the period).
      final_eval_returns: ``[S]`` the last evaluation's mean return per seed.
      wall_seconds: time spent in this call (compilation included).
      start_step: env steps already done when this call started (> 0 on resume).
    """

    state: DDPGState
    history: list[tuple[int, dict]]
    final_eval_returns: np.ndarray
    wall_seconds: float
    start_step: int


def seed_keys(seeds: Sequence[int]) -> jax.Array:
    """Typed keys ``[S]``, one ``jax.random.key(seed)`` per seed."""
    return jnp.stack([jax.random.key(int(s)) for s in seeds])


def seed_rows(metrics: dict, seeds: Sequence[int]) -> dict:
    """Per-period rows from per-seed metrics ``[S, n]``: the seed statistics of the
    evaluation return, each seed's return, and the seed means of the training metrics
    (every output ``[n]``; NaN where no seed has a value)."""
    evals = metrics["eval_return"]  # [S, n]
    rows = {"eval_return_mean": jnp.mean(evals, 0), "eval_return_std": jnp.std(evals, 0),
            "eval_return_min": jnp.min(evals, 0), "eval_return_max": jnp.max(evals, 0)}
    rows.update({f"eval_return/seed{s}": evals[i] for i, s in enumerate(seeds)})
    for name in ("train_return", "critic_loss", "actor_loss", "q_mean", "episodes"):
        rows[f"{name}_mean"] = jnp.nanmean(metrics[name], axis=0)
    return rows


def make_chunk_fn(agent: DDPGAgent, seeds: Sequence[int]):
    """``chunk_fn(length)`` for ``common.train.fit``: ``length`` env steps (a multiple of
    ``eval_every``) of every seed of a batched state ``[S]``, one metric row per
    evaluation period (:func:`seed_rows`)."""
    every = agent.config.eval_every
    run = jax.vmap(agent.run_periods, in_axes=(0, None, None))

    def chunk_fn(length: int):
        def chunk(state: DDPGState, data):
            first_period = state.step.reshape(-1)[0] // every  # unbatched: a real lax.cond
            state, metrics = run(state, first_period, length // every)
            return state, seed_rows(metrics, seeds)

        return chunk

    return chunk_fn


def train_seeds(config: DDPGConfig, seeds: Sequence[int], *, mesh=None, checkpointer=None,
                periods_per_chunk: int | None = None, logger=None, progress: bool = False,
                env: ContinuousEnv | None = None, num_steps: int | None = None,
                desc: str | None = None) -> TrainResult:
    """Train one agent per seed, vmapped, through ``common.train.fit``.

    Args:
      config: the run's config.
      seeds: integer seeds; one independent run each.
      mesh: optional ``common.sharding.make_mesh()`` mesh; the seed axis is split
        along its ``data`` axis (``len(seeds)`` must divide evenly).
      checkpointer: optional ``common.checkpoint.Checkpointer``; the state is
        restored from its latest step (resume) and saved after every chunk.
      periods_per_chunk: evaluation periods per jitted call (default: all).
      logger: a ``common.metrics.MetricsWriter`` receiving one row per period.
      progress: show a progress bar (in environment steps).
      env: an explicit environment (default ``make_env(config.env)``).
      num_steps: stop at this many env steps per seed (a multiple of ``eval_every``;
        default ``config.total_steps``); a later call continues from the checkpoint.
      desc: the progress bar's label.

    Returns:
      A :class:`TrainResult`.

    Raises:
      FloatingPointError: when a seed produced a non-finite reward, observation or
        loss (checked after every chunk, before it is checkpointed).
    """
    from common.distributed import global_array
    from common.sharding import batch_sharding
    from common.train import fit, state_step

    t0 = time.perf_counter()
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must not be empty")
    agent = make_agent(config, env)
    every = config.eval_every
    chunk_len = int(periods_per_chunk or config.num_periods)
    if chunk_len < 1:
        raise ValueError(f"periods_per_chunk must be >= 1, got {periods_per_chunk}")
    num_steps = config.total_steps if num_steps is None else int(num_steps)
    if not 0 <= num_steps <= config.total_steps or num_steps % every:
        raise ValueError(f"num_steps must be a multiple of eval_every ({every}) in "
                         f"[0, total_steps={config.total_steps}], got {num_steps}")
    state = jax.jit(jax.vmap(agent.init))(seed_keys(seeds))
    # Committed placement throughout (restored checkpoints are committed too), so fresh
    # and resumed runs share one compilation of the chunk.
    # (with a mesh: each seed's state on the devices of its row of the data axis, also
    # when those belong to another process)
    state = (jax.device_put(state, jax.devices()[0]) if mesh is None
             else global_array(state, jax.tree.map(
                 lambda x: batch_sharding(mesh, max(np.ndim(x), 1)), state)))
    if checkpointer is not None:
        state = checkpointer.restore_or(state)
    start_step = state_step(state)
    history: list = []
    state = fit(state, chunk_fn=make_chunk_fn(agent, seeds), num_steps=num_steps,
                chunk_size=chunk_len * every, steps_per_row=every,
                on_chunk=lambda s, step: raise_on_error(s, seeds), logger=logger,
                checkpointer=checkpointer, checkpoint_every=chunk_len * every,
                progress=progress, desc=desc or f"{config.env}", history=history)
    return TrainResult(state=state, history=history,
                       final_eval_returns=to_host(state.eval_return),
                       wall_seconds=time.perf_counter() - t0, start_step=start_step)
