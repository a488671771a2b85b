"""The one environment protocol of ``rl``, its optional capabilities, and their checks.

Every environment is a (hashable) object with two pure, jittable functions, in the
functional style of gymnax::

    obs, state = env.reset(key)
    step = env.step(key, state, action)       # a Step

``step.obs``/``step.state`` are what the agent acts on next. An environment that
resets automatically at the end of an episode returns the new episode's first
observation there, and keeps the true successor in ``step.next_obs``; so a learner
bootstraps from ``next_obs`` with ``discount = 1 − terminated`` (a time-limit
truncation keeps ``discount = 1``), and a Monte Carlo return stops at ``step.done``.

Optional capabilities, checked by :func:`check_environment` with an error naming what
is missing:

* :class:`FiniteEnvironment`: finite state and action spaces, ``num_states`` and
  ``num_actions``; observations are the int32 state index in ``[0, num_states)`` and
  actions int32 indices in ``[0, num_actions)`` (tabular Monte Carlo).
* :class:`StartFromState`: ``reset_to(key, s) -> (obs, state)`` starts an episode in
  a chosen state ``s``; with the first action forced by the learner this gives the
  exploring starts ``(s, a)`` of Monte Carlo control.
* :class:`TabularModel`: ``model() -> (P [S, A, S], R [S, A])``, the transition
  probabilities and expected rewards that dynamic programming needs.

A class attribute ``deterministic = True`` declares that ``step`` ignores its key
(the sampler then skips deriving one per step).

Example:
    >>> world = book_5x5()                              # all four capabilities
    >>> check_environment(world, "env", finite=True, start_from_state=True)
    >>> obs, state = world.reset(jax.random.key(0))
    >>> step = world.step(jax.random.key(1), state, 4)   # step.reward, step.done, ...

Reference: R. T. Lange, gymnax (2022) (the functional reset/step interface);
F. Pardo et al., "Time Limits in Reinforcement Learning", ICML 2018 (termination vs
truncation).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

__all__ = [
    "Environment",
    "FiniteEnvironment",
    "StartFromState",
    "Step",
    "TabularModel",
    "check_environment",
]


class Step(NamedTuple):
    """One environment transition, time limits resolved.

    Attributes:
      obs: the observation to act on next (already reset after an episode end);
        ``[O]`` for continuous control, an int32 state index for a finite environment.
      state: the environment state matching ``obs``.
      reward: scalar reward of the transition.
      terminated: bool scalar, the episode reached a terminal state.
      truncated: bool scalar, the episode hit its time limit.
      next_obs: the successor observation of the transition (before any reset).
      discount: float scalar, ``1 − terminated`` (0 at real terminals, 1 otherwise).
    """

    obs: jax.Array
    state: Any
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    next_obs: jax.Array
    discount: jax.Array

    @property
    def done(self) -> jax.Array:
        """The episode ended (terminated or truncated): the next ``obs`` is a reset."""
        return jnp.logical_or(self.terminated, self.truncated)


@runtime_checkable
class Environment(Protocol):
    """``reset(key) -> (obs, state)`` and ``step(key, state, action) -> Step``."""

    def reset(self, key: jax.Array) -> tuple[jax.Array, Any]: ...

    def step(self, key: jax.Array, state: Any, action: jax.Array) -> Step: ...


@runtime_checkable
class FiniteEnvironment(Environment, Protocol):
    """An :class:`Environment` with ``num_states`` states (observations are their int32
    indices) and ``num_actions`` actions."""

    @property
    def num_states(self) -> int: ...

    @property
    def num_actions(self) -> int: ...


@runtime_checkable
class StartFromState(Protocol):
    """``reset_to(key, s) -> (obs, state)``: start an episode in the chosen state ``s``."""

    def reset_to(self, key: jax.Array, state_index: jax.Array) -> tuple[jax.Array, Any]: ...


@runtime_checkable
class TabularModel(Protocol):
    """``model() -> (P [S, A, S], R [S, A])`` with ``num_states`` and ``num_actions``."""

    @property
    def num_states(self) -> int: ...

    @property
    def num_actions(self) -> int: ...

    def model(self) -> tuple[jax.Array, jax.Array]: ...


def _has_method(env, name: str) -> bool:
    return callable(getattr(env, name, None))


def _count(env, name: str) -> int | None:
    value = getattr(env, name, None)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return None
    return value


def check_environment(env, name: str = "env", *, finite: bool = False,
                      start_from_state: bool = False, tabular: bool = False,
                      hashable: bool = False) -> None:
    """Raise ``ValueError`` naming every protocol part ``env`` lacks.

    Args:
      env: the object to check.
      name: the argument's name for the message.
      finite: require ``num_states`` and ``num_actions`` (integers >= 1).
      start_from_state: require ``reset_to(key, s)``.
      tabular: require ``model()``.
      hashable: require ``hash(env)`` (a static argument of ``jax.jit``).

    Example:
        >>> check_environment("grid", "env")
        ValueError: env must implement the environment protocol: ... missing reset, step
    """
    missing = [m for m in ("reset", "step") if not _has_method(env, m)]
    if finite:
        missing += [f"{a} (an integer >= 1)" for a in ("num_states", "num_actions")
                    if _count(env, a) is None]
    if start_from_state and not _has_method(env, "reset_to"):
        missing.append("reset_to(key, s) (starting from a chosen state)")
    if tabular and not _has_method(env, "model"):
        missing.append("model() -> (P, R)")
    if missing:
        raise ValueError(
            f"{name} must implement the environment protocol (reset(key) -> (obs, state), "
            f"step(key, state, action) -> Step) with what this function needs; "
            f"{type(env).__name__} is missing: {', '.join(missing)}")
    if hashable:
        try:
            hash(env)
        except TypeError:
            raise ValueError(f"{name} must be hashable (it is a static argument of jax.jit); "
                             f"{type(env).__name__} is not") from None
