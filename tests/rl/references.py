"""Plain numpy reference implementations of the tabular algorithms, written from the
book's pseudo-code with Python loops in float64: what the jitted library is tested
against."""

import numpy as np

TIE_TOL = 1e-5  # greedy ties, as in rl.dp: within TIE_TOL · max(1, |max q|) of the best


def numpy_value_iteration(P, R, gamma, tol=1e-13, max_iters=100_000):
    """Value iteration ``v ← max_a (R + γ P v)`` until the sup-norm change is below ``tol``."""
    P, R = np.asarray(P, np.float64), np.asarray(R, np.float64)
    v = np.zeros(P.shape[0])
    for _ in range(max_iters):
        new = (R + gamma * P @ v).max(axis=1)
        if np.max(np.abs(new - v)) < tol:
            return new
        v = new
    return v


def numpy_policy_values(P, R, policy, gamma):
    """Closed form ``v_π = (I − γ P_π)⁻¹ r_π`` with numpy.linalg."""
    P, R, policy = (np.asarray(x, np.float64) for x in (P, R, policy))
    P_pi = np.einsum("sa,sat->st", policy, P)
    r_pi = (policy * R).sum(-1)
    return np.linalg.solve(np.eye(len(r_pi)) - gamma * P_pi, r_pi)


def numpy_epsilon_greedy_policy_iteration(P, R, gamma, epsilon, max_iters=100):
    """Policy iteration within the ε-greedy policies, state by state.

    From the uniform policy: evaluate ``π`` exactly, then at every state give the first
    (near-)best action ``1 − ε + ε/|A|`` and every other ``ε/|A|``; stop when the greedy
    actions repeat. Returns ``(policy [S, A], values [S])``.
    """
    P, R = np.asarray(P, np.float64), np.asarray(R, np.float64)
    S, A = R.shape
    policy = np.full((S, A), 1.0 / A)
    actions = None
    for _ in range(max_iters):
        values = numpy_policy_values(P, R, policy, gamma)
        q = R + gamma * P @ values
        new_actions = np.zeros(S, int)
        for s in range(S):
            best = q[s].max()
            new_actions[s] = next(a for a in range(A)
                                  if q[s, a] >= best - TIE_TOL * max(1.0, abs(best)))
        if actions is not None and np.array_equal(new_actions, actions):
            break
        actions = new_actions
        policy = np.full((S, A), epsilon / A)
        policy[np.arange(S), actions] += 1.0 - epsilon
    return policy, numpy_policy_values(P, R, policy, gamma)
