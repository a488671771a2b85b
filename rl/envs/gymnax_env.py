"""Continuous-control environments through the gymnax API, with time limits made explicit.

Any object with gymnax's functional interface works:

    obs, state = env.reset(key, params)
    obs, state, reward, terminated, truncated, info = env.step(key, state, action, params)

(gymnax 1.0, e.g. ``Pendulum-v1`` and ``MountainCarContinuous-v0``, or a brax
environment behind a wrapper exposing the same two calls). gymnax resets
automatically when ``terminated or truncated``: the returned ``obs`` then belongs to
the *next* episode and the last observation of the finished one is
``info["final_observation"]``. :class:`ContinuousEnv` implements the environment
protocol of :mod:`rl.envs.protocol`: its ``step`` returns a :class:`Step` whose
``next_obs`` is always the true successor observation, so a learner bootstraps
correctly:

* terminated (a real terminal state): target ``r`` — no bootstrap,
  ``discount = 0``;
* truncated only (time limit, e.g. Pendulum's 200 steps): target
  ``r + γ Q(s', μ(s'))`` with ``s'`` the final observation, ``discount = 1``.

Shapes: observations ``[O]``, actions ``[A]`` (checked at trace time, the message
names the argument). Action bounds ``low, high [A]`` come from the action space.

Example:
    >>> env = make_env("Pendulum-v1")
    >>> obs, state = env.reset(jax.random.key(0))              # obs [3]
    >>> step = env.step(jax.random.key(1), state, jnp.array([0.5]))
    >>> step.reward, step.discount                              # scalars

Reference: F. Pardo et al., "Time Limits in Reinforcement Learning", ICML 2018
(bootstrapping at time-outs); R. T. Lange, gymnax (2022).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rl.envs.protocol import Step

__all__ = ["ContinuousEnv", "Step", "make_env"]


@dataclasses.dataclass(frozen=True, eq=False)
class ContinuousEnv:
    """A gymnax-style continuous-control environment with its parameters and spec.

    Attributes:
      env: the gymnax environment (anything with ``reset``/``step`` as above).
      params: its environment parameters.
      name: a display name.
      obs_dim: ``O``.
      action_dim: ``A``.
      action_low, action_high: ``[A]`` float32 numpy arrays, the action bounds.
      max_steps: the episode time limit.
    """

    env: Any
    params: Any
    name: str
    obs_dim: int
    action_dim: int
    action_low: np.ndarray
    action_high: np.ndarray
    max_steps: int

    @classmethod
    def from_gymnax(cls, env, params=None, name: str | None = None) -> ContinuousEnv:
        """Wrap a gymnax environment whose action space is a bounded ``Box``.

        Raises:
          ValueError: for a non-Box action space, infinite bounds, or ``low >= high``.
        """
        params = env.default_params if params is None else params
        space = env.action_space(params)
        if not (hasattr(space, "low") and hasattr(space, "high") and hasattr(space, "shape")):
            raise ValueError(f"{name or env.name}: needs a continuous (Box) action space, got "
                             f"{type(space).__name__}")
        shape = tuple(space.shape)
        if len(shape) != 1:
            raise ValueError(f"{name or env.name}: action space must have shape [A], got {shape}")
        low = np.broadcast_to(np.asarray(space.low, np.float32), shape).copy()
        high = np.broadcast_to(np.asarray(space.high, np.float32), shape).copy()
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(low < high)):
            raise ValueError(f"{name or env.name}: action bounds must be finite with low < high, "
                             f"got low={low}, high={high}")
        obs, _ = jax.eval_shape(env.reset, jax.random.key(0), params)
        if len(obs.shape) != 1:
            raise ValueError(f"{name or env.name}: observations must be vectors [O], got "
                             f"shape {obs.shape}")
        return cls(env=env, params=params, name=name or env.name, obs_dim=int(obs.shape[0]),
                   action_dim=int(shape[0]), action_low=low, action_high=high,
                   max_steps=int(params.max_steps_in_episode))

    def _check_action(self, action) -> jax.Array:
        action = jnp.asarray(action)
        if action.shape != (self.action_dim,):
            raise ValueError(f"{self.name}: action must have shape [{self.action_dim}], got "
                             f"{action.shape}")
        if not jnp.issubdtype(action.dtype, jnp.floating):
            raise ValueError(f"{self.name}: action must be floating point, got {action.dtype}")
        return action

    def _check_obs(self, obs, where: str) -> jax.Array:
        if jnp.shape(obs) != (self.obs_dim,):
            raise ValueError(f"{self.name}: {where} returned an observation of shape "
                             f"{jnp.shape(obs)}, expected [{self.obs_dim}]")
        return jnp.asarray(obs, jnp.float32)

    def reset(self, key: jax.Array) -> tuple[jax.Array, Any]:
        """``(obs [O] float32, state)`` at the start of an episode."""
        obs, state = self.env.reset(key, self.params)
        return self._check_obs(obs, "reset"), _strongly_typed(state)

    def step(self, key: jax.Array, state: Any, action: jax.Array) -> Step:
        """One transition with gymnax's auto-reset, time limits resolved (see module doc).

        Args:
          key: PRNG key of this step (the reset, if any, draws from it).
          state: the current environment state.
          action: ``[A]`` floating point.

        Returns:
          A :class:`Step`; ``next_obs`` is the pre-reset observation.
        """
        action = self._check_action(action)
        obs, state, reward, terminated, truncated, info = self.env.step(
            key, state, action, self.params)
        obs = self._check_obs(obs, "step")
        next_obs = self._check_obs(info["final_observation"], "step (final_observation)")
        reward = jnp.asarray(reward, jnp.float32)
        if reward.shape != ():
            raise ValueError(f"{self.name}: step returned a reward of shape {reward.shape}, "
                             "expected a scalar")
        terminated = jnp.asarray(terminated, bool)
        truncated = jnp.asarray(truncated, bool)
        discount = 1.0 - terminated.astype(jnp.float32)
        return Step(obs=obs, state=_strongly_typed(state), reward=reward, terminated=terminated,
                    truncated=truncated, next_obs=next_obs, discount=discount)

    def random_action(self, key: jax.Array) -> jax.Array:
        """``[A]`` uniform in ``[low, high]``."""
        return jax.random.uniform(key, (self.action_dim,), jnp.float32,
                                  self.action_low, self.action_high)


def _strongly_typed(tree):
    """Every leaf as an array of a fixed (not weak) dtype.

    gymnax resets build some state fields from Python scalars (weakly typed), while
    steps return strongly typed ones; without this the same state would present two
    signatures to ``jax.jit`` (and to checkpoint restores) and compile twice.
    """
    def fix(x):
        if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            return x
        x = jnp.asarray(x)
        return jax.lax.convert_element_type(x, x.dtype)

    return jax.tree.map(fix, tree)


def make_env(name: str, **param_overrides) -> ContinuousEnv:
    """A gymnax continuous-control environment by id, e.g. ``"Pendulum-v1"``.

    Args:
      name: a gymnax environment id with a Box action space
        (``Pendulum-v1``, ``MountainCarContinuous-v0``, ...).
      **param_overrides: fields of the environment's ``EnvParams`` to change
        (``max_steps_in_episode=100``).

    Returns:
      A :class:`ContinuousEnv`.
    """
    import gymnax

    try:
        env, params = gymnax.make(name)
    except (KeyError, ValueError) as err:
        raise ValueError(f"unknown gymnax environment {name!r}: {err}") from None
    if param_overrides:
        fields = {f.name for f in dataclasses.fields(params)}
        unknown = sorted(set(param_overrides) - fields)
        if unknown:
            raise ValueError(f"{name}: unknown environment parameters {unknown}; valid: "
                             f"{sorted(fields)}")
        params = params.replace(**param_overrides)
    return ContinuousEnv.from_gymnax(env, params, name)
