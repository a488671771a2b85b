"""Score-matching objectives: continuous SDE loss, SMLD (NCSN), DDPM, DSM, sliced SM.

Every loss is a pure function of a score (or noise-prediction) callable, a batch
``x [B, ...]`` and a PRNG key, returning a scalar; the key is split as documented in
each function, so the same key gives the same loss. Losses never import models:
``score_fn`` is any callable, usually ``sde.make_score_fn(sde, network_apply)``.

The per-sample reduction follows score_sde: ``reduce_mean=True`` averages over the
data dimensions, ``reduce_mean=False`` takes **half the sum** (score_sde's
``0.5 * jnp.sum``); the batch is always averaged.

Example:
    >>> sde = VPSDE()
    >>> loss = sde_loss(score_fn, sde, x, jax.random.key(0))   # x [B, D]

Papers: Song et al. 2021 (score SDEs, eq. 7); Song & Ermon 2019 (NCSN, eq. 5–6);
Ho et al. 2020 (DDPM, eq. 14); Vincent 2011, "A Connection Between Score Matching and
Denoising Autoencoders"; Song, Garg, Shi & Ermon 2019, "Sliced Score Matching: A
Scalable Approach to Density and Score Estimation" (UAI).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from common.checks import check_int, check_positive, per_sample, shape_str
from generative.checks import check_batch, check_eps, check_score
from generative.sde import SDE

__all__ = [
    "ddpm_loss",
    "denoising_score_matching_loss",
    "sde_loss",
    "sliced_score_matching_loss",
    "smld_loss",
]


def _reduce(values, reduce_mean: bool):
    """``[B, ...] -> [B]``: mean over data dims, or score_sde's ``0.5 * sum``."""
    flat = values.reshape(values.shape[0], -1)
    return jnp.mean(flat, axis=-1) if reduce_mean else 0.5 * jnp.sum(flat, axis=-1)


def sde_loss(score_fn: Callable, sde: SDE, x: jax.Array, key: jax.Array, *,
             eps: float = 1e-5, reduce_mean: bool = True,
             likelihood_weighting: bool = False) -> jax.Array:
    """Continuous-time denoising score matching for a score SDE.

    ``t ~ U(eps, T)``, ``z ~ N(0, I)``, ``x_t = m(t) x + s(t) z``; per sample

    * default (``λ(t) = s(t)²``): ``R ‖s(t) · score(x_t, t) + z‖²``
    * ``likelihood_weighting`` (``λ(t) = g(t)²``): ``g(t)² R ‖score(x_t, t) + z / s(t)‖²``

    with ``R`` the mean over data dims (``reduce_mean``) or half their sum; the loss
    is the batch mean. Draws: ``t_key, z_key = jax.random.split(key)``.

    Args:
      score_fn: ``score_fn(x [B, ...], t [B]) -> [B, ...]``.
      sde: the forward SDE.
      x: ``[B, ...]`` clean data.
      key: PRNG key.
      eps: smallest time sampled, in ``(0, T)``: ``t = 0`` is never drawn (there the
        marginal std of VP/sub-VP vanishes, and ``z / s(t)`` or a score ``−ε̂/s(t)``
        would be NaN); ``eps = 0`` is refused.
      reduce_mean: mean (True) or half-sum (False) over data dimensions.
      likelihood_weighting: weight by ``g(t)²`` so the loss bounds the negative
        log-likelihood (Song, Durkan, Murray & Ermon 2021, "Maximum Likelihood
        Training of Score-Based Diffusion Models").

    Returns:
      Scalar loss.

    Example:
        >>> sde_loss(score_fn, VESDE(), jnp.ones((8, 2)), jax.random.key(0)).shape
        ()

    Paper: Song et al. 2021, eq. (7).
    """
    check_batch(x)
    eps = check_eps(eps, sde, positive=True)
    t_key, z_key = jax.random.split(key)
    B = x.shape[0]
    t = jax.random.uniform(t_key, (B,), x.dtype, minval=eps, maxval=sde.T)
    z = jax.random.normal(z_key, x.shape, x.dtype)
    mean, std = sde.marginal_prob(x, t)
    perturbed = mean + per_sample(std, x) * z
    score = score_fn(perturbed, t)
    check_score(score, x, "score_fn")
    if likelihood_weighting:
        _, g = sde.sde(jnp.zeros_like(x), t)
        losses = _reduce(jnp.square(score + z / per_sample(std, x)), reduce_mean) * g**2
    else:
        losses = _reduce(jnp.square(score * per_sample(std, x) + z), reduce_mean)
    return jnp.mean(losses)


def smld_loss(score_fn: Callable, sigmas: jax.Array, x: jax.Array, key: jax.Array, *,
              reduce_mean: bool = False) -> jax.Array:
    """NCSN / SMLD loss: denoising score matching over discrete noise levels, ``λ = σ²``.

    ``i ~ U{0, …, L−1}``, ``n ~ N(0, σ_i² I)``, ``x̃ = x + n``; per sample
    ``σ_i² R ‖score(x̃, σ_i) + n / σ_i²‖²``; the loss is the batch mean.
    Draws: ``i_key, n_key = jax.random.split(key)``.

    Args:
      score_fn: noise-conditional score ``score_fn(x [B, ...], sigma [B]) -> [B, ...]``.
        With a :class:`~generative.sde.VESDE` ``sde`` and a time-conditioned score
        ``s(x, t)``, pass ``sigmas=sde.discrete_sigmas`` and
        ``lambda x, s: score(x, sde.t_of_sigma(s))`` (score_sde's ``smld`` loss).
      sigmas: ``[L]`` noise levels, all > 0 (any order).
      x: ``[B, ...]`` clean data.
      key: PRNG key.
      reduce_mean: mean (True) or half-sum (False, score_sde's default here).

    Returns:
      Scalar loss.

    Example:
        >>> smld_loss(score_fn, geometric_sigmas(10.0, 0.1, 8), x, jax.random.key(0))

    Paper: Song & Ermon 2019, eq. (5)–(6).
    """
    check_batch(x)
    sigmas = jnp.asarray(sigmas, x.dtype)
    if sigmas.ndim != 1 or sigmas.shape[0] < 1:
        raise ValueError(f"sigmas must have shape [L] with L >= 1, got "
                         f"{shape_str(sigmas.shape)}")
    check_positive(sigmas, "sigmas")
    i_key, n_key = jax.random.split(key)
    B = x.shape[0]
    idx = jax.random.randint(i_key, (B,), 0, sigmas.shape[0])
    sigma = sigmas[idx]  # [B]
    noise = jax.random.normal(n_key, x.shape, x.dtype) * per_sample(sigma, x)
    score = score_fn(x + noise, sigma)
    check_score(score, x, "score_fn")
    target = -noise / per_sample(sigma**2, x)
    return jnp.mean(_reduce(jnp.square(score - target), reduce_mean) * sigma**2)


def _ddpm_alphas_cumprod(sde) -> np.ndarray:
    """``sde.alphas_cumprod`` checked against :func:`ddpm_loss`'s contract."""
    abar = getattr(sde, "alphas_cumprod", None)
    if abar is None:
        raise ValueError(f"ddpm_loss needs a VPSDE-type SDE whose discrete chain is DDPM's "
                         f"(an alphas_cumprod attribute of shape [N]); "
                         f"{type(sde).__name__} has none")
    abar = np.asarray(abar, np.float64)
    if abar.shape != (sde.N,) or not np.all((abar > 0) & (abar <= 1)):
        raise ValueError(f"{type(sde).__name__}.alphas_cumprod must have shape [N] = "
                         f"({sde.N}) with values in (0, 1], got shape {shape_str(abar.shape)}")
    return abar


def ddpm_loss(eps_fn: Callable, sde: SDE, x: jax.Array, key: jax.Array, *,
              reduce_mean: bool = True) -> jax.Array:
    """DDPM's simplified loss: predict the noise of a variance-preserving discrete chain.

    ``i ~ U{0, …, N−1}``, ``z ~ N(0, I)``, ``x_i = √ᾱ_i x + √(1 − ᾱ_i) z``; per sample
    ``R ‖ε̂(x_i, t_i) − z‖²`` with the network conditioned on ``t_i = i / (N − 1)``
    (the time whose ``sde.timestep`` is ``i``). Draws: ``i_key, z_key = split(key)``.

    Contract: ``sde`` provides ``N`` and ``alphas_cumprod``, the ``[N]`` values
    ``ᾱ_i ∈ (0, 1]`` such that step ``i`` of its chain from ``x_0`` is
    ``N(√ᾱ_i x_0, (1 − ᾱ_i) I)`` (VPSDE and its subclasses; a new SDE opts in by
    defining the attribute). Others (VE, sub-VP) are refused with a ``ValueError``.

    Args:
      eps_fn: noise prediction ``eps_fn(x [B, ...], t [B]) -> [B, ...]``.
      sde: an SDE with ``alphas_cumprod`` (e.g. :class:`~generative.sde.VPSDE`).
      x: ``[B, ...]`` clean data.
      key: PRNG key.
      reduce_mean: mean (True) or half-sum (False) over data dimensions.

    Returns:
      Scalar loss.

    Example:
        >>> ddpm_loss(eps_fn, VPSDE(), x, jax.random.key(0))

    Paper: Ho, Jain & Abbeel 2020, "Denoising Diffusion Probabilistic Models", eq. (14).
    """
    check_batch(x)
    abar = _ddpm_alphas_cumprod(sde)
    i_key, z_key = jax.random.split(key)
    B = x.shape[0]
    idx = jax.random.randint(i_key, (B,), 0, sde.N)
    z = jax.random.normal(z_key, x.shape, x.dtype)
    a = jnp.asarray(np.sqrt(abar), x.dtype)[idx]
    b = jnp.asarray(np.sqrt(1.0 - abar), x.dtype)[idx]
    perturbed = per_sample(a, x) * x + per_sample(b, x) * z
    t = idx.astype(x.dtype) / max(sde.N - 1, 1)
    out = eps_fn(perturbed, t)
    check_score(out, x, "eps_fn")
    return jnp.mean(_reduce(jnp.square(out - z), reduce_mean))


def denoising_score_matching_loss(score_fn: Callable, x: jax.Array, key: jax.Array,
                                  sigma: float) -> jax.Array:
    """Denoising score matching at one noise level.

    ``x̃ = x + σ z``; loss ``½ E ‖score(x̃) + (x̃ − x) / σ²‖²`` (sum over data dims,
    mean over the batch), minimised by the score of the σ-smoothed data.
    Draws: ``z = normal(key, x.shape)``.

    Args:
      score_fn: ``score_fn(x [B, ...]) -> [B, ...]``.
      x: ``[B, ...]`` clean data.
      key: PRNG key.
      sigma: noise level > 0.

    Returns:
      Scalar loss.

    Example:
        >>> denoising_score_matching_loss(lambda y: -y, x, jax.random.key(0), 0.1)

    Paper: Vincent 2011, eq. (7).
    """
    check_batch(x)
    check_positive(sigma, "sigma")
    z = jax.random.normal(key, x.shape, x.dtype)
    perturbed = x + sigma * z
    score = score_fn(perturbed)
    check_score(score, x, "score_fn")
    return jnp.mean(_reduce(jnp.square(score + z / sigma), reduce_mean=False))


def sliced_score_matching_loss(score_fn: Callable, x: jax.Array, key: jax.Array, *,
                               n_projections: int = 1, projection: str = "rademacher",
                               variance_reduction: bool = False) -> jax.Array:
    """Sliced score matching: projected Hyvärinen objective without the Jacobian trace.

    With projections ``v`` (``E[v vᵀ] = I``), per sample and projection

    * SSM:    ``vᵀ ∇ₓ(vᵀ s(x)) + ½ (vᵀ s(x))²``
    * SSM-VR: ``vᵀ ∇ₓ(vᵀ s(x)) + ½ ‖s(x)‖²`` (``variance_reduction=True``)

    averaged over projections and batch; equals ``E[tr ∇ₓ s + ½ ‖s‖²]`` in
    expectation, the score-matching objective (Fisher divergence up to a constant).
    ``vᵀ ∇ₓ(vᵀ s) = vᵀ J v`` is one forward-mode Jacobian-vector product per
    projection. ``score_fn`` must act on each sample independently.
    Draws: ``v`` of shape ``[n_projections, *x.shape]`` from ``key``.

    Args:
      score_fn: ``score_fn(x [B, ...]) -> [B, ...]``.
      x: ``[B, ...]`` data.
      key: PRNG key.
      n_projections: projections per sample (``M``).
      projection: ``"rademacher"`` (±1) or ``"gaussian"``.
      variance_reduction: use the SSM-VR form.

    Returns:
      Scalar loss.

    Example:
        >>> sliced_score_matching_loss(lambda y: -y, x, jax.random.key(0))

    Paper: Song, Garg, Shi & Ermon 2019, eq. (7) and (8).
    """
    check_batch(x)
    check_int(n_projections, "n_projections")
    shape = (int(n_projections), *x.shape)
    if projection == "rademacher":
        v = jax.random.rademacher(key, shape, x.dtype)
    elif projection == "gaussian":
        v = jax.random.normal(key, shape, x.dtype)
    else:
        raise ValueError(f"projection must be 'rademacher' or 'gaussian', got {projection!r}")
    B = x.shape[0]

    def one(vi):
        score, jv = jax.jvp(score_fn, (x,), (vi,))
        check_score(score, x, "score_fn")
        vjv = jnp.sum((vi * jv).reshape(B, -1), axis=-1)  # [B]
        if variance_reduction:
            second = 0.5 * jnp.sum(jnp.square(score).reshape(B, -1), axis=-1)
        else:
            second = 0.5 * jnp.square(jnp.sum((vi * score).reshape(B, -1), axis=-1))
        return vjv + second

    return jnp.mean(jax.vmap(one)(v))
