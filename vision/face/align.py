"""Five-point face alignment: least-squares similarity transforms and the ArcFace crop.

A face is aligned by the similarity transform (rotation, uniform scale, translation)
that maps its five landmarks — left eye, right eye, nose tip, left and right mouth
corner, as ``(x, y)`` pixel coordinates — onto the canonical :data:`ARCFACE_TEMPLATE`
in the least-squares sense (Umeyama 1991), followed by an inverse warp of the image
with bilinear sampling and a zero border (what insightface's ``norm_crop`` does with
``cv2.warpAffine``; here equal to ``skimage.transform.warp(..., order=1, cval=0)``).
Everything is ``jit``- and ``vmap``-able over a batch of faces.

Conventions: a point is ``(x, y) = (column, row)``, pixel centres sit at integer
coordinates (as in scikit-image and OpenCV), and 3×3 matrices act on homogeneous
column vectors ``[x, y, 1]``.

Degenerate landmarks. :func:`umeyama` needs ``src`` points that are not all
coincident; :func:`estimate_norm` and :func:`norm_crop` also refuse collinear
landmarks (five collinear facial points are a failed detection, and the fit would
be decided by noise). By the policy of :mod:`common.checks`: on concrete arrays they
raise ``ValueError`` naming the argument; traced (inside ``jit``/``vmap``/``grad``)
the returned matrix, and the crop computed from it, are NaN for that face — a
vmapped batch keeps its good faces and gets NaN crops for the bad ones. Non-finite
points follow the same rule.

Papers: Umeyama 1991, "Least-squares estimation of transformation parameters between
two point patterns"; Deng et al. 2019, "ArcFace: Additive Angular Margin Loss for
Deep Face Recognition" (the 112×112 template of insightface).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from common.checks import (
    check_int,
    check_rank,
    float_dtype,
    is_concrete,
    poison,
    shape_of,
    shape_str,
)
from vision.face.margins import all_ok, finite_ok, maybe_poison

__all__ = [
    "ARCFACE_TEMPLATE",
    "COLLINEAR_TOL",
    "estimate_norm",
    "landmarks_ok",
    "norm_crop",
    "umeyama",
    "warp_affine",
]

ARCFACE_TEMPLATE = np.array([
    [38.2946, 51.6963],   # left eye (image left)
    [73.5318, 51.5014],   # right eye
    [56.0252, 71.7366],   # nose tip
    [41.5493, 92.3655],   # left mouth corner
    [70.7299, 92.2041],   # right mouth corner
], dtype=np.float32)
"""``[5, 2]`` insightface's ArcFace landmark template ``(x, y)`` for a 112×112 crop."""

COLLINEAR_TOL = 1e-3
"""Landmarks whose centred spread has singular values ``σ_min ≤ COLLINEAR_TOL · σ_max``
count as collinear (degenerate) in :func:`estimate_norm` and :func:`norm_crop`."""


def _check_points(points, name: str, n: int | None = None) -> jax.Array:
    points = jnp.asarray(points)
    if points.ndim != 2 or points.shape[1] != 2 or (n is not None and points.shape[0] != n):
        spec = f"[{n}, 2]" if n is not None else "[N, 2]"
        raise ValueError(f"{name} must have shape {spec} of (x, y) points, got shape "
                         f"{shape_str(points.shape)}")
    if not jnp.issubdtype(points.dtype, jnp.floating):
        points = points.astype(float_dtype(points))
    return points


def _spread(points: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Singular values ``(σ_max, σ_min)`` of the centred ``[N, 2]`` points (closed form)."""
    c = points - jnp.mean(points, axis=0, keepdims=True)
    sxx, syy, sxy = jnp.sum(c[:, 0] ** 2), jnp.sum(c[:, 1] ** 2), jnp.sum(c[:, 0] * c[:, 1])
    half_trace = 0.5 * (sxx + syy)
    radius = jnp.sqrt(0.25 * (sxx - syy) ** 2 + sxy**2)
    big = half_trace + radius
    small = jnp.maximum(half_trace - radius, 0.0)
    return jnp.sqrt(big), jnp.sqrt(small)


def landmarks_ok(points: jax.Array, collinear_tol: float | None = COLLINEAR_TOL) -> jax.Array:
    """Whether ``[N, 2]`` points are finite and not degenerate (traced-safe boolean).

    Degenerate means all coincident (zero spread, relative to the points' magnitude)
    or, when ``collinear_tol`` is not None, collinear: ``σ_min ≤ collinear_tol · σ_max``
    for the singular values of the centred points.

    Args:
      points: ``[N, 2]`` points ``(x, y)``.
      collinear_tol: relative tolerance for collinearity; None skips that test.

    Returns:
      A boolean scalar.

    Example:
      >>> bool(landmarks_ok(jnp.array([[0., 0.], [1., 1.], [2., 2.]])))
      False
    """
    points = jnp.asarray(points)
    finite = jnp.all(jnp.isfinite(points))
    safe = jnp.where(finite, points, 0.0)
    big, small = _spread(safe)
    scale = jnp.max(jnp.abs(safe)) + 1.0
    eps = 64 * jnp.finfo(safe.dtype).eps
    ok = finite & (big > eps * scale)
    if collinear_tol is not None:
        ok = ok & (small > collinear_tol * big)
    return ok


_landmarks_ok_jit = jax.jit(landmarks_ok, static_argnums=1)


def _require_points_ok(points, name: str, collinear_tol: float | None):
    expected = ("finite and not all coincident" if collinear_tol is None
                else "finite, not all coincident and not collinear")

    if not is_concrete(points):
        return landmarks_ok(points, collinear_tol)
    ok = bool(_landmarks_ok_jit(jnp.asarray(points), collinear_tol))
    if not ok:
        arr = np.asarray(points, dtype=np.float64)
        raise ValueError(f"{name} must be {expected} (degenerate points cannot define a "
                         f"similarity transform), got {np.round(arr, 4).tolist()}")
    return True


@jax.jit
def _umeyama(src: jax.Array, dst: jax.Array) -> jax.Array:
    """Unchecked closed form of :func:`umeyama` (src spread assumed non-zero)."""
    src_mean, dst_mean = jnp.mean(src, axis=0), jnp.mean(dst, axis=0)
    p, q = src - src_mean[None, :], dst - dst_mean[None, :]
    var = jnp.sum(p * p)
    var = jnp.where(var > 0, var, 1.0)
    a = jnp.sum(p[:, 0] * q[:, 0] + p[:, 1] * q[:, 1]) / var     # s·cos φ
    b = jnp.sum(p[:, 0] * q[:, 1] - p[:, 1] * q[:, 0]) / var     # s·sin φ
    rot = jnp.stack([jnp.stack([a, -b]), jnp.stack([b, a])])     # [2, 2]
    t = dst_mean - rot @ src_mean
    top = jnp.concatenate([rot, t[:, None]], axis=1)             # [2, 3]
    bottom = jnp.array([[0.0, 0.0, 1.0]], dtype=top.dtype)
    return jnp.concatenate([top, bottom], axis=0)


def umeyama(src: jax.Array, dst: jax.Array) -> jax.Array:
    """Least-squares similarity transform mapping ``src`` points onto ``dst`` (Umeyama).

    Minimises ``Σ_i ‖dst_i − (s R src_i + t)‖²`` over scale ``s ≥ 0``, rotation
    ``R ∈ SO(2)`` (no reflection) and translation ``t``. With centred points
    ``p_i = src_i − src̄``, ``q_i = dst_i − dst̄`` Umeyama's SVD solution reduces in 2-D
    to the closed form (``x + iy`` as complex numbers: ``s e^{iφ} = Σ p̄_i q_i / Σ|p_i|²``)::

        a = s cos φ = Σ (p_x q_x + p_y q_y) / Σ |p|²
        b = s sin φ = Σ (p_x q_y − p_y q_x) / Σ |p|²
        M = [[a, −b, t_x], [b, a, t_y], [0, 0, 1]],   t = dst̄ − [[a, −b], [b, a]] src̄

    which is smooth in the points (finite gradients) and ``vmap``-able. Equal to
    ``skimage.transform.SimilarityTransform`` estimated from the same points.

    Args:
      src: ``[N, 2]`` source points ``(x, y)``, ``N ≥ 2``, not all coincident.
      dst: ``[N, 2]`` destination points.

    Returns:
      ``[3, 3]`` homogeneous matrix ``M`` with ``dst ≈ M [src; 1]``. Coincident or
      non-finite ``src`` (or non-finite ``dst``): ``ValueError`` naming the argument
      when concrete, a NaN matrix when traced.

    Example:
      >>> M = umeyama(jnp.array([[0., 0.], [1., 0.]]), jnp.array([[1., 1.], [1., 3.]]))
      >>> np.round(np.asarray(M), 6).tolist()   # scale 2, rotation 90°, shift (1, 1)
      [[0.0, -2.0, 1.0], [2.0, 0.0, 1.0], [0.0, 0.0, 1.0]]

    Paper: Umeyama 1991, "Least-squares estimation of transformation parameters between
    two point patterns", IEEE TPAMI 13(4).
    """
    src = _check_points(src, "src")
    dst = _check_points(dst, "dst")
    if src.shape[0] != dst.shape[0]:
        raise ValueError(f"src and dst must hold the same number of points, got shapes "
                         f"{shape_str(src.shape)} and {shape_str(dst.shape)}")
    if src.shape[0] < 2:
        raise ValueError(f"src must hold at least 2 points, got shape {shape_str(src.shape)}")
    dtype = jnp.promote_types(src.dtype, dst.dtype)
    src, dst = src.astype(dtype), dst.astype(dtype)
    ok = _require_points_ok(src, "src", None)
    ok = all_ok(ok, finite_ok(dst, "dst"))
    if ok is not True:
        src = jnp.where(jnp.isfinite(src), src, 0.0)
        dst = jnp.where(jnp.isfinite(dst), dst, 0.0)
    matrix = _umeyama(src, dst)
    return maybe_poison(matrix, ok)


def _template(size: int, dtype) -> jax.Array:
    """insightface's template for a ``size`` crop: scaled by ``size / 112`` when 112
    divides ``size``, else by ``size / 128`` and shifted right by ``8 · size / 128``."""
    if size % 112 == 0:
        ratio, diff_x = size / 112.0, 0.0
    else:
        ratio = size / 128.0
        diff_x = 8.0 * ratio
    dst = ARCFACE_TEMPLATE.astype(np.float64) * ratio
    dst[:, 0] += diff_x
    return jnp.asarray(dst, dtype=dtype)


def estimate_norm(landmarks: jax.Array, size: int = 112) -> jax.Array:
    """The similarity transform taking five face landmarks onto the ArcFace template.

    ``M = umeyama(landmarks, template(size))`` where the template is
    :data:`ARCFACE_TEMPLATE` scaled by ``size / 112`` (insightface: when 112 does not
    divide ``size`` it is scaled by ``size / 128`` and shifted by ``8 · size / 128`` in x).
    ``M[:2]`` is the matrix insightface passes to ``cv2.warpAffine``.

    Args:
      landmarks: ``[5, 2]`` points ``(x, y)``: left eye, right eye, nose, left and
        right mouth corner.
      size: side of the square crop in pixels.

    Returns:
      ``[3, 3]`` matrix mapping image coordinates to crop coordinates. Degenerate
      landmarks (coincident, collinear, non-finite): ``ValueError`` naming
      ``landmarks`` when concrete, NaN when traced.

    Example:
      >>> M = estimate_norm(jnp.asarray(ARCFACE_TEMPLATE))   # already aligned
      >>> bool(jnp.allclose(M, jnp.eye(3), atol=1e-5))
      True

    Paper: Deng et al. 2019, "ArcFace: Additive Angular Margin Loss for Deep Face
    Recognition" (insightface's ``face_align.estimate_norm``).
    """
    size = check_int(size, "size", 1)
    landmarks = _check_points(landmarks, "landmarks", 5)
    ok = _require_points_ok(landmarks, "landmarks", COLLINEAR_TOL)
    safe = landmarks if ok is True else jnp.where(
        ok, landmarks, jnp.asarray(ARCFACE_TEMPLATE, landmarks.dtype))
    return maybe_poison(_umeyama(safe, _template(size, landmarks.dtype)), ok)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _warp(image, matrix, out_h: int, out_w: int):
    """The jitted body of :func:`warp_affine` (arguments checked, one floating dtype)."""
    dtype = image.dtype
    lin = matrix[:2, :2].astype(dtype)
    inv = jnp.linalg.inv(lin)                                       # [2, 2]
    shift = -inv @ matrix[:2, 2].astype(dtype)
    ys, xs = jnp.meshgrid(jnp.arange(out_h, dtype=dtype), jnp.arange(out_w, dtype=dtype),
                          indexing="ij")
    u = inv[0, 0] * xs + inv[0, 1] * ys + shift[0]                  # [h, w] input x
    v = inv[1, 0] * xs + inv[1, 1] * ys + shift[1]                  # [h, w] input y
    height, width = image.shape[0], image.shape[1]
    u0, v0 = jnp.floor(u), jnp.floor(v)
    fu, fv = u - u0, v - v0
    u0 = jnp.where(jnp.isfinite(u0), u0, -2).astype(jnp.int32)
    v0 = jnp.where(jnp.isfinite(v0), v0, -2).astype(jnp.int32)

    def tap(yi, xi):
        inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
        pixel = image[jnp.clip(yi, 0, height - 1), jnp.clip(xi, 0, width - 1)]  # [h, w, C]
        return jnp.where(inside[..., None], pixel, 0.0)

    w00 = ((1 - fu) * (1 - fv))[..., None]
    w01 = (fu * (1 - fv))[..., None]
    w10 = ((1 - fu) * fv)[..., None]
    w11 = (fu * fv)[..., None]
    out = (w00 * tap(v0, u0) + w01 * tap(v0, u0 + 1) + w10 * tap(v0 + 1, u0)
           + w11 * tap(v0 + 1, u0 + 1))
    return out


def warp_affine(image: jax.Array, matrix: jax.Array, size: int | tuple[int, int]) -> jax.Array:
    """Warp ``image`` by the affine ``matrix`` (input → output coordinates), bilinear,
    zero outside the image.

    Output pixel ``(x, y)`` takes the bilinear interpolation of the input at
    ``(u, v, 1)ᵀ = M⁻¹ (x, y, 1)ᵀ`` from its four neighbours ``⌊u⌋, ⌊u⌋+1`` ×
    ``⌊v⌋, ⌊v⌋+1``; a neighbour outside the image contributes 0 (``cv2.warpAffine``
    with ``borderValue=0``; ``skimage.transform.warp(order=1, mode="constant",
    cval=0)``). Differentiable in the image and the matrix.

    Args:
      image: ``[H, W, C]`` image (an integer image is converted to float).
      matrix: ``[3, 3]`` or ``[2, 3]`` affine map from input to output ``(x, y)``.
      size: output side ``S`` or ``(height, width)``.

    Returns:
      ``[S, S, C]`` (or ``[height, width, C]``) floating image.

    Example:
      >>> img = jnp.arange(12.).reshape(2, 2, 3)
      >>> bool(jnp.allclose(warp_affine(img, jnp.eye(3), 2), img))
      True
    """
    image = jnp.asarray(image)
    check_rank(image, "image", 3, "[H, W, C]")
    matrix = jnp.asarray(matrix)
    if matrix.shape not in ((3, 3), (2, 3)):
        raise ValueError(f"matrix must have shape [3, 3] or [2, 3], got shape "
                         f"{shape_str(matrix.shape)}")
    out_h, out_w = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    out_h, out_w = check_int(out_h, "size", 1), check_int(out_w, "size", 1)
    dtype = jnp.promote_types(float_dtype(image), float_dtype(matrix))
    return _warp(image.astype(dtype), matrix.astype(dtype), out_h, out_w)


def norm_crop(image: jax.Array, landmarks: jax.Array, size: int = 112) -> jax.Array:
    """The aligned ``size × size`` face crop: warp by :func:`estimate_norm`.

    ``crop(x, y) = bilinear(image, M⁻¹ (x, y, 1)ᵀ)`` with ``M = estimate_norm(landmarks,
    size)`` and zero outside the image — insightface's ``face_align.norm_crop``
    (``cv2.warpAffine(img, M[:2], (size, size), borderValue=0)``). ``vmap`` over a batch
    of images and landmarks.

    Args:
      image: ``[H, W, C]`` image.
      landmarks: ``[5, 2]`` face landmarks ``(x, y)`` in image pixels.
      size: side of the crop (112 for ArcFace models).

    Returns:
      ``[size, size, C]`` floating crop. Degenerate landmarks: ``ValueError`` naming
      ``landmarks`` when concrete; an all-NaN crop when traced.

    Example:
      >>> img = jnp.ones((112, 112, 3))
      >>> crop = norm_crop(img, jnp.asarray(ARCFACE_TEMPLATE))
      >>> crop.shape, float(crop[56, 56, 0])
      ((112, 112, 3), 1.0)

    Paper: Deng et al. 2019, "ArcFace: Additive Angular Margin Loss for Deep Face
    Recognition" (insightface's ``face_align.norm_crop``).
    """
    check_rank(image, "image", 3, "[H, W, C]")
    if shape_of(image)[0] == 0 or shape_of(image)[1] == 0:
        raise ValueError(f"image must be a non-empty [H, W, C] image, got shape "
                         f"{shape_str(shape_of(image))}")
    matrix = estimate_norm(landmarks, size)
    if is_concrete(matrix):             # concrete landmarks were checked: matrix is finite
        return warp_affine(image, matrix, size)
    good = jnp.all(jnp.isfinite(matrix))
    return poison(warp_affine(image, jnp.where(good, matrix, jnp.eye(3)), size), good)
