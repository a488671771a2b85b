"""rl.ddpg: the deterministic policy gradient, soft updates, TD targets with time
limits, TD3's options, exploration noise, seed sharding, resume, a short training run
against a random policy, and clear errors for bad input."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common.checkpoint import Checkpointer
from common.registry import UnknownNameError
from common.sharding import make_mesh
from rl import replay
from rl.ddpg import (
    NOISES,
    PRESETS,
    Actor,
    critic_loss,
    ddpg_config,
    make_agent,
    make_train,
    raise_on_error,
    scale_action,
    smoothed_target_action,
    soft_update,
    td3_config,
    train_seeds,
)
from rl.ddpg.losses import dpg_actor_loss
from rl.envs.gymnax_env import ContinuousEnv, make_env
from tests.tolerances import BITWISE, F32, F32_LOOSE, assert_close

# A tiny configuration: 2 periods of 50 steps, updates from step 32, 50-step episodes.
TINY = ddpg_config(total_steps=100, eval_every=50, learning_starts=32, batch_size=16,
                   buffer_size=256, actor_hidden=(16,), critic_hidden=(16,), eval_episodes=2)
SHORT_PENDULUM = make_env("Pendulum-v1", max_steps_in_episode=50)


def _tiny(preset):
    """TINY with the preset's algorithm switches (DDPG or TD3)."""
    algorithm = ("num_critics", "policy_delay", "target_noise", "target_noise_clip")
    return PRESETS.get(preset)(**{f.name: getattr(TINY, f.name) for f in dataclasses.fields(TINY)
                                 if f.name not in algorithm})


@functools.cache
def _agent(preset="ddpg"):
    """One agent per preset for the whole module, so jitted functions compile once."""
    return make_agent(_tiny(preset), SHORT_PENDULUM)


@functools.cache
def _jit(preset, method, static=()):
    return jax.jit(getattr(_agent(preset), method), static_argnums=static)


def _batch(agent, key, n=16):
    env = agent.env
    k = jax.random.split(key, 5)
    return {"obs": jax.random.normal(k[0], (n, env.obs_dim)),
            "action": jax.random.uniform(k[1], (n, env.action_dim), minval=-2, maxval=2),
            "reward": jax.random.normal(k[2], (n,)),
            "next_obs": jax.random.normal(k[3], (n, env.obs_dim)),
            "discount": (jax.random.uniform(k[4], (n,)) > 0.3).astype(jnp.float32)}


def _learner(preset="ddpg", seed=0):
    return _jit(preset, "init")(jax.random.key(seed)).learner


@pytest.fixture(scope="module")
def float32_learner():
    """Created before any function-scoped fixture (such as x64) switches dtypes."""
    return _learner()


# ----------------------------------------------------------------------------- gradients


def test_dpg_actor_gradient_is_the_chain_rule():
    agent, learner = _agent(), _learner()
    obs = jax.random.normal(jax.random.key(1), (32, 3))
    got = jax.jit(jax.grad(agent.actor_loss_fn))(learner.actor, learner.critic, obs)
    # ∇θ J = −(1/B) Σ_b ∇_a Q(s_b, a)|_{a = μ(s_b)} · ∂μ(s_b)/∂θ, assembled by hand
    first = jax.tree.map(lambda x: x[0], learner.critic)
    actions = agent.act(learner.actor, obs)                                     # [B, A]
    dq_da = jax.jit(jax.vmap(jax.grad(lambda a, s: agent.q_value(first, s, a))))(actions, obs)

    @jax.jit
    def chain(params, cotangent):
        return jax.vjp(lambda p: agent.act(p, obs), params)[1](cotangent)[0]

    want = chain(learner.actor, -dq_da / obs.shape[0])
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert_close(g, w, F32)


def test_dpg_actor_gradient_matches_finite_differences(float32_learner, x64):
    agent = _agent()
    learner = jax.tree.map(lambda x: x.astype(jnp.float64), float32_learner)
    obs = jax.random.normal(jax.random.key(2), (8, 3), jnp.float64)
    loss = jax.jit(lambda p: agent.actor_loss_fn(p, learner.critic, obs))
    grad = jax.jit(jax.grad(loss))(learner.actor)
    direction = jax.tree.map(lambda x: jax.random.normal(jax.random.key(3), x.shape, x.dtype),
                             learner.actor)
    eps = 1e-6
    shifted = lambda s: jax.tree.map(lambda p, d: p + s * eps * d, learner.actor, direction)
    numeric = (loss(shifted(1.0)) - loss(shifted(-1.0))) / (2 * eps)
    analytic = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grad),
                                                 jax.tree.leaves(direction), strict=True))
    assert_close(analytic, numeric, dict(rtol=1e-6, atol=1e-9))


def test_dqda_clipping_gradient_is_the_clipped_chain_rule():
    """rlax's dpg_loss option: each ∂Q/∂a is clipped to [−c, c] before it reaches μ."""
    agent, learner = _agent(), _learner()
    clip = 0.05
    clipped = make_agent(dataclasses.replace(_tiny("ddpg"), dqda_clipping=clip), SHORT_PENDULUM)
    obs = jax.random.normal(jax.random.key(1), (32, 3))
    got = jax.jit(jax.grad(clipped.actor_loss_fn))(learner.actor, learner.critic, obs)
    first = jax.tree.map(lambda x: x[0], learner.critic)
    actions = agent.act(learner.actor, obs)
    dq_da = jax.vmap(jax.grad(lambda a, s: agent.q_value(first, s, a)))(actions, obs)
    assert float(jnp.max(jnp.abs(dq_da))) > clip  # the clip binds
    cotangent = -jnp.clip(dq_da, -clip, clip) / obs.shape[0]
    want = jax.vjp(lambda p: agent.act(p, obs), learner.actor)[1](cotangent)[0]
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert_close(g, w, F32)
    # the value is still −mean Q, and a large clip is the unclipped gradient
    assert_close(clipped.actor_loss_fn(learner.actor, learner.critic, obs),
                 agent.actor_loss_fn(learner.actor, learner.critic, obs), F32)
    wide = make_agent(dataclasses.replace(_tiny("ddpg"), dqda_clipping=1e6), SHORT_PENDULUM)
    plain = jax.grad(agent.actor_loss_fn)(learner.actor, learner.critic, obs)
    for g, w in zip(jax.tree.leaves(jax.grad(wide.actor_loss_fn)(learner.actor, learner.critic,
                                                                   obs)),
                    jax.tree.leaves(plain), strict=True):
        assert_close(g, w, F32)


def test_dpg_actor_loss_without_clipping_is_the_plain_loss_bitwise():
    q = jax.random.normal(jax.random.key(0), (16,))
    action = jax.random.normal(jax.random.key(1), (16, 2))
    assert_close(dpg_actor_loss(q), -jnp.mean(q), BITWISE)
    assert_close(dpg_actor_loss(q, action, action, dqda_clipping=None), dpg_actor_loss(q),
                 BITWISE)
    assert TINY.dqda_clipping is None
    # rlax's surrogate: ∂/∂a = −clip(dqda) / B, and no gradient through q or dqda
    dqda = jnp.linspace(-2.0, 2.0, 32).reshape(16, 2)
    grads = jax.grad(lambda q, a, d: dpg_actor_loss(q, a, d, dqda_clipping=0.5),
                     argnums=(0, 1, 2))(q, action, dqda)
    assert_close(grads[1], -jnp.clip(dqda, -0.5, 0.5) / 16, F32)
    assert not np.any(np.asarray(grads[0])) and not np.any(np.asarray(grads[2]))
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="dqda_clipping must be None or a finite number"):
            dataclasses.replace(TINY, dqda_clipping=bad).validate()
    with pytest.raises(ValueError, match=r"dqda must have action's shape \[B, A\]"):
        dpg_actor_loss(q, action, dqda[:, :1], dqda_clipping=1.0)


# ----------------------------------------------------------------------------- soft updates


@pytest.mark.parametrize("tau", [0.0, -0.1, 1.5, float("nan")])
def test_tau_outside_unit_interval_is_refused(tau):
    with pytest.raises(ValueError, match=r"tau must be in \(0, 1\]"):
        soft_update({"w": jnp.zeros(2)}, {"w": jnp.ones(2)}, tau)
    with pytest.raises(ValueError, match=r"tau must be in \(0, 1\]"):
        ddpg_config(tau=tau).validate()


# ----------------------------------------------------------------------------- TD targets


@pytest.mark.parametrize("preset", PRESETS.names())
def test_critic_loss_bootstraps_truncated_not_terminated(preset):
    cfg = dataclasses.replace(_tiny(preset), target_noise=0.0)
    agent = make_agent(cfg, SHORT_PENDULUM)
    learner = _learner(preset)
    batch = _batch(agent, jax.random.key(5), n=2)
    batch["discount"] = jnp.array([1.0, 0.0])   # a truncated and a terminated transition
    loss, _ = jax.jit(agent.critic_loss_fn)(learner.critic, learner, batch, jax.random.key(0))
    # reference: min over the target critics at the target action, in numpy
    next_a = np.clip(np.asarray(agent.act(learner.target_actor, batch["next_obs"])), -2, 2)
    next_q = np.min(np.asarray(agent.q_values(learner.target_critic, batch["next_obs"],
                                              jnp.asarray(next_a))), axis=0)
    y = np.asarray(batch["reward"]) + agent.config.gamma * np.array([1.0, 0.0]) * next_q
    q = np.asarray(agent.q_values(learner.critic, batch["obs"], batch["action"]))   # [C, 2]
    assert q.shape[0] == cfg.num_critics
    assert_close(loss, np.sum(np.mean((q - y[None]) ** 2, axis=1)), F32)


def test_stored_transitions_keep_the_final_observation_at_time_limits():
    state = _jit("ddpg", "init")(jax.random.key(0))
    assert state.buffer.capacity >= 120
    state, info = _jit("ddpg", "run_steps", (2, 3))(state, jnp.int32(0), 120, False)
    stored = jax.tree.map(lambda x: np.asarray(x[:120]), state.buffer.storage)
    ends = np.asarray(info["done"]).nonzero()[0]
    np.testing.assert_array_equal(ends, [49, 99])        # 50-step episodes, truncated
    np.testing.assert_array_equal(stored["discount"], np.ones(120))
    within = np.setdiff1d(np.arange(119), ends)
    assert_close(stored["next_obs"][within], stored["obs"][within + 1], BITWISE)
    for t in ends:   # the successor stored is the final observation, not the reset one
        assert np.abs(stored["next_obs"][t] - stored["obs"][t + 1]).max() > 1e-3
    returns = np.asarray(info["return"])[ends]
    assert_close(returns[0], stored["reward"][:50].sum(), F32_LOOSE)
    assert_close(returns[1], stored["reward"][50:100].sum(), F32_LOOSE)


def test_critic_loss_sums_squared_errors_over_critics():
    q = np.array([[1.0, 2.0, 3.0], [0.0, 2.0, 5.0]])
    y = np.array([1.5, 2.0, 2.0])
    assert_close(critic_loss(jnp.asarray(q), jnp.asarray(y)),
                 np.mean((q[0] - y) ** 2) + np.mean((q[1] - y) ** 2))
    with pytest.raises(ValueError, match=r"q must have shape \[C, B\]"):
        critic_loss(jnp.zeros(3), jnp.zeros(3))


# ----------------------------------------------------------------------------- actions


def test_target_actions_are_clipped_to_the_real_bounds():
    action = jnp.array([[1.9], [-1.9], [0.0], [1.2]])
    out = np.asarray(smoothed_target_action(action, jax.random.key(0), 50.0, 0.5, [-2.0], [2.0]))
    assert np.all(out <= 2.0) and np.all(out >= -2.0)
    assert np.abs(out).max() > 1.5                      # the bounds are ±2, not ±1
    # the noise is clipped at c · half_range = 0.5 · 2 = 1
    assert np.all(np.abs(out - np.asarray(action)) <= 1.0 + 1e-6)
    exact = smoothed_target_action(action, jax.random.key(0), 0.0, 0.5, [-2.0], [2.0])
    assert_close(exact, np.clip(np.asarray(action), -2, 2), BITWISE)


def test_actor_is_tanh_scaled_to_the_bounds():
    from flax import nnx

    low, high = (0.0, -1.0), (1.0, 3.0)
    assert_close(scale_action(jnp.array([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]]), low, high),
                 [[0.0, -1.0], [1.0, 3.0], [0.5, 1.0]])
    actor = Actor(3, 2, low=low, high=high, hidden=(8,), rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(actor, nnx.Param, ...)
    big = jax.tree.map(lambda p: 1e4 * p, params)          # saturate the tanh
    out = np.asarray(nnx.merge(graphdef, big, rest)(jax.random.normal(jax.random.key(1),
                                                                    (256, 3))))
    assert np.all(out >= np.array(low)) and np.all(out <= np.array(high))
    assert np.isclose(out[:, 1].min(), -1.0, atol=1e-3) and np.isclose(out[:, 1].max(), 3.0,
                                                                        atol=1e-3)
    with pytest.raises(ValueError, match=r"obs must have shape \[\.\.\., 3\], got \(5, 4\)"):
        actor(jnp.zeros((5, 4)))


def test_observation_and_action_shapes_must_match_the_environment():
    agent, learner = _agent(), _learner()
    with pytest.raises(ValueError, match=r"obs must have shape \[\.\.\., 3\]"):
        agent.act(learner.actor, jnp.zeros((4, 2)))
    first = jax.tree.map(lambda x: x[0], learner.critic)
    with pytest.raises(ValueError, match=r"action must have shape \[\.\.\., 1\]"):
        agent.q_value(first, jnp.zeros((4, 3)), jnp.zeros((4, 2)))
    bad = {**_batch(agent, jax.random.key(0), 1), "action": jnp.zeros((1, 2))}
    transition = jax.tree.map(lambda x: x[0], bad)
    with pytest.raises(ValueError, match=r"transition leaf \['action'\] must have shape \[1\]"):
        replay.add(_jit("ddpg", "init")(jax.random.key(0)).buffer, transition)


# ----------------------------------------------------------------------------- noise


def test_gaussian_noise_std():
    proc = NOISES.get("gaussian")(std=0.3)
    draws = jax.vmap(lambda k: proc.sample(proc.init(2), k, jnp.array(False))[0])(
        jax.random.split(jax.random.key(0), 20_000))
    assert abs(float(jnp.std(draws)) - 0.3) < 0.01 and abs(float(jnp.mean(draws))) < 0.01


def test_ou_noise_variance_autocorrelation_and_reset():
    sigma, theta, dt, steps = 0.5, 0.15, 0.05, 400
    proc = NOISES.get("ou")(std=sigma, theta=theta, dt=dt)

    def chain(key):
        def body(x, k):
            n, x = proc.sample(x, k, jnp.array(False))
            return x, n
        return jax.lax.scan(body, proc.init(1), jax.random.split(key, steps))[1][:, 0]

    paths = np.asarray(jax.jit(jax.vmap(chain))(jax.random.split(jax.random.key(0), 4000)))
    rho = 1 - theta * dt
    t = np.arange(1, steps + 1)
    var = sigma**2 * dt * (1 - rho ** (2 * t)) / (1 - rho**2)   # Var x_t from x_0 = 0
    assert_close(paths.var(axis=0)[[9, 99, 399]], var[[9, 99, 399]], dict(rtol=0.08, atol=0))
    lag1 = np.mean(paths[:, 300:-1] * paths[:, 301:]) / np.mean(paths[:, 300:-1] ** 2)
    assert abs(lag1 - rho) < 0.01
    # reset restarts from 0: from x = 5 with reset equals from x = 0 without
    key = jax.random.key(7)
    assert_close(proc.sample(jnp.array([5.0]), key, jnp.array(True))[0],
                 proc.sample(jnp.array([0.0]), key, jnp.array(False))[0], BITWISE)
    with pytest.raises(ValueError, match="theta > 0"):
        NOISES.get("ou")(std=0.1, theta=0.0)
    with pytest.raises(ValueError, match="std must be >= 0"):
        NOISES.get("gaussian")(std=-1.0)


# ----------------------------------------------------------------------------- TD3


def test_td3_preset_is_the_papers_configuration():
    agent = _agent("td3")
    assert agent.config == td3_config(**{k: getattr(agent.config, k) for k in (
        "total_steps", "eval_every", "learning_starts", "batch_size", "buffer_size",
        "actor_hidden", "critic_hidden", "eval_episodes")})
    assert (agent.config.policy_delay, agent.config.num_critics) == (2, 2)
    assert (agent.config.target_noise, agent.config.target_noise_clip) == (0.2, 0.5)


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b),
                                                    strict=True))


# The behavioural suite every registered preset runs (registering one is how it is tested).


@pytest.mark.parametrize("name", PRESETS.names())
def test_preset_delays_actor_and_target_updates(name):
    """Update ``i`` steps the critics; the actor and both targets move (softly, by τ)
    exactly when ``i % policy_delay == 0``."""
    agent, learner = _agent(name), _learner(name)
    delay, tau = agent.config.policy_delay, agent.config.tau
    update = _jit(name, "update")
    batch = _batch(agent, jax.random.key(1))
    for i in range(2 * delay):
        new, metrics = update(learner, batch, jax.random.key(2), i)
        stepped = i % delay == 0
        assert not _same(new.critic, learner.critic)
        assert float(metrics["actor_updated"]) == float(stepped)
        assert _same(new.actor, learner.actor) != stepped
        if not stepped:
            assert _same(new.target_actor, learner.target_actor)
            assert _same(new.target_critic, learner.target_critic)
            continue
        for target, online, old in ((new.target_actor, new.actor, learner.target_actor),
                                    (new.target_critic, new.critic, learner.target_critic)):
            for t, o, before in zip(jax.tree.leaves(target), jax.tree.leaves(online),
                                    jax.tree.leaves(old), strict=True):
                assert_close(t, tau * o + (1 - tau) * before, F32)


@pytest.mark.parametrize("name", PRESETS.names())
def test_preset_target_smoothing_follows_its_noise(name):
    """The critic's target uses μ'(s') + clip(ε, ±c)·half_range with ε ~ N(0, σ²): the
    target moves with the key iff σ > 0, never by more than c·half_range."""
    agent, learner = _agent(name), _learner(name)
    cfg = agent.config
    batch = _batch(agent, jax.random.key(4), n=64)
    loss = jax.jit(agent.critic_loss_fn)
    values = {float(loss(learner.critic, learner, batch, jax.random.key(k))[0]) for k in range(3)}
    assert (len(values) > 1) == (cfg.target_noise > 0)
    base = agent.act(learner.target_actor, batch["next_obs"])
    smoothed = jax.vmap(lambda k: smoothed_target_action(
        base, k, cfg.target_noise, cfg.target_noise_clip, agent.low, agent.high))(
        jax.random.split(jax.random.key(5), 32))
    shift = np.abs(np.asarray(smoothed - base[None]))
    assert shift.max() <= cfg.target_noise_clip * float(agent.half_range.max()) + 1e-6
    assert (shift.max() > 0) == (cfg.target_noise > 0)


@pytest.mark.parametrize("name", PRESETS.names())
def test_every_registered_preset_takes_finite_updates(name):
    agent, learner = _agent(name), _learner(name)
    assert jax.tree.leaves(learner.critic)[0].shape[0] == agent.config.num_critics
    update = _jit(name, "update")
    for i in range(4):
        learner, metrics = update(learner, _batch(agent, jax.random.key(i)),
                                  jax.random.key(i), i)
        assert all(np.isfinite(float(v)) for v in metrics.values())
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(learner))


# ----------------------------------------------------------------------------- whole runs


@pytest.mark.slow  # heavy: runs under pytest -m slow
def test_seed_sharded_run_equals_unsharded_and_resume_equals_uninterrupted(tmp_path):
    seeds = list(range(8))
    full = train_seeds(TINY, seeds, periods_per_chunk=1, env=SHORT_PENDULUM)
    assert full.final_eval_returns.shape == (8,)
    rows = [(step, row) for step, row in full.history if "eval_return_mean" in row]
    assert [step for step, _ in rows] == [50, 100]
    assert np.isfinite(rows[-1][1]["critic_loss_mean"])
    assert_close(rows[-1][1]["eval_return/seed3"], full.final_eval_returns[3], BITWISE)
    assert_close(rows[-1][1]["eval_return_mean"], np.mean(full.final_eval_returns), F32)

    sharded = train_seeds(TINY, seeds, periods_per_chunk=1, env=SHORT_PENDULUM,
                          mesh=make_mesh())
    assert len(sharded.state.obs.sharding.device_set) == 8
    for a, b in zip(jax.tree.leaves(sharded.state), jax.tree.leaves(full.state), strict=True):
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        assert_close(a, b, F32)
    assert_close(sharded.final_eval_returns, full.final_eval_returns, F32)

    with Checkpointer(tmp_path / "ckpt") as ckpt:
        first = train_seeds(TINY, seeds, periods_per_chunk=1, env=SHORT_PENDULUM,
                            checkpointer=ckpt, num_steps=50)
        assert [step for step, row in first.history if "eval_return_mean" in row] == [50]
    with Checkpointer(tmp_path / "ckpt") as ckpt:
        resumed = train_seeds(TINY, seeds, periods_per_chunk=1, env=SHORT_PENDULUM,
                              checkpointer=ckpt)
        assert resumed.start_step == 50 and ckpt.latest_step() == 100
    for a, b in zip(jax.tree.leaves(resumed.state), jax.tree.leaves(full.state), strict=True):
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        assert_close(a, b, BITWISE)
    assert_close(resumed.final_eval_returns, full.final_eval_returns, BITWISE)


def test_train_seeds_stops_on_non_finite_values_before_saving(tmp_path):
    with Checkpointer(tmp_path / "ckpt") as ckpt:
        with pytest.raises(FloatingPointError, match=r"seed 4: non-finite reward"):
            train_seeds(TINY, [3, 4], periods_per_chunk=1,
                        env=ContinuousEnv.from_gymnax(_NaNReward()), checkpointer=ckpt)
        assert ckpt.latest_step() is None


def _random_policy_return(env, episodes=16):
    def episode(key):
        def body(carry, k):
            state, total = carry
            k_a, k_s = jax.random.split(k)
            step = env.step(k_s, state, env.random_action(k_a))
            return (step.state, total + step.reward), None
        _, state = env.reset(key)
        keys = jax.random.split(jax.random.fold_in(key, 1), env.max_steps)
        return jax.lax.scan(body, (state, jnp.zeros(())), keys)[0][1]

    return float(jnp.mean(jax.jit(jax.vmap(episode))(jax.random.split(jax.random.key(9),
                                                                      episodes))))


@pytest.mark.slow  # learning itself is shown by the ddpg-pendulum recipe
def test_short_training_run_beats_a_random_policy():
    env = make_env("Pendulum-v1")
    cfg = ddpg_config(total_steps=5_000, eval_every=2_500, learning_starts=500,
                      buffer_size=5_000, eval_episodes=5)
    train = jax.jit(jax.vmap(make_train(cfg, env)))
    state, metrics = train(jax.random.split(jax.random.key(0), 2))
    raise_on_error(state)
    assert metrics["eval_return"].shape == (2, 2)
    random_return = _random_policy_return(env)
    assert -1500 < random_return < -1000
    trained = float(jnp.mean(metrics["eval_return"][:, -1]))
    assert trained > random_return + 500, (trained, random_return)


# ----------------------------------------------------------------------------- bad input


class _NaNReward:
    """Pendulum whose reward turns NaN from its 10th step of an episode on."""

    def __init__(self):
        import gymnax

        self.inner, self.default_params = gymnax.make("Pendulum-v1")
        self.name = "nan-pendulum"

    def action_space(self, params):
        return self.inner.action_space(params)

    def reset(self, key, params):
        return self.inner.reset(key, params)

    def step(self, key, state, action, params):
        obs, new_state, r, te, tr, info = self.inner.step(key, state, action, params)
        return obs, new_state, jnp.where(state.time >= 10, jnp.nan, r), te, tr, info


def test_non_finite_rewards_raise_with_the_step():
    agent = make_agent(TINY, ContinuousEnv.from_gymnax(_NaNReward()))
    state = jax.jit(jax.vmap(agent.init))(jax.random.split(jax.random.key(0), 2))
    run = jax.jit(jax.vmap(agent.run_steps, in_axes=(0, None, None, None)),
                  static_argnums=(2, 3))
    state, _ = run(state, jnp.int32(0), 20, False)
    np.testing.assert_array_equal(np.asarray(state.error_step), [10, 10])
    with pytest.raises(FloatingPointError, match=r"seed 7: non-finite reward from the "
                                                 r"environment \(first at env step 10\)"):
        raise_on_error(state, seeds=[6, 7])


def test_updates_from_an_underfilled_buffer_raise_not_nan():
    state = _jit("ddpg", "init")(jax.random.key(0))
    # start at the first learning step with an empty buffer: the jitted sample poisons
    state, _ = _jit("ddpg", "run_steps", (2,))(state, jnp.int32(32), 1)
    assert int(state.error) & 4 and int(state.error_step) == 32
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        raise_on_error(state)


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match=r"learning_starts \(8\) must be >= batch_size \(16\)"):
        dataclasses.replace(TINY, learning_starts=8).validate()
    with pytest.raises(ValueError, match="multiple of eval_every"):
        dataclasses.replace(TINY, total_steps=120).validate()
    with pytest.raises(ValueError, match=r"buffer_size \(8\) must be >= batch_size"):
        dataclasses.replace(TINY, buffer_size=8).validate()
    with pytest.raises(ValueError, match=r"gamma must be in \[0, 1\]"):
        dataclasses.replace(TINY, gamma=1.2).validate()
    with pytest.raises(UnknownNameError, match="unknown exploration noise 'pink'"):
        dataclasses.replace(TINY, exploration="pink").validate()
    with pytest.raises(ValueError, match="seeds must not be empty"):
        train_seeds(TINY, [], env=SHORT_PENDULUM)
    with pytest.raises(ValueError, match="num_steps must be a multiple of eval_every"):
        train_seeds(TINY, [0], env=SHORT_PENDULUM, num_steps=70)
