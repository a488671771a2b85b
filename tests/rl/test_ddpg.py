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
    AGENTS,
    NOISES,
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
    td_target,
    train_seeds,
)
from rl.envs.gymnax_env import ContinuousEnv, make_env
from tests.tolerances import BITWISE, F32, F32_LOOSE, F64, assert_close

# A tiny configuration: 2 periods of 50 steps, updates from step 32, 50-step episodes.
TINY = ddpg_config(total_steps=100, eval_every=50, learning_starts=32, batch_size=16,
                   buffer_size=256, actor_hidden=(16,), critic_hidden=(16,), eval_episodes=2)
SHORT_PENDULUM = make_env("Pendulum-v1", max_steps_in_episode=50)


def _tiny(preset):
    """TINY with the preset's algorithm switches (DDPG or TD3)."""
    algorithm = ("num_critics", "policy_delay", "target_noise", "target_noise_clip")
    return AGENTS.get(preset)(**{f.name: getattr(TINY, f.name) for f in dataclasses.fields(TINY)
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


# ----------------------------------------------------------------------------- soft updates


def test_soft_updates_converge_geometrically(x64):
    tau = 0.05
    online = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.array([0.25])}
    target0 = {"w": jnp.array([[-1.0, 4.0], [2.0, 0.0]]), "b": jnp.array([-3.0])}
    update = jax.jit(soft_update, static_argnums=2)
    target = target0
    for n in range(1, 61):
        target = update(target, online, tau)
        for key in online:  # θ'_n − θ = (1 − τ)^n (θ'_0 − θ)
            assert_close(target[key] - online[key], (1 - tau) ** n * (target0[key] - online[key]),
                         F64)
    assert_close(update(target0, online, 1.0)["w"], online["w"], BITWISE)


@pytest.mark.parametrize("tau", [0.0, -0.1, 1.5, float("nan")])
def test_tau_outside_unit_interval_is_refused(tau):
    with pytest.raises(ValueError, match=r"tau must be in \(0, 1\]"):
        soft_update({"w": jnp.zeros(2)}, {"w": jnp.ones(2)}, tau)
    with pytest.raises(ValueError, match=r"tau must be in \(0, 1\]"):
        ddpg_config(tau=tau).validate()


# ----------------------------------------------------------------------------- TD targets


def test_td_target_against_numpy():
    r, d, q = np.array([1.0, -2.0, 0.5]), np.array([1.0, 0.0, 1.0]), np.array([3.0, 7.0, -1.0])
    assert_close(td_target(jnp.asarray(r), jnp.asarray(d), jnp.asarray(q), 0.9), r + 0.9 * d * q)
    with pytest.raises(ValueError, match=r"reward must have shape \[B\]"):
        td_target(jnp.zeros((2, 1)), jnp.zeros(2), jnp.zeros(2), 0.9)
    with pytest.raises(ValueError, match=r"gamma must be in \[0, 1\]"):
        td_target(jnp.zeros(2), jnp.zeros(2), jnp.zeros(2), 1.5)


@pytest.mark.parametrize("preset", ["ddpg", "td3"])
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


def test_td3_delays_actor_and_target_updates():
    agent, learner = _agent("td3"), _learner("td3")
    assert agent.config == td3_config(**{k: getattr(agent.config, k) for k in (
        "total_steps", "eval_every", "learning_starts", "batch_size", "buffer_size",
        "actor_hidden", "critic_hidden", "eval_episodes")})
    assert agent.config.policy_delay == 2 and agent.config.num_critics == 2
    batch = _batch(agent, jax.random.key(1))
    update = _jit("td3", "update")
    skipped, m1 = update(learner, batch, jax.random.key(2), 1)     # odd: critic only
    stepped, m0 = update(learner, batch, jax.random.key(2), 0)     # even: all of it
    same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a),
                                                                 jax.tree.leaves(b), strict=True))
    assert not same(skipped.critic, learner.critic)
    assert same(skipped.actor, learner.actor) and same(skipped.target_actor, learner.target_actor)
    assert same(skipped.target_critic, learner.target_critic)
    assert float(m1["actor_updated"]) == 0.0 and float(m0["actor_updated"]) == 1.0
    assert not same(stepped.actor, learner.actor)
    tau = agent.config.tau
    for new_t, old_t, new in zip(jax.tree.leaves(stepped.target_actor),
                                 jax.tree.leaves(learner.target_actor),
                                 jax.tree.leaves(stepped.actor), strict=True):
        assert_close(new_t, tau * new + (1 - tau) * old_t, F32)
    for new_t, old_t, new in zip(jax.tree.leaves(stepped.target_critic),
                                 jax.tree.leaves(learner.target_critic),
                                 jax.tree.leaves(stepped.critic), strict=True):
        assert_close(new_t, tau * new + (1 - tau) * old_t, F32)


@pytest.mark.parametrize("name", AGENTS.names())
def test_every_registered_agent_takes_finite_updates(name):
    agent, learner = _agent(name), _learner(name)
    assert jax.tree.leaves(learner.critic)[0].shape[0] == agent.config.num_critics
    update = _jit(name, "update")
    for i in range(4):
        learner, metrics = update(learner, _batch(agent, jax.random.key(i)),
                                  jax.random.key(i), i)
        assert all(np.isfinite(float(v)) for v in metrics.values())
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(learner))


# ----------------------------------------------------------------------------- whole runs


def test_seed_sharded_run_equals_unsharded_and_resume_equals_uninterrupted(tmp_path):
    seeds = list(range(8))
    full = train_seeds(TINY, seeds, periods_per_chunk=1, env=SHORT_PENDULUM)
    assert full.final_eval_returns.shape == (8,)
    assert [row["step"] for row in full.history] == [50, 100]
    assert np.isfinite(full.history[-1]["critic_loss"]).all()

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
                            checkpointer=ckpt, stop_after_chunks=1)
        assert [row["step"] for row in first.history] == [50]
    with Checkpointer(tmp_path / "ckpt") as ckpt:
        resumed = train_seeds(TINY, seeds, periods_per_chunk=1, env=SHORT_PENDULUM,
                              checkpointer=ckpt)
        assert resumed.start_step == 50 and ckpt.latest_step() == 100
    for a, b in zip(jax.tree.leaves(resumed.state), jax.tree.leaves(full.state), strict=True):
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        assert_close(a, b, BITWISE)
    assert_close(resumed.final_eval_returns, full.final_eval_returns, BITWISE)


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
