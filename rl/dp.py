"""Dynamic programming on a tabular model: Bellman evaluation, value and policy iteration.

All functions take the model of a finite MDP,

    P[s, a, s']  transition probabilities  [S, A, S]
    R[s, a]      expected immediate reward [S, A]

and a discount ``gamma ∈ [0, 1)``. With ``q(s, a) = R[s, a] + γ Σ_s' P[s, a, s'] v(s')``:

* ``policy_evaluation``: ``v_π = r_π + γ P_π v_π`` solved in closed form,
  ``v_π = (I − γ P_π)⁻¹ r_π``, or by the iteration ``v_{k+1} = r_π + γ P_π v_k``.
* ``value_iteration``: ``v_{k+1} = max_a q_k(s, a)`` (Bellman optimality operator).
* ``policy_iteration``: evaluate ``π_k`` exactly, improve greedily, until stable.
* ``truncated_policy_iteration``: improve greedily, then ``j`` evaluation sweeps
  from the previous values (``j = 1`` is value iteration, ``j → ∞`` policy iteration).
* ``epsilon_greedy_policy_iteration``: policy iteration within the ε-greedy
  policies, ``π_{k+1} = ε-greedy(q_{π_k})``: the best ε-greedy policy, the DP
  reference of Monte Carlo ε-greedy control.
* ``evaluate_policies``: exact values of a stack of policies ``[..., S, A]``.

Each returns a :class:`DPResult` whose first field is the state values ``[S]``,
then the greedy policy ``[S, A]`` and the iteration history. Greedy policies break
ties deterministically toward the first action (for the grid world: up, right,
down, left, stay). Loops are ``lax.while_loop``; every function jit-compiles and
vmaps (over ``gamma``, rewards, policies, ...).

Bad values follow :mod:`common.checks`: shapes are always checked; values (``gamma``
in ``[0, 1)``, ``ε`` in ``[0, 1]``, rows of ``P`` and of policies summing to 1, finite
``R`` and ``v0``, ``tol > 0``) raise ``ValueError`` when concrete and, when traced
(inside ``jit``/``vmap``), poison the result: NaN values and policies, −1 counts and
``DPResult.valid = False``.

Example:
    >>> from rl.envs.gridworld import book_5x5
    >>> P, R = book_5x5().model()
    >>> result = value_iteration(P, R, gamma=0.9)
    >>> round(float(result.values[17]), 4)       # the target: 1 / (1 - 0.9)
    10.0

Reference: S. Zhao, *Mathematical Foundations of Reinforcement Learning* (2025),
chapters 2 (Bellman equation), 3 (Bellman optimality equation) and 4 (value
iteration and policy iteration); R. Bellman, *Dynamic Programming* (1957);
R. A. Howard, *Dynamic Programming and Markov Processes* (1960).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from common.checks import (
    check_finite,
    check_int,
    concrete_value,
    mark_valid,
    poison,
    shape_of,
    shape_str,
)

# Greedy ties: actions within TIE_TOL * max(1, |max q|) of the best count as tied,
# so that values equal up to rounding pick the first action, not a rounding winner.
TIE_TOL = 1e-5
_SUM_TOL = 1e-5


class DPResult(NamedTuple):
    """Result of a dynamic-programming routine.

    Attributes:
      values: ``[S]`` state values.
      policy: ``[S, A]`` greedy (one-hot) policy with respect to ``values``.
      history: ``[K + 1, S]`` values after ``k = 0..K`` iterations (``K`` =
        ``max_iters``); rows after ``num_iterations`` repeat the final values.
        ``[1, S]`` for the closed-form evaluation.
      num_iterations: int32 scalar, iterations performed.
      residual: scalar Bellman residual ``‖T v − v‖∞`` of the returned values
        (``T = T_π`` for evaluation, the optimality operator otherwise).
      action_values: ``[S, A]`` the action values ``q`` computed from ``values``.
      valid: bool scalar, False when a value check failed on traced input (``gamma``
        outside ``[0, 1)``, rows of ``P`` or of a policy not summing to 1, non-finite
        ``R`` or ``v0``, ...); every other field is then poisoned (NaN, counts −1).
    """

    values: jax.Array
    policy: jax.Array
    history: jax.Array
    num_iterations: jax.Array
    residual: jax.Array
    action_values: jax.Array
    valid: jax.Array


# ---------------------------------------------------------------------- checks
#
# Each condition on values is written once, as a boolean that also works on traced
# arrays (``*_ok``). The ``check_*`` functions raise on concrete values that fail it;
# the jitted routines poison their result with it (common.checks' policy: NaN values
# and policies, -1 counts, ``valid = False``), so jit and vmap never return plausible
# numbers for bad input.


def gamma_ok(gamma) -> jax.Array:
    """``0 <= γ < 1`` (False for NaN)."""
    return (gamma >= 0.0) & (gamma < 1.0)


def epsilon_ok(epsilon) -> jax.Array:
    """``0 <= ε <= 1`` (False for NaN)."""
    return (epsilon >= 0.0) & (epsilon <= 1.0)


def policy_ok(policy) -> jax.Array:
    """Every row ``[..., A]`` is non-negative and sums to 1 within 1e-5 (False for NaN);
    also the condition on the rows ``P[s, a, :]`` of a transition model."""
    sums = jnp.sum(policy, axis=-1)
    return jnp.all(policy >= 0) & jnp.all(jnp.abs(sums - 1.0) <= _SUM_TOL)


def model_ok(P, R) -> jax.Array:
    """``P`` holds probabilities (:func:`policy_ok` on its rows) and ``R`` is finite."""
    return policy_ok(P) & jnp.all(jnp.isfinite(R))


def _holds(condition, *values) -> bool:
    """``condition(*values)`` on concrete values, evaluated now (also while tracing,
    where the values are constants closed over by the traced function)."""
    with jax.ensure_compile_time_eval():
        return bool(condition(*values))


def _check_scalar(value, name: str):
    """``value`` as a numpy array when concrete (None when traced); raise unless it is a
    scalar (a static check, so it holds under jit too)."""
    if jnp.ndim(value) != 0:
        raise ValueError(f"{name} must be a scalar, got shape {shape_str(shape_of(value))}")
    return concrete_value(value)


def check_gamma(gamma) -> None:
    """Raise ``ValueError`` unless ``gamma`` is a scalar and, when concrete, in ``[0, 1)``."""
    g = _check_scalar(gamma, "gamma")
    if g is not None and not _holds(gamma_ok, g):
        raise ValueError(f"gamma must be in [0, 1), got {float(g)}")


def check_model(P, R) -> tuple[jax.Array, jax.Array]:
    """Check ``P [S, A, S]`` and ``R [S, A]``; returns them as float arrays.

    Shapes always; when concrete, that ``P`` holds probabilities and ``R`` is finite.
    """
    P = jnp.asarray(P)
    R = jnp.asarray(R)
    if P.ndim != 3 or P.shape[0] != P.shape[2]:
        raise ValueError(f"P must have shape [S, A, S], got {P.shape}")
    if R.shape != P.shape[:2]:
        raise ValueError(f"R must have shape [S, A] = {P.shape[:2]} to match P, got {R.shape}")
    dtype = jnp.result_type(P.dtype, R.dtype, float)
    P, R = P.astype(dtype), R.astype(dtype)
    p = concrete_value(P)
    if p is not None and p.size and not _holds(policy_ok, p):
        sums = p.sum(-1)
        worst = sums.flat[np.nan_to_num(np.abs(sums - 1), nan=np.inf).argmax()]
        raise ValueError("P must hold probabilities: P[s, a, :] >= 0 summing to 1 "
                         f"(worst row sum {worst})")
    check_finite(R, "R")
    return P, R


def check_policy(policy, num_states: int, num_actions: int, name: str = "policy") -> jax.Array:
    """Check a stochastic policy ``[S, A]`` (non-negative rows summing to 1)."""
    policy = jnp.asarray(policy)
    if policy.shape != (num_states, num_actions):
        raise ValueError(f"{name} must have shape [S, A] = ({num_states}, {num_actions}), "
                         f"got {policy.shape}")
    policy = policy.astype(jnp.result_type(policy.dtype, float))
    p = concrete_value(policy)
    if p is not None and p.size and not _holds(policy_ok, p):
        sums = p.sum(-1)
        bad = np.flatnonzero(~(np.abs(sums - 1.0) <= _SUM_TOL))
        if bad.size:
            raise ValueError(f"{name}: every row must sum to 1; row {bad[0]} sums to "
                             f"{sums[bad[0]]}")
        raise ValueError(f"{name}: probabilities must be >= 0")
    return policy


def check_epsilon(epsilon) -> None:
    """Raise ``ValueError`` unless ``epsilon`` is a scalar and, when concrete, in ``[0, 1]``."""
    e = _check_scalar(epsilon, "epsilon")
    if e is not None and not _holds(epsilon_ok, e):
        raise ValueError(f"epsilon must be in [0, 1], got {float(e)}")


def _check_tol(tol) -> None:
    t = _check_scalar(tol, "tol")
    if t is not None and not float(t) > 0:
        raise ValueError(f"tol must be > 0, got {float(t)}")


def _iteration_ok(tol, v0) -> jax.Array:
    """The iterative routines' own conditions: ``tol > 0`` and finite ``v0``."""
    return (tol > 0) & jnp.all(jnp.isfinite(v0))


def _initial_values(v0, num_states: int, dtype) -> jax.Array:
    if v0 is None:
        return jnp.zeros(num_states, dtype)
    v0 = jnp.asarray(v0, dtype)
    if v0.shape != (num_states,):
        raise ValueError(f"v0 must have shape [S] = ({num_states},), got {v0.shape}")
    check_finite(v0, "v0")
    return v0


# ---------------------------------------------------------------------- building blocks


def action_values(P, R, values, gamma) -> jax.Array:
    """``q(s, a) = R[s, a] + γ Σ_s' P[s, a, s'] v(s')``.

    Args:
      P: ``[S, A, S]`` transition probabilities.
      R: ``[S, A]`` expected rewards.
      values: ``[S]`` state values.
      gamma: discount.

    Returns:
      ``[S, A]`` action values.
    """
    return R + gamma * jnp.einsum("sat,t->sa", P, values)


def greedy_policy(q, tie_tol: float = TIE_TOL) -> jax.Array:
    """The one-hot greedy policy ``[S, A]`` of action values ``q`` ``[S, A]``.

    ``π(s) = the first a with q(s, a) >= max_a q(s, ·) − tie_tol · max(1, |max q|)``,
    so exact and rounding-level ties go to the first action.

    Example:
        >>> greedy_policy(jnp.array([[0.0, 1.0, 1.0]]))
        Array([[0., 1., 0.]], dtype=float32)
    """
    q = jnp.asarray(q)
    if q.ndim != 2:
        raise ValueError(f"q must have shape [S, A], got {q.shape}")
    return _greedy_policy_jit(q, tie_tol)


@jax.jit
def _greedy_policy_jit(q, tie_tol):
    best = jnp.max(q, axis=-1, keepdims=True)  # [S, 1]
    threshold = best - tie_tol * jnp.maximum(1.0, jnp.abs(best))
    actions = jnp.argmax(q >= threshold, axis=-1)  # first True
    return jax.nn.one_hot(actions, q.shape[-1], dtype=jnp.result_type(q.dtype, float))


def epsilon_greedy_policy(q, epsilon, tie_tol: float = TIE_TOL) -> jax.Array:
    """The ε-greedy policy ``[S, A]`` of action values ``q`` ``[S, A]``.

    ``π(a|s) = 1 − ε(|A| − 1)/|A|`` for the greedy action (first on ties) and
    ``ε/|A|`` for every other action. ``ε = 0`` is greedy, ``ε = 1`` uniform.

    Example:
        >>> epsilon_greedy_policy(jnp.array([[0.0, 1.0]]), 0.5)
        Array([[0.25, 0.75]], dtype=float32)
    """
    q = jnp.asarray(q)
    check_epsilon(epsilon)
    return poison(_epsilon_greedy_jit(greedy_policy(q, tie_tol), epsilon), epsilon_ok(epsilon))


@jax.jit
def _epsilon_greedy_jit(greedy, epsilon):
    return (1.0 - epsilon) * greedy + epsilon / greedy.shape[-1]


def _policy_model(P, R, policy):
    P_pi = jnp.einsum("sa,sat->st", policy, P)  # [S, S]
    r_pi = jnp.sum(policy * R, axis=-1)  # [S]
    return P_pi, r_pi


def _solve(P, R, policy, gamma):
    P_pi, r_pi = _policy_model(P, R, policy)
    eye = jnp.eye(P.shape[0], dtype=P.dtype)
    return jnp.linalg.solve(eye - gamma * P_pi, r_pi)


def _finish(P, R, values, gamma, history, k, ok, policy=None):
    """DPResult with greedy policy and the residual of T_π (policy given) or T*, poisoned
    unless ``ok`` (the value checks, computed on device) holds."""
    q = action_values(P, R, values, gamma)
    if policy is None:
        residual = jnp.max(jnp.abs(jnp.max(q, axis=-1) - values))
    else:
        residual = jnp.max(jnp.abs(jnp.sum(policy * q, axis=-1) - values))
    result = DPResult(values, greedy_policy(q), history, jnp.asarray(k, jnp.int32), residual,
                      q, jnp.bool_(True))
    return mark_valid(result, ok & gamma_ok(gamma) & model_ok(P, R))


def _iterate(update, v0, tol, max_iters):
    """Run ``v ← update(v)`` until ``‖Δv‖∞ < tol`` or ``max_iters``; returns (v, history, k)."""
    S = v0.shape[0]
    history = jnp.zeros((max_iters + 1, S), v0.dtype).at[0].set(v0)

    def cond(carry):
        k, _, delta, _ = carry
        return (k < max_iters) & (delta >= tol)

    def body(carry):
        k, v, _, history = carry
        v_new = update(v)
        delta = jnp.max(jnp.abs(v_new - v))
        return k + 1, v_new, delta, history.at[k + 1].set(v_new)

    init = (jnp.int32(0), v0, jnp.asarray(jnp.inf, v0.dtype), history)
    k, v, _, history = jax.lax.while_loop(cond, body, init)
    rows = jnp.arange(max_iters + 1)[:, None]  # [K + 1, 1]
    history = jnp.where(rows <= k, history, v[None, :])
    return v, history, k


# ---------------------------------------------------------------------- evaluation


def _policy_evaluation(P, R, policy, gamma, v0, tol, method, max_iters):
    ok = policy_ok(policy)
    if method == "solve":
        v = _solve(P, R, policy, gamma)
        return _finish(P, R, v, gamma, v[None, :], 0, ok, policy)
    P_pi, r_pi = _policy_model(P, R, policy)
    v, history, k = _iterate(lambda v: r_pi + gamma * P_pi @ v, v0, tol, max_iters)
    return _finish(P, R, v, gamma, history, k, ok & _iteration_ok(tol, v0), policy)


_policy_evaluation_jit = jax.jit(_policy_evaluation, static_argnames=("method", "max_iters"))


def policy_evaluation(P, R, policy, gamma, *, method: str = "solve", tol: float = 1e-6,
                      max_iters: int = 1000, v0=None) -> DPResult:
    """State values of a policy from the Bellman equation ``v_π = r_π + γ P_π v_π``.

    ``r_π(s) = Σ_a π(a|s) R[s, a]`` and ``P_π[s, s'] = Σ_a π(a|s) P[s, a, s']``.
    ``method="solve"`` returns the closed form ``(I − γ P_π)⁻¹ r_π`` (one linear
    solve); ``method="iterative"`` iterates ``v_{k+1} = r_π + γ P_π v_k`` from ``v0``
    until ``‖v_{k+1} − v_k‖∞ < tol`` or ``max_iters``.

    Args:
      P: ``[S, A, S]`` transition probabilities.
      R: ``[S, A]`` expected immediate rewards.
      policy: ``[S, A]`` action probabilities, rows summing to 1.
      gamma: discount in ``[0, 1)``.
      method: ``"solve"`` or ``"iterative"``.
      tol: stopping threshold of the iterative method.
      max_iters: iteration cap of the iterative method (static).
      v0: ``[S]`` initial values of the iterative method (default zeros).

    Returns:
      :class:`DPResult`: ``values`` ``v_π`` ``[S]``, ``policy`` greedy with respect to
      ``q_π`` ``[S, A]`` (one policy-improvement step), ``history`` ``[K + 1, S]``
      (``[1, S]`` for "solve"), ``num_iterations``, ``residual`` ``‖T_π v − v‖∞``
      and ``action_values`` ``q_π`` ``[S, A]``.

    Raises:
      ValueError: wrong shapes, rows of ``policy`` not summing to 1, ``gamma``
        outside ``[0, 1)``, an unknown ``method``.

    Example:
        >>> P, R = book_2x2().model()
        >>> pi = one_hot_policy([2, 2, 1, 4])   # down, down, right, stay
        >>> policy_evaluation(P, R, pi, 0.9).values     # [9, 10, 10, 10]

    Reference: Zhao (2025), §2.7 (closed-form and iterative solutions).
    """
    if method not in ("solve", "iterative"):
        raise ValueError(f"method must be 'solve' or 'iterative', got {method!r}")
    P, R = check_model(P, R)
    S, A = R.shape
    policy = check_policy(policy, S, A).astype(P.dtype)
    check_gamma(gamma)
    _check_tol(tol)
    max_iters = check_int(max_iters, "max_iters")
    v0 = _initial_values(v0, S, P.dtype)
    return _policy_evaluation_jit(P, R, policy, gamma, v0, tol, method=method,
                                  max_iters=max_iters)


# ---------------------------------------------------------------------- control


def _value_iteration(P, R, gamma, v0, tol, max_iters):
    update = lambda v: jnp.max(action_values(P, R, v, gamma), axis=-1)
    v, history, k = _iterate(update, v0, tol, max_iters)
    return _finish(P, R, v, gamma, history, k, _iteration_ok(tol, v0))


_value_iteration_jit = jax.jit(_value_iteration, static_argnames=("max_iters",))


def value_iteration(P, R, gamma, *, tol: float = 1e-6, max_iters: int = 1000,
                    v0=None) -> DPResult:
    """Value iteration: ``v_{k+1}(s) = max_a [R[s, a] + γ Σ_s' P[s, a, s'] v_k(s')]``.

    A contraction with modulus ``γ``, so ``v_k → v*`` from any ``v0``; stops when
    ``‖v_{k+1} − v_k‖∞ < tol`` (then ``‖v_{k+1} − v*‖∞ < γ tol / (1 − γ)``) or after
    ``max_iters`` iterations.

    Args:
      P: ``[S, A, S]`` transition probabilities.
      R: ``[S, A]`` expected immediate rewards.
      gamma: discount in ``[0, 1)``.
      tol: stopping threshold on the sup-norm change.
      max_iters: iteration cap (static; also the history length).
      v0: ``[S]`` initial values (default zeros).

    Returns:
      :class:`DPResult`: optimal ``values`` ``[S]``, greedy ``policy`` ``[S, A]``,
      ``history`` ``[max_iters + 1, S]`` of ``v_k``, ``num_iterations``,
      ``residual`` ``‖T* v − v‖∞``, ``action_values`` ``[S, A]``.

    Example:
        >>> P, R = book_5x5().model()
        >>> value_iteration(P, R, 0.9).values.reshape(5, 5)

    Reference: Zhao (2025), §4.1; Bellman (1957).
    """
    P, R = check_model(P, R)
    check_gamma(gamma)
    _check_tol(tol)
    max_iters = check_int(max_iters, "max_iters")
    v0 = _initial_values(v0, R.shape[0], P.dtype)
    return _value_iteration_jit(P, R, gamma, v0, tol, max_iters=max_iters)


def _improve_until_stable(P, R, gamma, policy0, improve, max_iters):
    """``π ← improve(q_π)`` with exact evaluation until ``π`` repeats or ``max_iters``.

    Returns ``(policy, values, history, k)``; ``history[k] = v_{π_k}`` and rows after
    ``k`` repeat the final values.
    """
    S = P.shape[0]
    v0 = _solve(P, R, policy0, gamma)
    history = jnp.zeros((max_iters + 1, S), P.dtype).at[0].set(v0)

    def cond(carry):
        k, _, _, stable, _ = carry
        return (k < max_iters) & ~stable

    def body(carry):
        k, policy, v, _, history = carry
        new_policy = improve(action_values(P, R, v, gamma))
        v_new = _solve(P, R, new_policy, gamma)  # equal to v once stable
        stable = jnp.all(new_policy == policy)
        return k + 1, new_policy, v_new, stable, history.at[k + 1].set(v_new)

    init = (jnp.int32(0), policy0, v0, jnp.bool_(False), history)
    k, policy, v, _, history = jax.lax.while_loop(cond, body, init)
    rows = jnp.arange(max_iters + 1)[:, None]
    history = jnp.where(rows <= k, history, v[None, :])
    return policy, v, history, k


def _policy_iteration(P, R, gamma, policy0, max_iters):
    _, v, history, k = _improve_until_stable(P, R, gamma, policy0, greedy_policy, max_iters)
    return _finish(P, R, v, gamma, history, k, policy_ok(policy0))


_policy_iteration_jit = jax.jit(_policy_iteration, static_argnames=("max_iters",))


def policy_iteration(P, R, gamma, *, policy0=None, max_iters: int = 100) -> DPResult:
    """Policy iteration: ``v_{π_k}`` by a linear solve, then ``π_{k+1} = greedy(q_{π_k})``.

    Stops when the greedy policy no longer changes (ties go to the first action, so
    it terminates) or after ``max_iters`` improvements. ``v_{π_k}`` increases
    monotonically to ``v*``.

    Args:
      P: ``[S, A, S]`` transition probabilities.
      R: ``[S, A]`` expected immediate rewards.
      gamma: discount in ``[0, 1)``.
      policy0: ``[S, A]`` initial policy (default uniform).
      max_iters: cap on improvement steps (static; also the history length).

    Returns:
      :class:`DPResult`: ``values`` ``v*`` ``[S]``, greedy ``policy`` ``[S, A]``,
      ``history`` ``[max_iters + 1, S]`` with ``history[k] = v_{π_k}``,
      ``num_iterations`` (improvement steps, the last one confirming stability),
      ``residual`` and ``action_values``.

    Example:
        >>> P, R = book_5x5(r_forbidden=-10.0).model()
        >>> policy_iteration(P, R, 0.9).policy.argmax(-1).reshape(5, 5)

    Reference: Zhao (2025), §4.2; Howard (1960).
    """
    P, R = check_model(P, R)
    S, A = R.shape
    check_gamma(gamma)
    max_iters = check_int(max_iters, "max_iters")
    if policy0 is None:
        policy0 = jnp.full((S, A), 1.0 / A, P.dtype)
    policy0 = check_policy(policy0, S, A, "policy0").astype(P.dtype)
    return _policy_iteration_jit(P, R, gamma, policy0, max_iters=max_iters)


def _truncated_policy_iteration(P, R, gamma, v0, num_eval_steps, tol, max_iters):
    def update(v):
        policy = greedy_policy(action_values(P, R, v, gamma))
        P_pi, r_pi = _policy_model(P, R, policy)
        return jax.lax.fori_loop(0, num_eval_steps, lambda _, u: r_pi + gamma * P_pi @ u, v)

    v, history, k = _iterate(update, v0, tol, max_iters)
    return _finish(P, R, v, gamma, history, k, _iteration_ok(tol, v0) & (num_eval_steps >= 1))


_truncated_policy_iteration_jit = jax.jit(_truncated_policy_iteration,
                                          static_argnames=("max_iters",))


def truncated_policy_iteration(P, R, gamma, *, num_eval_steps: int = 5, tol: float = 1e-6,
                               max_iters: int = 1000, v0=None) -> DPResult:
    """Truncated policy iteration: greedy improvement, then ``j`` evaluation sweeps.

    ``π_{k+1} = greedy(q(v_k))`` and ``v_{k+1} = T_{π_{k+1}}^j v_k`` with
    ``T_π v = r_π + γ P_π v``. ``j = 1`` is value iteration; ``j → ∞`` is policy
    iteration. Stops when ``‖v_{k+1} − v_k‖∞ < tol`` or after ``max_iters``.

    Args:
      P: ``[S, A, S]`` transition probabilities.
      R: ``[S, A]`` expected immediate rewards.
      gamma: discount in ``[0, 1)``.
      num_eval_steps: ``j``, evaluation sweeps per iteration (>= 1).
      tol: stopping threshold on the sup-norm change.
      max_iters: iteration cap (static; also the history length).
      v0: ``[S]`` initial values (default zeros).

    Returns:
      :class:`DPResult` as for :func:`value_iteration`.

    Example:
        >>> P, R = book_5x5().model()
        >>> truncated_policy_iteration(P, R, 0.9, num_eval_steps=3).num_iterations

    Reference: Zhao (2025), §4.3 (truncated policy iteration); Puterman & Shin
    (1978), "modified policy iteration".
    """
    P, R = check_model(P, R)
    check_gamma(gamma)
    _check_tol(tol)
    max_iters = check_int(max_iters, "max_iters")
    steps = concrete_value(num_eval_steps)
    if steps is not None and (steps.shape != () or int(steps) < 1 or int(steps) != steps):
        raise ValueError(f"num_eval_steps must be an integer >= 1, got {num_eval_steps!r}")
    v0 = _initial_values(v0, R.shape[0], P.dtype)
    return _truncated_policy_iteration_jit(P, R, gamma, v0, num_eval_steps, tol,
                                           max_iters=max_iters)


def evaluate_policies(P, R, policies, gamma) -> jax.Array:
    """Exact values ``[..., S]`` of a stack of policies ``[..., S, A]`` (one vmapped
    :func:`policy_evaluation` with ``method="solve"``).

    Args:
      P: ``[S, A, S]`` transition probabilities.
      R: ``[S, A]`` expected immediate rewards.
      policies: ``[..., S, A]`` action probabilities (any number of leading axes).
      gamma: discount in ``[0, 1)``.

    Returns:
      ``[..., S]`` the values ``v_π`` of every policy.

    Example:
        >>> P, R = book_2x2().model()
        >>> evaluate_policies(P, R, jnp.full((3, 4, 5), 0.2), 0.9).shape
        (3, 4)
    """
    policies = jnp.asarray(policies)
    if policies.ndim < 2:
        raise ValueError(f"policies must have shape [..., S, A], got shape {policies.shape}")
    flat = policies.reshape(-1, *policies.shape[-2:])
    values = jax.vmap(lambda p: policy_evaluation(P, R, p, gamma).values)(flat)
    return values.reshape(*policies.shape[:-1])


def _epsilon_greedy_policy_iteration(P, R, gamma, epsilon, max_iters):
    S, A = R.shape
    policy0 = jnp.full((S, A), 1.0 / A, P.dtype)
    improve = lambda q: _epsilon_greedy_jit(greedy_policy(q), epsilon)
    policy, v, history, k = _improve_until_stable(P, R, gamma, policy0, improve, max_iters)
    result = _finish(P, R, v, gamma, history, k, epsilon_ok(epsilon), policy)
    return result._replace(policy=poison(policy, result.valid))  # the ε-greedy policy


_epsilon_greedy_policy_iteration_jit = jax.jit(_epsilon_greedy_policy_iteration,
                                               static_argnames=("max_iters",))


def epsilon_greedy_policy_iteration(P, R, gamma, epsilon, *, max_iters: int = 100
                                    ) -> DPResult:
    """The best ε-greedy policy, by policy iteration within the ε-greedy policies.

    From the uniform policy, ``v_{π_k}`` by a linear solve, then
    ``π_{k+1} = ε-greedy(q_{π_k})`` (greedy action ``1 − ε(|A| − 1)/|A|``, others
    ``ε/|A|``), until the policy repeats or ``max_iters`` improvements. By the policy
    improvement theorem within the ε-soft policies, it converges to the optimal
    ε-greedy policy; ``ε = 0`` is :func:`policy_iteration` from the uniform policy.
    This is the exact reference that Monte Carlo ε-greedy control approaches.

    Args:
      P: ``[S, A, S]`` transition probabilities.
      R: ``[S, A]`` expected immediate rewards.
      gamma: discount in ``[0, 1)`` (may be traced).
      epsilon: exploration rate in ``[0, 1]`` (may be traced, e.g. vmapped).
      max_iters: cap on improvement steps (static; also the history length).

    Returns:
      :class:`DPResult` whose ``policy`` is the final **ε-greedy** policy ``[S, A]``,
      ``values`` its values ``[S]``, ``history[k] = v_{π_k}`` ``[max_iters + 1, S]``,
      ``num_iterations`` the improvement steps (the last one confirming stability),
      ``residual`` ``‖T_π v − v‖∞`` and ``action_values`` ``q_π`` ``[S, A]``.

    Raises:
      ValueError: wrong shapes, ``gamma`` outside ``[0, 1)``, ``epsilon`` outside
        ``[0, 1]``, ``max_iters < 1``.

    Example:
        >>> P, R = book_5x5(r_forbidden=-10.0).model()
        >>> epsilon_greedy_policy_iteration(P, R, 0.9, 0.1).values[17]

    Reference: Zhao (2025), §5.4 (optimality within ε-greedy policies); Sutton &
    Barto (2018), §5.4 (policy improvement for ε-soft policies).
    """
    P, R = check_model(P, R)
    check_gamma(gamma)
    check_epsilon(epsilon)
    max_iters = check_int(max_iters, "max_iters")
    return _epsilon_greedy_policy_iteration_jit(P, R, gamma, epsilon, max_iters=max_iters)
