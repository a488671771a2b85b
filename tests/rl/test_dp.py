"""Dynamic programming against plain numpy references, hand-computed book values and
each other (value iteration ↔ policy iteration ↔ truncated policy iteration)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl import dp
from rl.envs.gridworld import book_2x2, book_5x5, one_hot_policy
from tests.rl.references import (
    numpy_epsilon_greedy_policy_iteration,
    numpy_policy_values,
    numpy_value_iteration,
)
from tests.tolerances import F64, assert_close

# The book's optimal values of the 5x5 example (γ = 0.9, r_forbidden = -1), printed
# to one decimal in chapter 3.
BOOK_TABLE = np.array([
    [5.8, 5.6, 6.2, 6.5, 5.8],
    [6.5, 7.2, 8.0, 7.2, 6.5],
    [7.2, 8.0, 10.0, 8.0, 7.2],
    [8.0, 10.0, 10.0, 10.0, 8.0],
    [7.2, 9.0, 10.0, 9.0, 8.1],
])


def random_mdp(seed, S=7, A=3):
    rng = np.random.default_rng(seed)
    P = rng.random((S, A, S)) ** 3
    P /= P.sum(-1, keepdims=True)
    R = rng.normal(size=(S, A))
    return P, R


def random_policy(seed, S, A):
    rng = np.random.default_rng(seed)
    pi = rng.random((S, A))
    return pi / pi.sum(-1, keepdims=True)


@pytest.mark.parametrize("r_forbidden", [-1.0, -10.0])
@pytest.mark.parametrize("gamma", [0.9, 0.5, 0.0])
def test_value_iteration_matches_numpy(r_forbidden, gamma, x64):
    P, R = book_5x5(r_forbidden=r_forbidden).model()
    result = dp.value_iteration(P, R, gamma, tol=1e-12)
    assert_close(result.values, numpy_value_iteration(P, R, gamma), dict(rtol=0, atol=1e-9))


def test_value_iteration_random_mdp(x64):
    P, R = random_mdp(0)
    result = dp.value_iteration(P, R, 0.95, tol=1e-12)
    assert_close(result.values, numpy_value_iteration(P, R, 0.95), dict(rtol=0, atol=1e-9))


def test_book_5x5_optimal_values():
    P, R = book_5x5().model()
    result = dp.value_iteration(P, R, 0.9)
    values = np.asarray(result.values)
    # the target: stay forever, 1 / (1 - 0.9)
    assert abs(values[17] - 10.0) < 1e-4
    # cells next to the target step onto it: 1 + 0.9 * 10 (forbidden or not)
    for s in (12, 16, 18, 22):
        assert abs(values[s] - 10.0) < 1e-4
    # the book's printed table, to its one decimal
    assert np.abs(values.reshape(5, 5) - BOOK_TABLE).max() <= 0.05 + 1e-6
    # greedy action at the target is "stay"
    assert int(result.policy[17].argmax()) == 4


def test_bellman_optimality_residual(x64):
    P, R = book_5x5(r_forbidden=-10.0).model()
    result = dp.value_iteration(P, R, 0.9, tol=1e-11)
    v = np.asarray(result.values)
    q = np.asarray(R) + 0.9 * np.einsum("sat,t->sa", np.asarray(P), v)
    residual = np.abs(q.max(-1) - v).max()
    assert residual < 1e-10
    assert abs(float(result.residual) - residual) < 1e-12
    assert_close(result.action_values, q, F64)


def test_book_2x2_chapter2_policies(x64):
    """Chapter 2's 2x2 world (s2 forbidden, s4 target), γ = 0.9, computed by hand."""
    P, R = book_2x2().model()
    gamma = 0.9
    v4 = 1.0 / (1.0 - gamma)  # s4 stays on the target: 1 + γ + γ² + ... = 10
    v3 = 1.0 + gamma * v4  # s3 right onto the target = 10
    v2 = 1.0 + gamma * v4  # s2 down onto the target = 10
    good = [gamma * v3, v2, v3, v4]  # s1 down to s3: 0 + γ v3 = 9
    via_forbidden = [-1.0 + gamma * v2, v2, v3, v4]  # s1 right into s2: -1 + 9 = 8
    mixed = [0.5 * good[0] + 0.5 * via_forbidden[0], v2, v3, v4]  # 8.5
    cases = [(one_hot_policy([2, 2, 1, 4]), good),
             (one_hot_policy([1, 2, 1, 4]), via_forbidden),
             (jnp.array([[0, 0.5, 0.5, 0, 0], [0, 0, 1.0, 0, 0], [0, 1.0, 0, 0, 0],
                         [0, 0, 0, 0, 1.0]]), mixed)]
    for policy, expected in cases:
        for method in ("solve", "iterative"):
            result = dp.policy_evaluation(P, R, policy, gamma, method=method, tol=1e-13)
            assert_close(result.values, expected, dict(rtol=0, atol=1e-10))
    np.testing.assert_allclose(good, [9.0, 10.0, 10.0, 10.0])
    optimal = dp.value_iteration(P, R, gamma, tol=1e-13)
    assert_close(optimal.values, good, dict(rtol=0, atol=1e-10))
    np.testing.assert_array_equal(np.asarray(optimal.policy.argmax(-1)), [2, 2, 1, 4])


@pytest.mark.parametrize("method", ["solve", "iterative"])
def test_policy_evaluation_matches_closed_form(method, x64):
    P, R = random_mdp(1, S=9, A=4)
    policy = random_policy(2, 9, 4)
    result = dp.policy_evaluation(P, R, policy, 0.8, method=method, tol=1e-13)
    assert_close(result.values, numpy_policy_values(P, R, policy, 0.8),
                 dict(rtol=0, atol=1e-10))
    assert float(result.residual) < 1e-10
    if method == "iterative":
        k = int(result.num_iterations)
        assert 0 < k < 1000
        np.testing.assert_array_equal(np.asarray(result.history[0]), np.zeros(9))
        np.testing.assert_array_equal(np.asarray(result.history[k]), np.asarray(result.values))
        np.testing.assert_array_equal(np.asarray(result.history[-1]),
                                      np.asarray(result.values))
    else:
        assert result.history.shape == (1, 9)


def test_policy_and_value_iteration_agree(x64):
    for r_forbidden in (-1.0, -10.0):
        P, R = book_5x5(r_forbidden=r_forbidden).model()
        vi = dp.value_iteration(P, R, 0.9, tol=1e-12)
        pi = dp.policy_iteration(P, R, 0.9)
        assert_close(pi.values, vi.values, dict(rtol=0, atol=1e-9))
        np.testing.assert_array_equal(np.asarray(pi.policy), np.asarray(vi.policy))
        # policy iteration: a few improvements, values never decrease
        k = int(pi.num_iterations)
        assert 1 <= k < 20
        history = np.asarray(pi.history[:k + 1])
        assert np.all(np.diff(history, axis=0) >= -1e-9)
        # the greedy policy of v* is optimal: its values equal v*
        assert_close(numpy_policy_values(P, R, vi.policy, 0.9), vi.values,
                     dict(rtol=0, atol=1e-9))


def test_truncated_policy_iteration_between_vi_and_pi(x64):
    P, R = book_5x5().model()
    vi = dp.value_iteration(P, R, 0.9, tol=1e-10)
    iterations = {}
    for j in (1, 3, 10, 200):
        tpi = dp.truncated_policy_iteration(P, R, 0.9, num_eval_steps=j, tol=1e-10)
        assert_close(tpi.values, vi.values, dict(rtol=0, atol=1e-8))
        iterations[j] = int(tpi.num_iterations)
        if j == 1:
            # same iterates as value iteration, up to the greedy tie tolerance
            assert_close(tpi.history[:50], vi.history[:50], dict(rtol=0, atol=1e-4))
    # j = 1 is value iteration; more evaluation sweeps need fewer outer iterations
    assert abs(iterations[1] - int(vi.num_iterations)) <= 2
    assert iterations[1] > iterations[3] > iterations[10] > iterations[200]


def test_value_iteration_history(x64):
    P, R = book_5x5().model()
    v0 = jnp.linspace(0.0, 1.0, 25)
    result = dp.value_iteration(P, R, 0.9, v0=v0)
    k = int(result.num_iterations)
    assert result.history.shape == (1001, 25)
    np.testing.assert_array_equal(np.asarray(result.history[0]), np.asarray(v0))
    np.testing.assert_array_equal(np.asarray(result.history[1]),
                                  (np.asarray(R) + 0.9 * np.asarray(P) @ np.asarray(v0)).max(1))
    np.testing.assert_array_equal(np.asarray(result.history[k:]),
                                  np.broadcast_to(np.asarray(result.values), (1001 - k, 25)))
    # the iteration cap stops the loop (γ^1000 is still ~0.37 at γ = 0.999)
    capped = dp.value_iteration(P, R, 0.999, v0=v0)
    assert int(capped.num_iterations) == 1000 and float(capped.residual) > 1e-4


def test_greedy_ties_go_to_first_action():
    q = jnp.array([[1.0, 1.0, 0.0, 1.0, 0.5],  # exact tie of up/right/left -> up
                   [0.0, 2.0, 2.0 - 1e-7, 2.0, 2.0],  # rounding-level tie -> right
                   [0.0, 0.0, 0.0, 0.0, 0.0],  # all tied -> up
                   [-3.0, -2.0, -1.0, -5.0, -1.5]])
    np.testing.assert_array_equal(np.asarray(dp.greedy_policy(q).argmax(-1)), [0, 1, 0, 2])
    # in the 5x5 world, (3,2) (1-indexed) can go right or down into a forbidden cell
    # at equal value 8 = -1 + 0.9 * 10: the first of the two, right, is chosen
    P, R = book_5x5().model()
    assert int(dp.value_iteration(P, R, 0.9).policy[11].argmax()) == 1


def test_jit_and_vmap_over_gamma():
    P, R = book_5x5().model()
    gammas = jnp.array([0.9, 0.5, 0.0])
    batched = jax.jit(jax.vmap(lambda g: dp.value_iteration(P, R, g, max_iters=400)))(gammas)
    for i, g in enumerate([0.9, 0.5, 0.0]):
        single = dp.value_iteration(P, R, g, max_iters=400)
        assert_close(batched.values[i], single.values)
        np.testing.assert_array_equal(np.asarray(batched.policy[i]), np.asarray(single.policy))
    # γ = 0: values are the best immediate reward
    assert_close(batched.values[2], R.max(-1))
    evals = jax.vmap(lambda g: dp.policy_evaluation(P, R, batched.policy[0], g).values)(gammas)
    assert_close(evals[0], batched.values[0], dict(rtol=1e-5, atol=1e-4))


def test_single_state_mdp(x64):
    P = jnp.ones((1, 1, 1))
    R = jnp.array([[2.0]])
    for result in (dp.value_iteration(P, R, 0.5, tol=1e-13),
                   dp.policy_iteration(P, R, 0.5),
                   dp.policy_evaluation(P, R, jnp.ones((1, 1)), 0.5)):
        assert_close(result.values, [4.0], dict(rtol=0, atol=1e-11))


def test_epsilon_greedy_policy_iteration_matches_numpy(x64):
    """The best ε-greedy policy: jitted, vmapped over ε, against the numpy loop."""
    P, R = book_5x5(r_forbidden=-10.0).model()
    epsilons = [0.0, 0.1, 0.5, 1.0]
    batched = jax.jit(jax.vmap(lambda e: dp.epsilon_greedy_policy_iteration(P, R, 0.9, e)))(
        jnp.asarray(epsilons))
    for i, eps in enumerate(epsilons):
        policy, values = numpy_epsilon_greedy_policy_iteration(P, R, 0.9, eps)
        assert_close(batched.policy[i], policy, F64)
        assert_close(batched.values[i], values, dict(rtol=0, atol=1e-9))
        assert_close(batched.action_values[i], np.asarray(R) + 0.9 * np.asarray(P) @ values,
                     dict(rtol=0, atol=1e-9))
        assert float(batched.residual[i]) < 1e-9
    # ε = 0 is policy iteration from the uniform policy; ε = 1 stops at once (uniform)
    pi = dp.policy_iteration(P, R, 0.9)
    assert_close(batched.values[0], pi.values, dict(rtol=0, atol=1e-9))
    assert int(batched.num_iterations[-1]) == 1
    # more exploration costs value: the best ε-greedy values decrease with ε
    target = np.asarray(batched.values[:, 17])
    assert np.all(np.diff(target) < 0)
    single = dp.epsilon_greedy_policy_iteration(P, R, 0.9, 0.1)
    assert_close(single.values, batched.values[1], F64)
    k = int(single.num_iterations)
    assert single.history.shape == (101, 25)
    assert_close(single.history[k:], np.broadcast_to(np.asarray(single.values), (101 - k, 25)),
                 F64)


def test_evaluate_policies_stacks(x64):
    P, R = random_mdp(3, S=5, A=3)
    policies = np.stack([np.stack([random_policy(10 * i + j, 5, 3) for j in range(3)])
                         for i in range(2)])  # [2, 3, S, A]
    values = dp.evaluate_policies(P, R, policies, 0.7)
    assert values.shape == (2, 3, 5)
    for i in range(2):
        for j in range(3):
            assert_close(values[i, j], numpy_policy_values(P, R, policies[i, j], 0.7),
                         dict(rtol=0, atol=1e-10))
    assert dp.evaluate_policies(P, R, policies[0, 0], 0.7).shape == (5,)


# ------------------------------------------------------------------ bad input


def _model():
    return book_2x2().model()


@pytest.mark.parametrize("gamma", [1.0, -0.1, 1.5])
def test_bad_gamma(gamma):
    P, R = _model()
    policy = jnp.full((4, 5), 0.2)
    for call in (lambda: dp.value_iteration(P, R, gamma),
                 lambda: dp.policy_iteration(P, R, gamma),
                 lambda: dp.truncated_policy_iteration(P, R, gamma),
                 lambda: dp.policy_evaluation(P, R, policy, gamma)):
        with pytest.raises(ValueError, match="gamma"):
            call()


def test_policy_rows_must_sum_to_one():
    P, R = _model()
    bad = jnp.full((4, 5), 0.2).at[2, 0].set(0.5)
    with pytest.raises(ValueError, match=r"policy: every row must sum to 1; row 2"):
        dp.policy_evaluation(P, R, bad, 0.9)
    with pytest.raises(ValueError, match="policy0"):
        dp.policy_iteration(P, R, 0.9, policy0=bad)
    negative = jnp.zeros((4, 5)).at[:, 0].set(1.5).at[:, 1].set(-0.5)
    with pytest.raises(ValueError, match=">= 0"):
        dp.policy_evaluation(P, R, negative, 0.9)


def test_bad_shapes_and_options():
    P, R = _model()
    with pytest.raises(ValueError, match=r"policy must have shape \[S, A\]"):
        dp.policy_evaluation(P, R, jnp.full((4, 4), 0.25), 0.9)
    with pytest.raises(ValueError, match=r"P must have shape \[S, A, S\]"):
        dp.value_iteration(P[:, :, :3], R, 0.9)
    with pytest.raises(ValueError, match=r"R must have shape \[S, A\]"):
        dp.value_iteration(P, R[:, :4], 0.9)
    with pytest.raises(ValueError, match="P must hold probabilities"):
        dp.value_iteration(P * 0.5, R, 0.9)
    with pytest.raises(ValueError, match="method"):
        dp.policy_evaluation(P, R, jnp.full((4, 5), 0.2), 0.9, method="lu")
    with pytest.raises(ValueError, match="v0"):
        dp.value_iteration(P, R, 0.9, v0=jnp.zeros(3))
    with pytest.raises(ValueError, match="num_eval_steps"):
        dp.truncated_policy_iteration(P, R, 0.9, num_eval_steps=0)
    with pytest.raises(ValueError, match="max_iters"):
        dp.value_iteration(P, R, 0.9, max_iters=0)
    with pytest.raises(ValueError, match="tol"):
        dp.value_iteration(P, R, 0.9, tol=0.0)
    with pytest.raises(ValueError, match=r"q must have shape \[S, A\]"):
        dp.greedy_policy(jnp.zeros(5))
    with pytest.raises(ValueError, match="epsilon must be in"):
        dp.epsilon_greedy_policy_iteration(P, R, 0.9, 1.5)
    with pytest.raises(ValueError, match="gamma"):
        dp.epsilon_greedy_policy_iteration(P, R, 1.0, 0.1)
    with pytest.raises(ValueError, match="max_iters"):
        dp.epsilon_greedy_policy_iteration(P, R, 0.9, 0.1, max_iters=0)
    with pytest.raises(ValueError, match=r"policies must have shape \[\.\.\., S, A\]"):
        dp.evaluate_policies(P, R, jnp.full(5, 0.2), 0.9)


# ------------------------------------------------------------------ traced bad values


def _assert_poisoned(result):
    assert not bool(result.valid)
    for field in (result.values, result.policy, result.history, result.residual,
                  result.action_values):
        assert np.all(np.isnan(np.asarray(field)))
    assert int(result.num_iterations) == -1


def _entry_points(P, R, policy):
    """Every DPResult entry point of rl.dp as ``f(gamma, P, R, policy) -> DPResult``."""
    return {
        "value_iteration": lambda g, P, R, pi: dp.value_iteration(P, R, g),
        "policy_iteration": lambda g, P, R, pi: dp.policy_iteration(P, R, g, policy0=pi),
        "truncated": lambda g, P, R, pi: dp.truncated_policy_iteration(P, R, g),
        "evaluation_solve": lambda g, P, R, pi: dp.policy_evaluation(P, R, pi, g),
        "evaluation_iterative": lambda g, P, R, pi: dp.policy_evaluation(
            P, R, pi, g, method="iterative"),
        "epsilon_greedy": lambda g, P, R, pi: dp.epsilon_greedy_policy_iteration(P, R, g, 0.1),
    }


@pytest.mark.parametrize("name", list(_entry_points(None, None, None)))
def test_bad_gamma_under_jit_poisons_the_result(name):
    """γ = 1 used to give values near 995 and γ = 1.5 NaN values with valid-looking
    counts; now every traced bad γ gives NaN, −1 and valid = False."""
    P, R = _model()
    policy = jnp.full((4, 5), 0.2)
    run = jax.jit(lambda g: _entry_points(P, R, policy)[name](g, P, R, policy))
    good = run(0.9)
    assert bool(good.valid)
    assert_close(good.values, _entry_points(P, R, policy)[name](0.9, P, R, policy).values)
    for gamma in (1.0, 1.5, -0.1, float("nan")):
        _assert_poisoned(run(gamma))


@pytest.mark.parametrize("name", list(_entry_points(None, None, None)))
def test_bad_model_and_policy_under_jit_poison_the_result(name):
    P, R = _model()
    policy = jnp.full((4, 5), 0.2)
    run = jax.jit(lambda P, R, pi: _entry_points(P, R, pi)[name](0.9, P, R, pi))
    assert bool(run(P, R, policy).valid)
    _assert_poisoned(run(P * 0.5, R, policy))  # rows of P summing to 0.5
    _assert_poisoned(run(P, R.at[1, 2].set(jnp.nan), policy))
    if name in ("policy_iteration", "evaluation_solve", "evaluation_iterative"):
        _assert_poisoned(run(P, R, policy.at[2, 0].set(0.5)))


def test_bad_values_under_vmap_poison_only_their_rows():
    P, R = _model()
    batch = jax.vmap(lambda g: dp.value_iteration(P, R, g))(jnp.array([0.9, 1.0, 0.5]))
    assert np.asarray(batch.valid).tolist() == [True, False, True]
    assert_close(batch.values[0], dp.value_iteration(P, R, 0.9).values)
    assert np.all(np.isnan(np.asarray(batch.values[1])))
    assert np.asarray(batch.num_iterations)[1] == -1
    eps = jax.vmap(lambda e: dp.epsilon_greedy_policy_iteration(P, R, 0.9, e))(
        jnp.array([0.1, 1.5]))
    assert np.asarray(eps.valid).tolist() == [True, False]
    assert np.all(np.isnan(np.asarray(eps.policy[1])))
    policies = jnp.stack([jnp.full((4, 5), 0.2), jnp.full((4, 5), 0.3)])
    values = jax.jit(lambda p: dp.evaluate_policies(P, R, p, 0.9))(policies)
    assert np.all(np.isfinite(np.asarray(values[0]))) and np.all(np.isnan(np.asarray(values[1])))
    greedy = jax.vmap(lambda e: dp.epsilon_greedy_policy(jnp.zeros((2, 5)), e))(
        jnp.array([0.5, -0.1]))
    assert np.all(np.isfinite(np.asarray(greedy[0]))) and np.all(np.isnan(np.asarray(greedy[1])))


def test_traced_tol_v0_and_eval_steps_are_checked():
    P, R = _model()
    vi = jax.jit(lambda tol, v0: dp.value_iteration(P, R, 0.9, tol=tol, v0=v0))
    assert bool(vi(1e-6, jnp.zeros(4)).valid)
    _assert_poisoned(vi(0.0, jnp.zeros(4)))
    _assert_poisoned(vi(1e-6, jnp.zeros(4).at[0].set(jnp.nan)))
    tpi = jax.jit(lambda j: dp.truncated_policy_iteration(P, R, 0.9, num_eval_steps=j))
    assert bool(tpi(3).valid)
    _assert_poisoned(tpi(0))


def test_eager_checks_of_rewards_initial_values_and_nan_policies():
    P, R = _model()
    with pytest.raises(ValueError, match="R must be finite"):
        dp.value_iteration(P, R.at[0, 0].set(jnp.nan), 0.9)
    with pytest.raises(ValueError, match="R must be finite"):
        dp.policy_iteration(P, R.at[0, 0].set(jnp.inf), 0.9)
    with pytest.raises(ValueError, match="v0 must be finite"):
        dp.value_iteration(P, R, 0.9, v0=jnp.full(4, jnp.nan))
    with pytest.raises(ValueError, match="policy: every row must sum to 1"):
        dp.policy_evaluation(P, R, jnp.full((4, 5), 0.2).at[1, 1].set(jnp.nan), 0.9)
    with pytest.raises(ValueError, match="P must hold probabilities"):
        dp.value_iteration(P.at[0, 0, 0].set(jnp.nan), R, 0.9)
    with pytest.raises(ValueError, match="gamma must be a scalar"):
        jax.jit(lambda g: dp.value_iteration(P, R, g))(jnp.array([0.9, 0.5]))
