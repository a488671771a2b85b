"""Keypoint losses and decoders: RLE, direct likelihood, L1/L2, heatmaps, soft-argmax.

All are pure, jittable functions of arrays; the flow enters :func:`rle_loss` as a
callable ``flow_log_prob(ε [..., 2]) -> [...]`` (for example ``flow.log_prob`` of a
:mod:`vision.pose.flows` flow merged inside the loss).

Residual log-likelihood estimation (Li et al. 2021). The head predicts a mean ``μ`` and a
scale ``σ`` per keypoint and coordinate; with ``ε̂ = (μ − target) / σ`` the density of
the target is ``P(x) = Q(ε̂) · G(ε̂) / σ`` up to a constant, where ``Q`` is a simple
density (Laplace) and ``G`` the flow, which learns only the *residual* log-likelihood.
The loss is the negative log-likelihood as in the official code (residual mode, Laplace
``Q``, summed over keypoints and coordinates, averaged over the batch):

    loss = Σ_{b,k,c} w_bk · [ log σ_bkc − log G(ε̂_bk)
                 + log(σ_bkc · √(2π)) + |target_bkc − μ_bkc| / (√2 · σ_bkc + 1e-9) ] / B

(the flow term is per keypoint and counted on both coordinates, as there).

σ clamping (by design): every loss here uses ``max(σ, min_sigma)`` (default 1e-4), so
losses and gradients stay finite as ``σ → 0``; below the clamp the gradient with respect
to σ is zero. The official code adds 1e-9 to a sigmoid instead, which lets the
gradient grow like 1/σ.

Bad input. Shapes are checked at trace time, naming the argument (``target must have
shape [B, K, 2] = (4, 17, 2), ...``). Values follow :mod:`common.checks`: eagerly,
``σ ≤ 0`` or non-finite, and negative or non-finite weights raise ``ValueError``; traced
(inside ``jit``/``grad``), the same conditions make the loss NaN, which
``common.train.fit`` refuses.

Papers: Li et al. 2021, "Human Pose Regression with Residual Log-likelihood Estimation";
Xiao et al. 2018, "Simple Baselines for Human Pose Estimation and Tracking" (heatmap MSE,
quarter-pixel refinement); Sun et al. 2018, "Integral Human Pose Regression".
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from common.checks import check_float_dtype, poison, shape_of, shape_str, value_ok

__all__ = [
    "Q_DENSITIES",
    "argmax_decode",
    "gaussian_heatmaps",
    "heatmap_mse",
    "l1_loss",
    "l2_loss",
    "rle_loss",
    "soft_argmax",
]

#: Simple densities ``Q`` accepted by :func:`rle_loss`.
Q_DENSITIES = ("laplace", "gaussian")

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def _check_coords(mu, target, weight, *, extra: tuple = ()) -> tuple[int, int]:
    """Check ``mu [B, K, 2]``, ``target`` and every ``extra`` (name, array) of the same
    shape, and ``weight [B, K]``; return ``(B, K)``."""
    if jnp.ndim(mu) != 3 or shape_of(mu)[-1] != 2:
        raise ValueError(f"mu must have shape [B, K, 2], got shape {shape_str(shape_of(mu))}")
    check_float_dtype(mu, "mu")
    b, k, _ = shape_of(mu)
    for name, x in (("target", target), *extra):
        if shape_of(x) != (b, k, 2):
            raise ValueError(f"{name} must have shape [B, K, 2] = ({b}, {k}, 2) like mu, got "
                             f"shape {shape_str(shape_of(x))}")
        check_float_dtype(x, name)
    if shape_of(weight) != (b, k):
        raise ValueError(f"weight must have shape [B, K] = ({b}, {k}), got shape "
                         f"{shape_str(shape_of(weight))}")
    return b, k


def _weight_ok(weight):
    return value_ok(weight, "weight", lambda w: jnp.isfinite(w) & (w >= 0), "finite and >= 0")


def rle_loss(mu: jax.Array, sigma: jax.Array, target: jax.Array, weight: jax.Array,
             flow_log_prob: Callable[[jax.Array], jax.Array], *, q: str = "laplace",
             residual: bool = True, min_sigma: float = 1e-4) -> jax.Array:
    """Negative log-likelihood of RLE (residual mode) or of the direct flow likelihood.

    With ``σ' = max(σ, min_sigma)`` and ``ε̂ = (μ − target) / σ'``:

    * residual, Laplace ``Q`` (the official loss, see the module docstring)::

        Σ w_k [log σ' − log G(ε̂_k) + log(σ'√(2π)) + |target − μ| / (√2 σ' + 1e-9)] / B

    * residual, Gaussian ``Q``: the last two terms become
      ``log(σ'√(2π)) + (target − μ)² / (2 σ'²)``;
    * ``residual=False`` (direct likelihood, the flow models the whole density):
      ``Σ w_k [log σ' − log G(ε̂_k)] / B``.

    Sums run over keypoints ``k`` and coordinates ``c``; ``log G(ε̂_k)`` is per keypoint
    and counted on both coordinates.

    Args:
      mu: ``[B, K, 2]`` predicted means.
      sigma: ``[B, K, 2]`` predicted scales (> 0).
      target: ``[B, K, 2]`` ground-truth coordinates (same units as ``mu``).
      weight: ``[B, K]`` keypoint weights (0 for unlabelled keypoints).
      flow_log_prob: maps residuals ``[..., 2]`` to log densities ``[...]``.
      q: ``"laplace"`` or ``"gaussian"`` (ignored when ``residual=False``).
      residual: residual log-likelihood (True) or direct likelihood (False).
      min_sigma: clamp of σ (see the module docstring).

    Returns:
      The scalar loss; NaN for bad traced ``sigma`` or ``weight`` values.

    Example:
      >>> from vision.pose.flows import standard_normal_log_prob
      >>> mu = jnp.zeros((1, 2, 2)); sigma = jnp.ones((1, 2, 2))
      >>> float(rle_loss(mu, sigma, mu, jnp.ones((1, 2)), standard_normal_log_prob))
      11.0...

    Paper: Li et al. 2021, eq. 10 and the official ``RLELoss``.
    """
    _check_coords(mu, target, weight, extra=(("sigma", sigma),))
    if q not in Q_DENSITIES:
        raise ValueError(f"q must be one of {Q_DENSITIES}, got {q!r}")
    if not (isinstance(min_sigma, (int, float)) and min_sigma > 0):
        raise ValueError(f"min_sigma must be a number > 0, got {min_sigma!r}")
    ok = value_ok(sigma, "sigma", lambda s: jnp.isfinite(s) & (s > 0), "finite and > 0")
    ok = ok & _weight_ok(weight)
    b = shape_of(mu)[0]
    sigma = jnp.maximum(sigma, min_sigma)
    eps = (mu - target) / sigma
    log_g = flow_log_prob(eps)                                       # [B, K]
    if shape_of(log_g) != shape_of(mu)[:2]:
        raise ValueError(f"flow_log_prob must map [..., 2] to [...]: got shape "
                         f"{shape_str(shape_of(log_g))} for residuals {shape_str(shape_of(mu))}")
    per = jnp.log(sigma) - log_g[..., None]                          # [B, K, 2]
    if residual:
        if q == "laplace":
            log_q = (jnp.log(sigma) + _LOG_SQRT_2PI
                     + jnp.abs(target - mu) / (math.sqrt(2.0) * sigma + 1e-9))
        else:
            log_q = jnp.log(sigma) + _LOG_SQRT_2PI + jnp.square(target - mu) / (2 * sigma**2)
        per = per + log_q
    loss = jnp.sum(weight[..., None] * per) / max(b, 1)
    return poison(loss, ok)


def l1_loss(pred: jax.Array, target: jax.Array, weight: jax.Array) -> jax.Array:
    """Weighted L1 regression loss ``Σ_{b,k,c} w_bk |pred − target| / B``.

    Args:
      pred, target: ``[B, K, 2]`` coordinates.
      weight: ``[B, K]`` keypoint weights (>= 0).

    Returns:
      The scalar loss (NaN for bad traced weights).

    Example:
      >>> float(l1_loss(jnp.ones((2, 1, 2)), jnp.zeros((2, 1, 2)), jnp.ones((2, 1))))
      2.0
    """
    _check_coords(pred, target, weight)
    ok = _weight_ok(weight)
    b = shape_of(pred)[0]
    return poison(jnp.sum(weight[..., None] * jnp.abs(pred - target)) / max(b, 1), ok)


def l2_loss(pred: jax.Array, target: jax.Array, weight: jax.Array) -> jax.Array:
    """Weighted L2 regression loss ``Σ_{b,k,c} w_bk (pred − target)² / B``.

    Args and Returns as :func:`l1_loss`.

    Example:
      >>> float(l2_loss(2 * jnp.ones((1, 1, 2)), jnp.zeros((1, 1, 2)), jnp.ones((1, 1))))
      8.0
    """
    _check_coords(pred, target, weight)
    ok = _weight_ok(weight)
    b = shape_of(pred)[0]
    return poison(jnp.sum(weight[..., None] * jnp.square(pred - target)) / max(b, 1), ok)


def gaussian_heatmaps(centers: jax.Array, height: int, width: int,
                      sigma: float) -> jax.Array:
    """Gaussian target maps ``T[i, j] = exp(−((j − x)² + (i − y)²) / (2 s²))``.

    Pixel ``(i, j)`` (row, column) has its centre at ``(x, y) = (j, i)`` in heatmap
    coordinates; the maps are not truncated or normalised (peak 1 at the centre).

    Args:
      centers: ``[..., 2]`` ``(x, y)`` in heatmap pixel coordinates.
      height, width: map size.
      sigma: Gaussian width ``s`` in heatmap pixels (> 0).

    Returns:
      ``[..., height, width]``.

    Example:
      >>> gaussian_heatmaps(jnp.array([1.0, 2.0]), 4, 3, 1.0)[2, 1]
      Array(1., dtype=float32)

    Paper: Tompson et al. 2014; Xiao et al. 2018 (targets of the heatmap MSE).
    """
    if jnp.ndim(centers) < 1 or shape_of(centers)[-1] != 2:
        raise ValueError(f"centers must have shape [..., 2], got shape "
                         f"{shape_str(shape_of(centers))}")
    if not (isinstance(sigma, (int, float)) and sigma > 0):
        raise ValueError(f"sigma must be a number > 0, got {sigma!r}")
    lead = (1,) * (jnp.ndim(centers) - 1)
    ys = jnp.reshape(jnp.arange(height, dtype=jnp.float32), (*lead, height))
    xs = jnp.reshape(jnp.arange(width, dtype=jnp.float32), (*lead, width))
    dx = xs - centers[..., 0:1]                                     # [..., W]
    dy = ys - centers[..., 1:2]                                     # [..., H]
    return jnp.exp(-(dy[..., :, None] ** 2 + dx[..., None, :] ** 2) / (2.0 * sigma**2))


def heatmap_mse(pred: jax.Array, target: jax.Array, weight: jax.Array) -> jax.Array:
    """Heatmap MSE with keypoint weights, as Simple Baselines' ``JointsMSELoss``:
    ``0.5 · mean_{b,k,i,j} (w_bk · (pred − target))²``.

    Args:
      pred, target: ``[B, K, H, W]`` heatmaps.
      weight: ``[B, K]`` keypoint weights (>= 0).

    Returns:
      The scalar loss (NaN for bad traced weights).

    Example:
      >>> float(heatmap_mse(jnp.ones((1, 1, 2, 2)), jnp.zeros((1, 1, 2, 2)), jnp.ones((1, 1))))
      0.5

    Paper: Xiao et al. 2018, section 2.
    """
    if jnp.ndim(pred) != 4:
        raise ValueError(f"pred must have shape [B, K, H, W], got shape "
                         f"{shape_str(shape_of(pred))}")
    if shape_of(target) != shape_of(pred):
        raise ValueError(f"target must have shape [B, K, H, W] = {shape_str(shape_of(pred))} "
                         f"like pred, got shape {shape_str(shape_of(target))}")
    if shape_of(weight) != shape_of(pred)[:2]:
        raise ValueError(f"weight must have shape [B, K] = {shape_str(shape_of(pred)[:2])}, "
                         f"got shape {shape_str(shape_of(weight))}")
    ok = _weight_ok(weight)
    diff = weight[..., None, None] * (pred - target)
    return poison(0.5 * jnp.mean(jnp.square(diff)), ok)


def _check_maps(heatmaps, name: str = "heatmaps") -> tuple[int, int]:
    if jnp.ndim(heatmaps) < 2:
        raise ValueError(f"{name} must have shape [..., H, W], got shape "
                         f"{shape_str(shape_of(heatmaps))}")
    h, w = shape_of(heatmaps)[-2:]
    if h < 1 or w < 1:
        raise ValueError(f"{name} must have H, W >= 1, got shape {shape_str(shape_of(heatmaps))}")
    return h, w


def argmax_decode(heatmaps: jax.Array, refine: bool = True) -> tuple[jax.Array, jax.Array]:
    """Keypoint coordinates at the heatmap maximum, with the quarter-pixel refinement.

    ``(x, y) = argmax``; then, where ``1 < x < W − 1`` and ``1 < y < H − 1`` (the
    condition of Simple Baselines' ``get_final_preds``), each coordinate moves a quarter
    pixel towards its higher neighbour:
    ``x += 0.25 · sign(T[y, x+1] − T[y, x−1])``, ``y += 0.25 · sign(T[y+1, x] − T[y−1, x])``.
    Ties in the maximum go to the first pixel in row-major order.

    Args:
      heatmaps: ``[..., H, W]``.
      refine: apply the quarter-pixel shift.

    Returns:
      ``(coords [..., 2], maxvals [...])``: ``(x, y)`` in heatmap pixel coordinates and
      the maximum values (a confidence).

    Example:
      >>> maps = jnp.zeros((5, 5)).at[2, 3].set(1.0).at[2, 4].set(0.5)
      >>> argmax_decode(maps)[0].tolist()
      [3.25, 2.0]

    Paper: Xiao et al. 2018 (official ``get_max_preds`` / ``get_final_preds``).
    """
    h, w = _check_maps(heatmaps)
    lead = shape_of(heatmaps)[:-2]
    flat = jnp.reshape(heatmaps, (*lead, h * w))
    idx = jnp.argmax(flat, axis=-1)
    maxvals = jnp.max(flat, axis=-1)
    py, px = idx // w, idx % w

    def at(y, x):
        j = jnp.clip(y, 0, h - 1) * w + jnp.clip(x, 0, w - 1)
        return jnp.take_along_axis(flat, j[..., None], axis=-1)[..., 0]

    x = px.astype(flat.dtype)
    y = py.astype(flat.dtype)
    if refine:
        inside = (px > 1) & (px < w - 1) & (py > 1) & (py < h - 1)
        dx = jnp.sign(at(py, px + 1) - at(py, px - 1))
        dy = jnp.sign(at(py + 1, px) - at(py - 1, px))
        x = x + jnp.where(inside, 0.25 * dx, 0.0)
        y = y + jnp.where(inside, 0.25 * dy, 0.0)
    return jnp.stack([x, y], axis=-1), maxvals


def soft_argmax(logits: jax.Array, beta: float = 1.0) -> jax.Array:
    """Integral regression: the expected location under ``softmax(β · logits)``.

    ``p = softmax over (i, j) of β · L``, ``x = Σ p_ij · j``, ``y = Σ p_ij · i``.

    Args:
      logits: ``[..., H, W]`` heatmap logits.
      beta: inverse temperature (> 0).

    Returns:
      ``[..., 2]``: ``(x, y)`` in heatmap pixel coordinates (differentiable).

    Example:
      >>> logits = jnp.full((4, 4), -1e9).at[1, 3].set(0.0)   # a delta heatmap
      >>> soft_argmax(logits).tolist()
      [3.0, 1.0]

    Paper: Sun et al. 2018, "Integral Human Pose Regression", eq. 3.
    """
    h, w = _check_maps(logits, "logits")
    if not (isinstance(beta, (int, float)) and beta > 0):
        raise ValueError(f"beta must be a number > 0, got {beta!r}")
    lead = shape_of(logits)[:-2]
    p = jax.nn.softmax(beta * jnp.reshape(logits, (*lead, h * w)), axis=-1)
    p = jnp.reshape(p, (*lead, h, w))
    ones = (1,) * len(lead)
    x = jnp.sum(jnp.sum(p, axis=-2) * jnp.reshape(jnp.arange(w, dtype=p.dtype), (*ones, w)),
                axis=-1)
    y = jnp.sum(jnp.sum(p, axis=-1) * jnp.reshape(jnp.arange(h, dtype=p.dtype), (*ones, h)),
                axis=-1)
    return jnp.stack([x, y], axis=-1)
