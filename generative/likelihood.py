"""Exact log-likelihood along the probability-flow ODE, and bits per dimension.

The probability-flow ODE ``dx/dt = f̃(x, t) = f(x, t) − ½ g(t)² s(x, t)`` is a
continuous normalising flow, so by the instantaneous change of variables

    log p_0(x(0)) = log p_T(x(T)) + ∫₀ᵀ ∇·f̃(x(t), t) dt.

:func:`log_likelihood` integrates ``(x, ∫∇·f̃)`` jointly from ``eps`` to ``T`` with the
adaptive RK45 of :mod:`generative.ode`. The divergence is either exact (``D``
Jacobian-vector products, for low dimensions) or Skilling–Hutchinson's unbiased
``E_v[vᵀ (∂f̃/∂x) v]`` with one Rademacher or Gaussian probe ``v`` per sample, held
fixed along the trajectory (FFJORD; score_sde's ``likelihood.py``).

For discrete data (``n_bins`` levels), uniform dequantisation ``u = (k + U(0,1)) /
n_bins`` gives ``log P(k) ≥ E_U[log p_u(u)] − D log n_bins``; :func:`bits_per_dim`
turns a model log-density into bits per dimension including that offset and the
log-Jacobian of any affine map from ``[0, 1]`` to the model's space (score_sde's
``offset = 7 − inverse_scaler(−1)`` is the 256-level, ``[−1, 1]`` case).

Example:
    >>> logp, z, nfe = log_likelihood(key, score_fn, VPSDE(), x, divergence="exact")
    >>> bpd = bits_per_dim(logp, num_dims=2)

Papers: Song et al. 2021, appendix D.2; Chen et al. 2018, "Neural Ordinary Differential
Equations"; Grathwohl et al. 2019, "FFJORD"; Hutchinson 1989; Theis, van den Oord &
Bethge 2016, "A note on the evaluation of generative models" (dequantisation).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from common.checks import check_int, check_positive, shape_str
from generative.checks import check_batch, check_eps, checked_score_fn
from generative.ode import odeint_rk45
from generative.sde import SDE

__all__ = ["DIVERGENCES", "bits_per_dim", "divergence_fn", "log_likelihood",
           "uniform_dequantize"]

DIVERGENCES = ("exact", "hutchinson_rademacher", "hutchinson_gaussian")


def divergence_fn(fn: Callable[[jax.Array], jax.Array], x: jax.Array, *,
                  method: str = "exact", probe: jax.Array | None = None) -> jax.Array:
    """Per-sample divergence ``∇ₓ·fn(x)`` of a per-sample map ``fn: [B, ...] -> [B, ...]``.

    * ``exact``: ``Σ_d (J e_d)_d`` with ``D`` forward-mode products (vmapped).
    * ``hutchinson_*``: ``vᵀ J v`` with the given ``probe v`` (one product).

    Args:
      fn: map acting independently on each sample.
      x: ``[B, ...]`` points.
      method: one of ``DIVERGENCES``.
      probe: ``[B, ...]`` probe for the Hutchinson methods.

    Returns:
      ``[B]`` divergences (estimates for Hutchinson).

    Example:
        >>> divergence_fn(lambda y: 2.0 * y, jnp.ones((3, 4)))   # [8, 8, 8]
    """
    B = x.shape[0]
    if method == "exact":
        dims = math.prod(x.shape[1:])
        eye = jnp.eye(dims, dtype=x.dtype)  # [D, D]
        basis = jnp.broadcast_to(eye[:, None, :], (dims, B, dims)).reshape(dims, *x.shape)

        def column(e):  # e [B, ...]: the same unit vector for every sample
            return jax.jvp(fn, (x,), (e,))[1].reshape(B, dims)

        jac_cols = jax.vmap(column)(basis)  # [D, B, D]: jac_cols[d, b] = J_b e_d
        return jnp.einsum("dbd->b", jac_cols)
    if method in ("hutchinson_rademacher", "hutchinson_gaussian"):
        if probe is None or probe.shape != x.shape:
            raise ValueError(f"probe must have x's shape {shape_str(x.shape)} for {method}, "
                             f"got {None if probe is None else shape_str(probe.shape)}")
        jv = jax.jvp(fn, (x,), (probe,))[1]
        return jnp.sum((probe * jv).reshape(B, -1), axis=-1)
    raise ValueError(f"unknown divergence method {method!r}; valid: {', '.join(DIVERGENCES)}")


def log_likelihood(key: jax.Array, score_fn: Callable, sde: SDE, x: jax.Array, *,
                   divergence: str = "hutchinson_rademacher", rtol: float = 1e-5,
                   atol: float = 1e-5, eps: float = 1e-5,
                   prior_logp: Callable[[jax.Array], jax.Array] | None = None,
                   max_steps: int = 4096) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Log-density of ``x`` under the probability-flow model at time ``eps``.

    Integrates ``d/dt (x, Δ) = (f̃(x, t), ∇·f̃(x, t))`` from ``(x, 0)`` at ``t = eps`` to
    ``T`` and returns ``log p_T(z) + Δ``. Jittable; the Hutchinson probe is drawn
    from ``key`` once.

    Args:
      key: PRNG key (Hutchinson probe).
      score_fn: ``score_fn(x [B, ...], t [B]) -> [B, ...]``.
      sde: the forward SDE.
      x: ``[B, ...]`` data (already in the model's space).
      divergence: ``"exact"`` (``D`` JVPs per evaluation; low dimensions),
        ``"hutchinson_rademacher"`` or ``"hutchinson_gaussian"``.
      rtol: solver relative tolerance.
      atol: solver absolute tolerance.
      eps: start time of the flow, in ``[0, T)``; ``> 0`` where the marginal std
        vanishes at ``t = 0`` (VP, sub-VP; :func:`generative.checks.check_eps`).
      prior_logp: ``z [B, ...] -> [B]``; defaults to ``sde.prior_logp``.
      max_steps: solver step cap.

    Returns:
      ``(logp [B], z [B, ...], nfe)``: log-density in nats, the latent ``x(T)`` and
      the number of drift evaluations (each one score evaluation plus its JVPs).

    Example:
        >>> logp, z, nfe = jax.jit(lambda k, x: log_likelihood(k, score_fn, VESDE(), x))(key, x)

    Paper: Song et al. 2021, appendix D.2, eq. (39)–(40).
    """
    check_batch(x)
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; valid: {', '.join(DIVERGENCES)}")
    eps = check_eps(eps, sde)
    score_fn = checked_score_fn(score_fn)
    B = x.shape[0]
    if divergence == "hutchinson_rademacher":
        probe = jax.random.rademacher(key, x.shape, x.dtype)
    elif divergence == "hutchinson_gaussian":
        probe = jax.random.normal(key, x.shape, x.dtype)
    else:
        probe = None
    rsde = sde.reverse(score_fn, probability_flow=True)

    def ode(t, state):
        y, _ = state
        tt = jnp.full((B,), t, y.dtype)
        drift_of = lambda v: rsde.sde(v, tt)[0]
        drift = drift_of(y)
        return drift, divergence_fn(drift_of, y, method=divergence, probe=probe)

    init = (x, jnp.zeros((B,), x.dtype))
    (z, delta), stats = odeint_rk45(ode, init, eps, sde.T, rtol=rtol, atol=atol,
                                    max_steps=max_steps)
    prior = (prior_logp or sde.prior_logp)(z)
    return prior + delta, z, stats.nfe


def uniform_dequantize(key: jax.Array, x: jax.Array, n_bins: int = 256) -> jax.Array:
    """Map integer levels ``k ∈ {0, …, n_bins − 1}`` to ``(k + U(0, 1)) / n_bins ∈ [0, 1)``.

    Args:
      key: PRNG key.
      x: ``[B, ...]`` integer (or integer-valued) levels.
      n_bins: number of levels (256 for 8-bit images, 17 for scikit-learn digits).

    Returns:
      ``[B, ...]`` float32 values in ``[0, 1)``.

    Example:
        >>> uniform_dequantize(key, jnp.array([[0, 255]]))   # in [0, 1/256) and [255/256, 1)
    """
    check_int(n_bins, "n_bins", minimum=2)
    dtype = jnp.result_type(float)
    u = jax.random.uniform(key, jnp.shape(x), dtype)
    return (jnp.asarray(x, dtype) + u) / n_bins


def bits_per_dim(logp: jax.Array, num_dims: int, *, n_bins: int | None = None,
                 data_scale: float = 1.0) -> jax.Array:
    """Bits per dimension from a continuous log-density in nats.

    ``bpd = (−logp − D log a + D log n_bins) / (D ln 2)`` where the model sees
    ``y = a u + b`` of dequantised ``u ∈ [0, 1]^D`` (``a = data_scale``; ``a = 2`` for
    data centred to ``[−1, 1]``). With ``n_bins=None`` it is plain
    ``−logp / (D ln 2)`` (continuous data).

    Args:
      logp: ``[B]`` log-densities of the model-space points.
      num_dims: ``D``.
      n_bins: discrete levels per dimension, or None for continuous data.
      data_scale: ``a > 0``, the scale from ``[0, 1]`` to model space.

    Returns:
      ``[B]`` bits per dimension (upper bounds on the discrete codelength).

    Example:
        >>> bits_per_dim(logp, 3072, n_bins=256, data_scale=2.0)  # score_sde's offset 7

    Paper: Theis et al. 2016, section 3.1; Song et al. 2021, appendix D.2.
    """
    check_int(num_dims, "num_dims")
    check_positive(data_scale, "data_scale")
    nats = -logp - num_dims * math.log(data_scale)
    if n_bins is not None:
        check_int(n_bins, "n_bins", minimum=2)
        nats = nats + num_dims * math.log(n_bins)
    return nats / (num_dims * math.log(2.0))
