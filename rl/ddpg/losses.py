"""Pure DDPG/TD3 loss pieces: TD targets, critic and actor losses, target smoothing,
soft target updates. Nothing here knows about networks: values come in as arrays.
The TD target and the soft update are the generic per-transition functions of
:mod:`rl.value_learning`, re-exported here.

With a deterministic policy ``μ_θ``, critics ``Q_φc`` (``c = 1..C``; ``C = 1`` for
DDPG, ``2`` for TD3's twin critics) and their target copies ``μ_θ'``, ``Q_φ'c``:

* target action   ``a' = clip(μ_θ'(s') + clip(ε, −c, c), low, high)``,
  ``ε ~ N(0, σ²)`` (TD3 target policy smoothing; ``σ = 0`` for DDPG), clipped to the
  real action bounds;
* TD target       ``y = r + γ d min_c Q_φ'c(s', a')`` with ``d = 1 − terminated``
  (a truncated episode keeps ``d = 1`` and bootstraps from its final observation);
* critic loss     ``L(φ) = Σ_c mean_b (Q_φc(s_b, a_b) − y_b)²``;
* actor loss      ``J(θ) = −mean_b Q_φ1(s_b, μ_θ(s_b))``, whose gradient is the
  deterministic policy gradient ``−mean_b ∇_a Q(s_b, a)|_{a = μ(s_b)} ∇_θ μ_θ(s_b)``;
  with ``dqda_clipping = c`` each ``∇_a Q`` is first clipped to ``[−c, c]`` (rlax's
  ``dpg_loss``);
* soft update     ``θ' ← τ θ + (1 − τ) θ'`` (``optax.incremental_update``), so after
  ``n`` updates towards fixed ``θ``: ``θ'_n − θ = (1 − τ)ⁿ (θ'_0 − θ)``.

References: D. Silver et al., "Deterministic Policy Gradient Algorithms", ICML 2014;
T. P. Lillicrap et al., "Continuous control with deep reinforcement learning", ICLR
2016; S. Fujimoto, H. van Hoof, D. Meger, "Addressing Function Approximation Error in
Actor-Critic Methods" (TD3), ICML 2018.
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp

from common.checks import check_rank
from rl.value_learning import soft_update, td_target, validate_tau

__all__ = ["critic_loss", "dpg_actor_loss", "scale_action", "smoothed_target_action",
           "soft_update", "td_target", "validate_dqda_clipping", "validate_tau"]


def critic_loss(q: jax.Array, target: jax.Array) -> jax.Array:
    """``Σ_c mean_b (q[c, b] − y[b])²``: the critics' squared TD errors.

    Args:
      q: ``[C, B]`` values of the stored actions under each of ``C`` critics.
      target: ``[B]`` TD targets (treated as constants).

    Returns:
      Scalar loss.
    """
    check_rank(q, "q", 2, "[C, B]")
    check_rank(target, "target", 1, "[B]")
    if q.shape[1] != target.shape[0]:
        raise ValueError(f"q [C, B] and target [B] disagree on B: {q.shape} vs {target.shape}")
    target = jax.lax.stop_gradient(target)
    return jnp.sum(jnp.mean((q - target[None, :]) ** 2, axis=1))


def dpg_actor_loss(q: jax.Array, action: jax.Array | None = None,
                   dqda: jax.Array | None = None, *,
                   dqda_clipping: float | None = None) -> jax.Array:
    """``−mean_b Q(s_b, μ(s_b))``; differentiate through ``μ`` for the DPG.

    Without clipping the gradient flows through ``q`` (pass ``q = Q(s, μ_θ(s))``). With
    ``dqda_clipping = c`` (rlax's ``dpg_loss``) it flows through ``action`` instead, as
    the gradient of rlax's surrogate

        ``mean_b ½ ‖sg(a_b + clip(∂Q/∂a_b, −c, c)) − a_b‖²``,

    so ``∂/∂a_b = −clip(∂Q/∂a_b, −c, c) / B``: the chain rule with each ``∂Q/∂a``
    clipped before it reaches the actor. The value stays ``−mean_b Q`` (the logged
    actor loss keeps its meaning; rlax's own value would be ``½ ‖clip(∂Q/∂a)‖²``).

    Args:
      q: ``[B]`` first-critic values of the policy's actions.
      action: ``[B, A]`` the policy's actions ``μ_θ(s_b)`` (needed with clipping).
      dqda: ``[B, A]`` ``∂Q(s_b, a)/∂a`` at those actions (needed with clipping;
        treated as a constant).
      dqda_clipping: ``c > 0``, or None for the plain DPG (``action``/``dqda`` unused).

    Returns:
      Scalar loss.

    Example:
        >>> q, pullback = jax.vjp(lambda a: critic(obs, a), actor(obs))
        >>> loss = dpg_actor_loss(q, actor(obs), pullback(jnp.ones_like(q))[0],
        ...                       dqda_clipping=1.0)

    Reference: rlax ``dpg_loss`` (its ``dqda_clipping``); Silver et al. 2014.
    """
    check_rank(q, "q", 1, "[B]")
    if dqda_clipping is None:
        return -jnp.mean(q)
    validate_dqda_clipping(dqda_clipping)
    if action is None or dqda is None:
        raise ValueError("dpg_actor_loss with dqda_clipping needs action [B, A] and dqda "
                         "[B, A]")
    check_rank(action, "action", 2, "[B, A]")
    if jnp.shape(dqda) != jnp.shape(action) or action.shape[0] != q.shape[0]:
        raise ValueError(f"dqda must have action's shape [B, A] = {action.shape} with "
                         f"B = {q.shape[0]} as q, got {jnp.shape(dqda)}")
    clipped = jnp.clip(jax.lax.stop_gradient(dqda), -dqda_clipping, dqda_clipping)
    target = jax.lax.stop_gradient(action + clipped)
    surrogate = jnp.mean(0.5 * jnp.sum(jnp.square(target - action), axis=-1))
    return -jnp.mean(jax.lax.stop_gradient(q)) + surrogate - jax.lax.stop_gradient(surrogate)


def validate_dqda_clipping(dqda_clipping) -> None:
    """Raise ``ValueError`` unless ``dqda_clipping`` is None or a finite number > 0."""
    if dqda_clipping is None:
        return
    if (isinstance(dqda_clipping, bool) or not isinstance(dqda_clipping, numbers.Real)
            or not math.isfinite(dqda_clipping) or dqda_clipping <= 0):
        raise ValueError(f"dqda_clipping must be None or a finite number > 0, got "
                         f"{dqda_clipping!r}")


def _bounds(low, high, like: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``low, high [A]`` as arrays of ``like``'s dtype and rank (explicit broadcasting)."""
    shape = (1,) * (jnp.ndim(like) - 1) + (-1,)
    low = jnp.asarray(low, like.dtype).reshape(shape)
    high = jnp.asarray(high, like.dtype).reshape(shape)
    if low.shape[-1] != like.shape[-1] or high.shape[-1] != like.shape[-1]:
        raise ValueError(f"bounds low/high must have shape [{like.shape[-1]}], got "
                         f"{jnp.shape(low)[-1:]} and {jnp.shape(high)[-1:]}")
    return low, high


def scale_action(u: jax.Array, low, high) -> jax.Array:
    """Map ``u ∈ [−1, 1]^A`` affinely onto ``[low, high]``: ``low + (u + 1)(high − low)/2``.

    Args:
      u: ``[..., A]``.
      low, high: ``[A]`` bounds.

    Example:
        >>> scale_action(jnp.array([0.0]), [-2.0], [2.0])
        Array([0.], dtype=float32)
    """
    if jnp.ndim(u) < 1:
        raise ValueError(f"u must have shape [..., A], got {jnp.shape(u)}")
    low, high = _bounds(low, high, u)
    return low + (u + 1.0) * (0.5 * (high - low))


def smoothed_target_action(action: jax.Array, key: jax.Array, noise_std: float,
                           noise_clip: float, low, high) -> jax.Array:
    """TD3 target policy smoothing, clipped to the real action bounds.

    ``a' = clip(a + clip(ε, −c, c), low, high)`` with ``ε ~ N(0, σ²)``; ``σ`` and ``c``
    are in units of the half action range ``(high − low)/2`` (TD3's 0.2 and 0.5 for
    a ``[−1, 1]`` action space).

    Args:
      action: ``[B, A]`` target-policy actions.
      key: PRNG key.
      noise_std: ``σ >= 0`` (``0`` only clips to the bounds).
      noise_clip: ``c > 0``.
      low, high: ``[A]`` action bounds.

    Returns:
      ``[B, A]`` actions inside ``[low, high]``.
    """
    check_rank(action, "action", 2, "[B, A]")
    low, high = _bounds(low, high, action)  # [1, A]
    half = 0.5 * (high - low)
    eps = noise_std * jax.random.normal(key, action.shape, action.dtype)
    eps = jnp.clip(eps, -noise_clip, noise_clip) * half
    return jnp.clip(action + eps, low, high)
