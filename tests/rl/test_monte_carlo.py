"""Monte Carlo control against exact policy evaluation and value iteration, on the grid
world and on an episodic environment that only implements the protocol."""

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl import dp
from rl import monte_carlo as mc
from rl.envs import Step
from rl.envs.gridworld import book_5x5, one_hot_policy
from tests.tolerances import assert_close

WORLD = book_5x5()
P, R = WORLD.model()


def numpy_returns(rewards, gamma):
    out = np.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        g = 0.0
        for t in reversed(range(rewards.shape[1])):
            g = rewards[b, t] + gamma * g
            out[b, t] = g
    return out


def test_discounted_returns_match_loop():
    rewards = np.asarray(jax.random.normal(jax.random.key(0), (3, 17)))
    for gamma in (0.0, 0.5, 0.9):
        assert_close(mc.discounted_returns(rewards, gamma), numpy_returns(rewards, gamma))
    assert_close(mc.discounted_returns(jnp.array([1.0, 1.0, 1.0]), 0.5), [1.75, 1.5, 1.0])


def test_epsilon_greedy_policy_probabilities():
    q = jnp.array([[0.0, 3.0, 1.0, 3.0, 2.0], [5.0, 0.0, 0.0, 0.0, 0.0]])
    for eps in (0.0, 0.1, 0.5, 1.0):
        pi = np.asarray(mc.epsilon_greedy_policy(q, eps))
        np.testing.assert_allclose(pi.sum(-1), 1.0, rtol=1e-6)
        assert pi[0, 1] == pytest.approx(1 - eps * 4 / 5)  # tie 1 vs 3: first wins
        assert pi[1, 0] == pytest.approx(1 - eps * 4 / 5)
        np.testing.assert_allclose(pi[0, [0, 2, 3, 4]], eps / 5, atol=1e-7)


def test_episode_follows_the_world():
    policy = jnp.full((25, 5), 0.2)
    sample = jax.jit(lambda k: mc.sample_episodes(WORLD, policy, k, 64, 40,
                                                  exploring_starts=True))
    ep = sample(jax.random.key(0))
    assert ep.states.shape == ep.actions.shape == ep.rewards.shape == (64, 40)
    next_state, reward = WORLD.transition_table()
    s, a = np.asarray(ep.states), np.asarray(ep.actions)
    np.testing.assert_array_equal(s[:, 1:], next_state[s[:, :-1], a[:, :-1]])
    np.testing.assert_array_equal(np.asarray(ep.rewards), reward[s, a])


def test_forced_start_and_policy_sampling():
    # π: down with 0.7, stay with 0.3, never anything else
    policy = jnp.zeros((25, 5)).at[:, 2].set(0.7).at[:, 4].set(0.3)
    sample = jax.jit(lambda k: mc.sample_episode(WORLD, policy, k, 50, 3, 1))
    ep = sample(jax.random.key(1))
    assert int(ep.states[0]) == 3 and int(ep.actions[0]) == 1  # (s0, a0) forced
    assert int(ep.states[1]) == 4  # right from 3
    # a batch from every pair: negative start actions are drawn from the policy
    pairs = jnp.arange(125)
    batch = mc.rollouts(WORLD, policy, jax.random.key(4), pairs // 5, pairs % 5, 3)
    np.testing.assert_array_equal(np.asarray(batch.states[:, 0]), np.arange(125) // 5)
    np.testing.assert_array_equal(np.asarray(batch.actions[:, 0]), np.arange(125) % 5)
    drawn = mc.rollouts(WORLD, policy, jax.random.key(4), pairs // 5, -jnp.ones(125, int), 3)
    assert set(np.unique(np.asarray(drawn.actions))) <= {2, 4}
    many = jax.vmap(sample)(jax.random.split(jax.random.key(2), 200))
    later = np.asarray(many.actions[:, 1:]).ravel()
    assert set(np.unique(later)) <= {2, 4}  # zero-probability actions never drawn
    assert abs(np.mean(later == 2) - 0.7) < 0.02  # 9800 draws: sd ~0.005


def test_mc_estimates_converge_to_policy_evaluation():
    """MC Basic's first iteration is MC prediction of π_0: q ≈ q_π from DP."""
    policy = mc.epsilon_greedy_policy(dp.value_iteration(P, R, 0.9).action_values, 0.3)
    exact = dp.policy_evaluation(P, R, policy, 0.9).action_values
    result = mc.mc_basic(WORLD, 80, 0.9, num_iterations=1, key=jax.random.key(3),
                         initial_policy=policy, episodes_per_pair=256)
    # 256 returns per pair; their spread is ~2.5 here, so the error sd is ~0.16
    error = np.abs(np.asarray(result.q_values) - np.asarray(exact))
    assert error.max() < 0.7 and error.mean() < 0.15
    assert np.all(np.asarray(result.counts) == 256)


def test_mc_basic_over_episode_lengths():
    """One vmapped call over L: L = 1 gives the rewards, long episodes the optimum."""
    world = book_5x5(r_forbidden=-10.0)
    Pw, Rw = world.model()
    optimum = dp.value_iteration(Pw, Rw, 0.9)
    lengths = [1, 5, 100]
    run = jax.jit(jax.vmap(lambda L: mc.mc_basic(world, L, 0.9, num_iterations=10,
                                                 key=jax.random.key(0), max_length=100)))
    batched = run(jnp.array(lengths))
    assert batched.history.shape == (3, 10, 25)
    # one-step episodes: q is the immediate reward, the policy greedy in it
    assert_close(batched.q_values[0], Rw)
    np.testing.assert_array_equal(np.asarray(batched.policy[0]),
                                  np.asarray(dp.greedy_policy(Rw)))
    # with L steps only states within L moves of the target see its reward:
    # L = 1: the target and its 4 neighbours
    assert int((batched.values[0] > 0).sum()) == 5
    assert 5 < int((batched.values[1] > 0).sum()) < 25
    # L = 100: truncation error at most 0.9^100 * 10 / (1 - 0.9) ~ 3e-3, optimal policy
    assert_close(batched.values[2], optimum.values, dict(rtol=0, atol=3e-3))
    true_values = dp.policy_evaluation(Pw, Rw, batched.policy[2], 0.9).values
    assert_close(true_values, optimum.values, dict(rtol=0, atol=1e-4))
    assert int(batched.policy_changes[2, -1]) == 0


# one static configuration shared by the control tests (one compilation)
CONTROL = dict(num_episodes=2000, episode_length=60, episodes_per_update=20, tail_steps=30)


def test_exploring_starts_finds_the_optimal_policy():
    optimum = dp.value_iteration(P, R, 0.9)
    result = mc.mc_exploring_starts(WORLD, jax.random.key(0), gamma=0.9, memory=0.8,
                                    **CONTROL)
    true_values = dp.policy_evaluation(P, R, result.policy, 0.9).values
    assert_close(true_values, optimum.values, dict(rtol=0, atol=1e-3))
    assert result.history.shape == (100, 25) and result.policy_changes.shape == (100,)
    # the estimates of the greedy actions are close to the true values
    assert np.abs(np.asarray(result.values) - np.asarray(optimum.values)).max() < 1.0


def test_epsilon_greedy_vmapped_over_seeds_and_epsilon():
    run = jax.jit(jax.vmap(lambda k, e: mc.mc_epsilon_greedy(
        WORLD, k, epsilon=e, gamma=0.5, exploring_starts=True, **CONTROL)))
    keys = jax.random.split(jax.random.key(0), 3)
    eps = jnp.array([0.0, 0.2, 1.0])
    batched = run(keys, eps)
    assert batched.policy.shape == (3, 25, 5)
    # un-vmapped, same key: same result
    single = mc.mc_epsilon_greedy(WORLD, keys[1], epsilon=0.2, gamma=0.5,
                                  exploring_starts=True, **CONTROL)
    assert_close(batched.q_values[1], single.q_values)
    np.testing.assert_array_equal(np.asarray(batched.counts[1]), np.asarray(single.counts))
    # ε-greedy rows: the greedy action has 1 − ε(|A|−1)/|A|
    np.testing.assert_allclose(np.asarray(batched.policy[1]).max(-1), 1 - 0.2 * 4 / 5,
                               rtol=1e-6)
    # ε = 1 keeps the uniform policy, so the every-visit averages estimate q_uniform
    uniform = jnp.full((25, 5), 0.2)
    exact = dp.policy_evaluation(P, R, uniform, 0.5).action_values
    assert_close(batched.policy[2], uniform)
    error = np.abs(np.asarray(batched.q_values[2]) - np.asarray(exact))
    assert error.max() < 0.25 and error.mean() < 0.06  # ~800 visits per pair


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("epsilon", [-0.1, 1.5])
def test_bad_epsilon(epsilon):
    with pytest.raises(ValueError, match="epsilon"):
        mc.mc_epsilon_greedy(WORLD, jax.random.key(0), epsilon=epsilon, gamma=0.9,
                             num_episodes=10, episode_length=5)
    with pytest.raises(ValueError, match="epsilon"):
        mc.epsilon_greedy_policy(jnp.zeros((2, 5)), epsilon)


@pytest.mark.parametrize("gamma", [1.0, -0.5])
def test_bad_gamma(gamma):
    with pytest.raises(ValueError, match="gamma"):
        mc.mc_basic(WORLD, 5, gamma)
    with pytest.raises(ValueError, match="gamma"):
        mc.mc_exploring_starts(WORLD, jax.random.key(0), gamma=gamma, num_episodes=10,
                               episode_length=5)


def test_bad_policy_and_sizes():
    bad = jnp.full((25, 5), 0.3)
    with pytest.raises(ValueError, match="initial_policy: every row must sum to 1"):
        mc.mc_basic(WORLD, 5, 0.9, initial_policy=bad)
    with pytest.raises(ValueError, match=r"initial_policy must have shape \[S, A\]"):
        mc.mc_epsilon_greedy(WORLD, jax.random.key(0), epsilon=0.1, gamma=0.9,
                             num_episodes=10, episode_length=5,
                             initial_policy=one_hot_policy([0, 1]))
    with pytest.raises(ValueError, match="multiple of episodes_per_update"):
        mc.mc_epsilon_greedy(WORLD, jax.random.key(0), epsilon=0.1, gamma=0.9,
                             num_episodes=10, episode_length=5, episodes_per_update=3)
    with pytest.raises(ValueError, match="episode_length"):
        mc.mc_basic(WORLD, 0, 0.9)
    with pytest.raises(ValueError, match="episode_length"):
        mc.mc_basic(WORLD, 20, 0.9, max_length=10)
    with pytest.raises(ValueError, match="max_length"):
        jax.vmap(lambda L: mc.mc_basic(WORLD, L, 0.9).values)(jnp.array([1, 2]))
    with pytest.raises(ValueError, match="memory"):
        mc.mc_exploring_starts(WORLD, jax.random.key(0), gamma=0.9, num_episodes=10,
                               episode_length=5, memory=0.0)
    with pytest.raises(ValueError, match="tail_steps"):
        mc.mc_exploring_starts(WORLD, jax.random.key(0), gamma=0.9, num_episodes=10,
                               episode_length=5, tail_steps=-1)
    with pytest.raises(ValueError, match="env must implement the environment protocol"):
        mc.mc_basic("gridworld", 5, 0.9)
    with pytest.raises(ValueError, match=r"start_states and start_actions must both have shape"):
        mc.rollouts(WORLD, jnp.full((25, 5), 0.2), jax.random.key(0), jnp.zeros(3, int),
                    jnp.zeros(2, int), 5)


# ------------------------------------------------------------------ any environment of the protocol


@dataclasses.dataclass(frozen=True)
class Chain:
    """States 0 … n−1, actions 0 (left, stays at 0) and 1 (right). Right from n−1 ends the
    episode with reward 1 and auto-resets to a uniform state; every other move gives 0.
    So ``v*(s) = γ^(n−1−s)``, and an episode that ignored termination would keep
    collecting rewards from the next episode."""

    n: int = 3
    num_actions: ClassVar[int] = 2

    @property
    def num_states(self) -> int:
        return self.n

    def reset(self, key):
        s = jax.random.randint(key, (), 0, self.n, jnp.int32)
        return s, s

    def reset_to(self, key, s):
        s = jnp.asarray(s, jnp.int32)
        return s, s

    def step(self, key, state, action):
        right = action == 1
        end = right & (state == self.n - 1)
        nxt = jnp.where(right, jnp.minimum(state + 1, self.n - 1), jnp.maximum(state - 1, 0))
        obs = jnp.where(end, self.reset(key)[0], nxt).astype(jnp.int32)
        reward = end.astype(jnp.float32)
        return Step(obs=obs, state=obs, reward=reward, terminated=end, truncated=jnp.bool_(False),
                    next_obs=nxt.astype(jnp.int32), discount=1.0 - reward)

    def model(self):
        """``P, R`` with an extra absorbing, zero-reward terminal state ``n``."""
        n = self.n
        P = np.zeros((n + 1, 2, n + 1))
        R = np.zeros((n + 1, 2))
        for s in range(n):
            P[s, 0, max(s - 1, 0)] = 1.0
            P[s, 1, s + 1] = 1.0
        P[n, :, n] = 1.0
        R[n - 1, 1] = 1.0
        return P, R


@dataclasses.dataclass(frozen=True)
class NoStarts:
    """The chain behind the bare protocol: no ``reset_to``, so no exploring starts."""

    inner: Chain = Chain()
    num_states: int = 3
    num_actions: int = 2

    def reset(self, key):
        return self.inner.reset(key)

    def step(self, key, state, action):
        return self.inner.step(key, state, action)


def test_episodes_stop_at_termination():
    chain = Chain()
    right = jnp.zeros((3, 2)).at[:, 1].set(1.0)
    ep = mc.sample_episode(chain, right, jax.random.key(0), 6, start_state=0)
    np.testing.assert_array_equal(np.asarray(ep.states[:3]), [0, 1, 2])
    np.testing.assert_array_equal(np.asarray(ep.mask), [1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(np.asarray(ep.rewards), [0, 0, 1, 0, 0, 0])  # no 2nd episode


def test_mc_basic_on_an_episodic_environment():
    chain = Chain()
    result = mc.mc_basic(chain, 10, 0.9, num_iterations=6, key=jax.random.key(1))
    assert_close(result.values, [0.81, 0.9, 1.0])  # γ^(n−1−s)
    np.testing.assert_array_equal(np.asarray(result.policy.argmax(-1)), [1, 1, 1])
    assert_close(result.q_values[:, 0], [0.729, 0.729, 0.81])  # γ v*(max(s − 1, 0))


def test_every_visit_estimates_on_an_episodic_environment():
    """ε = 1 keeps the uniform policy: the averages estimate its q (DP on the model with
    an absorbing terminal), and steps after the end of an episode are never counted."""
    P, R = Chain().model()
    exact = np.asarray(dp.policy_evaluation(P, R, np.full((4, 2), 0.5), 0.9).action_values)
    result = mc.mc_epsilon_greedy(NoStarts(), jax.random.key(2), epsilon=1.0, gamma=0.9,
                                  num_episodes=400, episode_length=40, episodes_per_update=200)
    error = np.abs(np.asarray(result.q_values) - exact[:3])
    assert error.max() < 0.08, error  # thousands of visits per pair
    # an episode from s lasts at least n − s steps: far fewer visits than 400 × 40 steps
    assert 400 * 1 < float(np.asarray(result.counts).sum()) < 400 * 40 / 2


def test_missing_capabilities_are_named():
    with pytest.raises(ValueError, match=r"NoStarts is missing: reset_to\(key, s\)"):
        mc.mc_basic(NoStarts(), 5, 0.9)
    with pytest.raises(ValueError, match="reset_to"):
        mc.mc_epsilon_greedy(NoStarts(), jax.random.key(0), epsilon=0.1, gamma=0.9,
                             num_episodes=10, episode_length=5, exploring_starts=True)
    with pytest.raises(ValueError, match="reset_to"):
        mc.sample_episodes(NoStarts(), jnp.full((3, 2), 0.5), jax.random.key(0), 2, 5,
                           exploring_starts=True)
    with pytest.raises(ValueError, match=r"num_states \(an integer >= 1\)"):
        mc.sample_episodes(dataclasses.replace(NoStarts(), num_states=0),
                           jnp.full((3, 2), 0.5), jax.random.key(0), 2, 5)
    with pytest.raises(ValueError, match=r"policy must have shape \[S, A\] = \(3, 2\)"):
        mc.sample_episodes(NoStarts(), jnp.full((3, 3), 1 / 3), jax.random.key(0), 2, 5)



# ------------------------------------------------------------------ traced bad values


def _poisoned(result):
    floats = (result.values, result.policy, result.q_values, result.history)
    return (not bool(result.valid) and all(np.all(np.isnan(np.asarray(f))) for f in floats)
            and np.all(np.asarray(result.policy_changes) == -1))


def test_bad_epsilon_gamma_and_memory_under_vmap_poison_their_rows():
    chain = Chain()
    run = jax.jit(jax.vmap(lambda e, g, m: mc.mc_epsilon_greedy(
        chain, jax.random.key(0), epsilon=e, gamma=g, num_episodes=4, episode_length=6,
        episodes_per_update=2, memory=m)))
    batch = run(jnp.array([0.1, 1.5, 0.1, 0.1]), jnp.array([0.9, 0.9, 1.0, 0.9]),
                jnp.array([1.0, 1.0, 1.0, 0.0]))
    assert np.asarray(batch.valid).tolist() == [True, False, False, False]
    eager = mc.mc_epsilon_greedy(chain, jax.random.key(0), epsilon=0.1, gamma=0.9,
                                 num_episodes=4, episode_length=6, episodes_per_update=2)
    assert_close(batch.values[0], eager.values)
    for i in (1, 2, 3):
        assert _poisoned(jax.tree.map(lambda x, i=i: x[i], batch))


def test_bad_lengths_gamma_and_policies_under_jit_poison_mc_basic_and_episodes():
    chain = Chain()
    basic = jax.jit(jax.vmap(lambda L: mc.mc_basic(chain, L, 0.9, num_iterations=2,
                                                   max_length=4)))(jnp.array([2, 0, 5]))
    assert np.asarray(basic.valid).tolist() == [True, False, False]
    assert np.all(np.asarray(basic.counts)[1:] == -1)
    bad = jnp.full((3, 2), 0.4)  # rows sum to 0.8
    run = jax.jit(lambda pi, g: mc.mc_basic(chain, 3, g, num_iterations=2, initial_policy=pi))
    assert bool(run(jnp.full((3, 2), 0.5), 0.9).valid)
    assert _poisoned(run(bad, 0.9)) and _poisoned(run(jnp.full((3, 2), 0.5), 1.0))
    episodes = jax.jit(lambda pi: mc.sample_episodes(chain, pi, jax.random.key(0), 2, 5))(bad)
    assert np.asarray(episodes.valid).tolist() == [False, False]
    assert np.all(np.asarray(episodes.states) == -1) and np.all(np.isnan(episodes.rewards))
    good = jax.jit(lambda pi: mc.sample_episode(chain, pi, jax.random.key(0), 5, 0))(
        jnp.full((3, 2), 0.5))
    assert bool(good.valid) and np.all(np.asarray(good.states) >= 0)
