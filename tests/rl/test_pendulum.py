"""rl.envs.gymnax_env: Pendulum-v1 against the Gymnasium equations written in numpy,
time limits (truncation keeps the final observation and bootstraps, termination does
not), and refusal of wrong actions and environments."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl import monte_carlo
from rl.envs import Environment, FiniteEnvironment, Step
from rl.envs.gymnax_env import ContinuousEnv, make_env
from tests.tolerances import F32, F64, assert_close

MAX_SPEED, MAX_TORQUE, DT, G, M, L = 8.0, 2.0, 0.05, 10.0, 1.0, 1.0


def _angle_normalize(x):
    return ((x + np.pi) % (2.0 * np.pi)) - np.pi


def gym_pendulum_step(theta, theta_dot, u):
    """Gymnasium's Pendulum-v1 step in float64 numpy: the cost is evaluated on the
    pre-step state, then a semi-implicit Euler step (velocity first, clipped, then the
    angle with the new velocity)."""
    u = float(np.clip(u, -MAX_TORQUE, MAX_TORQUE))
    cost = _angle_normalize(theta) ** 2 + 0.1 * theta_dot**2 + 0.001 * u**2
    new_dot = theta_dot + (3.0 * G / (2.0 * L) * np.sin(theta) + 3.0 / (M * L**2) * u) * DT
    new_dot = float(np.clip(new_dot, -MAX_SPEED, MAX_SPEED))
    new_theta = theta + new_dot * DT
    return new_theta, new_dot, -cost


def _obs(theta, theta_dot):
    return np.array([np.cos(theta), np.sin(theta), theta_dot])


def test_spec_of_pendulum_and_mountaincar():
    env = make_env("Pendulum-v1")
    assert (env.obs_dim, env.action_dim, env.max_steps) == (3, 1, 200)
    np.testing.assert_array_equal(env.action_low, [-2.0])
    np.testing.assert_array_equal(env.action_high, [2.0])
    car = make_env("MountainCarContinuous-v0")
    assert (car.obs_dim, car.action_dim, car.max_steps) == (2, 1, 999)
    np.testing.assert_array_equal(car.action_high, [1.0])


def test_continuous_env_implements_the_protocol():
    env = make_env("Pendulum-v1")
    assert isinstance(env, Environment) and not isinstance(env, FiniteEnvironment)
    _, state = env.reset(jax.random.key(0))
    assert isinstance(env.step(jax.random.key(1), state, jnp.zeros(1)), Step)
    # tabular Monte Carlo needs a finite state and action space: the message says so
    with pytest.raises(ValueError, match=r"ContinuousEnv is missing: num_states"):
        monte_carlo.mc_epsilon_greedy(env, jax.random.key(0), epsilon=0.1, gamma=0.9,
                                      num_episodes=2, episode_length=3)


def test_one_step_dynamics_match_gymnasium(x64):
    env = make_env("Pendulum-v1")
    rng = np.random.default_rng(0)
    step = jax.jit(env.env.step)
    _, state = env.env.reset(jax.random.key(0), env.params)
    # angles beyond ±π (normalisation), speeds at the clip, torques beyond ±2
    thetas = np.concatenate([rng.uniform(-7, 7, 30), [np.pi, -np.pi, 0.0]])
    dots = np.concatenate([rng.uniform(-8, 8, 30), [7.99, -7.99, 8.0]])
    torques = np.concatenate([rng.uniform(-3, 3, 30), [5.0, -5.0, 0.0]])
    for theta, dot, u in zip(thetas, dots, torques, strict=True):
        s = state.replace(theta=jnp.float64(theta), theta_dot=jnp.float64(dot))
        obs, s2, reward, terminated, truncated, _ = step(jax.random.key(1), s,
                                                         jnp.array([u]), env.params)
        want_theta, want_dot, want_reward = gym_pendulum_step(theta, dot, u)
        assert_close(s2.theta, want_theta, F64)
        assert_close(s2.theta_dot, want_dot, F64)
        assert_close(reward, want_reward, F64)
        assert_close(obs, _obs(want_theta, want_dot), F64)
        assert not bool(terminated) and not bool(truncated)


def test_episode_truncates_at_200_with_the_final_observation(x64):
    env = make_env("Pendulum-v1")
    obs0, state = env.reset(jax.random.key(3))
    theta, dot = float(state.theta), float(state.theta_dot)
    assert_close(obs0, _obs(theta, dot), F32)
    assert -np.pi <= theta <= np.pi and -1.0 <= dot <= 1.0   # Gymnasium's reset box
    actions = np.random.default_rng(1).uniform(-2.5, 2.5, 200)

    def body(state, inp):
        key, a = inp
        step = env.step(key, state, a[None])
        return step.state, (step.reward, step.terminated, step.truncated, step.next_obs,
                            step.obs, step.discount)

    keys = jax.random.split(jax.random.key(4), 200)
    _, (rewards, terminated, truncated, next_obs, obs, discount) = jax.jit(
        lambda s: jax.lax.scan(body, s, (keys, jnp.asarray(actions))))(state)
    ref_th, ref_dot, ref_obs, ref_r = theta, dot, [], []
    for u in actions:
        ref_th, ref_dot, r = gym_pendulum_step(ref_th, ref_dot, u)
        ref_obs.append(_obs(ref_th, ref_dot))
        ref_r.append(r)
    # float32 observations and rewards from the float64 dynamics, free-running 200 steps
    assert_close(rewards, ref_r, dict(rtol=1e-5, atol=1e-4))
    assert_close(next_obs, np.array(ref_obs), dict(rtol=1e-5, atol=1e-4))
    truncated = np.asarray(truncated)
    assert not np.any(np.asarray(terminated))
    assert not np.any(truncated[:199]) and truncated[199]
    np.testing.assert_array_equal(np.asarray(discount), np.ones(200))  # time-outs bootstrap
    # before the limit the acting observation is the successor; at the limit it is a reset
    assert_close(obs[:199], next_obs[:199], F32)
    assert np.abs(np.asarray(obs[199]) - np.asarray(next_obs[199])).max() > 1e-3


def test_termination_does_not_bootstrap():
    env = make_env("MountainCarContinuous-v0")
    _, state = env.reset(jax.random.key(0))
    near_goal = state.replace(position=jnp.float32(0.449), velocity=jnp.float32(0.05))
    step = env.step(jax.random.key(1), near_goal, jnp.array([1.0]))
    assert bool(step.terminated) and not bool(step.truncated)
    assert float(step.discount) == 0.0
    assert float(step.next_obs[0]) >= 0.45                    # the terminal observation ...
    assert -0.6 <= float(step.obs[0]) <= -0.4                  # ... and the reset one
    assert float(step.reward) > 99.0
    far = env.step(jax.random.key(1), state, jnp.array([0.3]))
    assert not bool(far.done) and float(far.discount) == 1.0


def test_wrong_actions_are_refused():
    env = make_env("Pendulum-v1")
    _, state = env.reset(jax.random.key(0))
    with pytest.raises(ValueError, match=r"action must have shape \[1\], got \(2,\)"):
        env.step(jax.random.key(1), state, jnp.zeros(2))
    with pytest.raises(ValueError, match=r"action must have shape \[1\], got \(\)"):
        env.step(jax.random.key(1), state, jnp.float32(0.0))
    with pytest.raises(ValueError, match="floating point"):
        env.step(jax.random.key(1), state, jnp.zeros(1, jnp.int32))


def test_bad_environments_are_refused():
    with pytest.raises(ValueError, match="unknown gymnax environment 'Pendulum-v9'"):
        make_env("Pendulum-v9")
    with pytest.raises(ValueError, match=r"unknown environment parameters \['max_sped'\]"):
        make_env("Pendulum-v1", max_sped=3.0)
    with pytest.raises(ValueError, match="continuous"):
        make_env("CartPole-v1")
    assert make_env("Pendulum-v1", max_steps_in_episode=50).max_steps == 50


class _WrongObs:
    """A gymnax-style environment whose observations are [4] instead of its spec's [3]."""

    def __init__(self):
        import gymnax

        self.inner, self.default_params = gymnax.make("Pendulum-v1")
        self.name = "wrong-obs"

    def action_space(self, params):
        return self.inner.action_space(params)

    def reset(self, key, params):
        obs, state = self.inner.reset(key, params)
        return obs, state

    def step(self, key, state, action, params):
        obs, state, r, te, tr, info = self.inner.step(key, state, action, params)
        return (jnp.concatenate([obs, obs[:1]]), state, r, te, tr,
                {**info, "final_observation": jnp.concatenate([obs, obs[:1]])})


def test_observation_shape_mismatch_is_refused():
    env = ContinuousEnv.from_gymnax(_WrongObs())
    _, state = env.reset(jax.random.key(0))
    with pytest.raises(ValueError, match=r"wrong-obs: step returned an observation of shape "
                                         r"\(4,\), expected \[3\]"):
        env.step(jax.random.key(1), state, jnp.zeros(1))
