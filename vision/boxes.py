"""Axis-aligned boxes: format conversions, areas, pairwise IoU and generalized IoU.

Formats (last axis of size 4):

* ``xyxy``: ``(x0, y0, x1, y1)``, corners, ``x1 >= x0`` and ``y1 >= y0``;
* ``cxcywh``: ``(cx, cy, w, h)``, centre and size, what DETR's box head predicts
  (normalised to ``[0, 1]`` by the image width and height).

Degenerate boxes (zero width or height, identical, disjoint or touching boxes) give
finite values and finite gradients: a ratio whose denominator is zero is defined as
0 (IoU of two boxes whose union is empty; the enclosing-box penalty of GIoU when the
enclosing box is empty), computed with a ``where`` on a safe denominator so that
neither the value nor its gradient is NaN. For boxes of positive area the formulas
are exactly the paper's.

A *valid* box has finite coordinates and ``x1 >= x0``, ``y1 >= y0`` (``w, h >= 0``
in ``cxcywh``); :func:`valid_boxes` says which are. Invalid boxes follow the policy of
:mod:`common.checks`: eagerly (concrete arrays) every function raises ``ValueError``
naming the argument (:func:`check_boxes`); traced (inside ``jit``, ``vmap``, ``grad``)
the outputs that involve an invalid box are NaN: its row of a conversion, its area,
its row (``boxes1``) or column (``boxes2``) of a pairwise IoU/GIoU matrix, its
element of an elementwise one. Nothing plausible (an inverted box's GIoU of 1) comes
out of an invalid box.

Paper: Rezatofighi et al. 2019, "Generalized Intersection over Union: A Metric and a
Loss for Bounding Box Regression"; Carion et al. 2020, "End-to-End Object Detection
with Transformers" (DETR).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from common.checks import check_float_dtype, is_concrete, poison, shape_str

__all__ = [
    "box_area",
    "box_cxcywh_to_xyxy",
    "box_iou",
    "box_xyxy_to_cxcywh",
    "check_boxes",
    "elementwise_box_iou",
    "elementwise_generalized_box_iou",
    "generalized_box_iou",
    "giou_loss",
    "valid_boxes",
]


def _check_last4(boxes, name: str, spec: str, ndim: int | None = None) -> jax.Array:
    boxes = jnp.asarray(boxes)
    if boxes.ndim < 1 or boxes.shape[-1] != 4 or (ndim is not None and boxes.ndim != ndim):
        raise ValueError(f"{name} must have shape {spec}, got shape {shape_str(boxes.shape)}")
    check_float_dtype(boxes, name)
    return boxes


def check_boxes(boxes, name: str = "boxes", *, fmt: str = "xyxy",
                normalized: bool = False) -> None:
    """Raise ``ValueError`` for invalid box values (only when ``boxes`` is concrete).

    Checks that every coordinate is finite, that ``x1 >= x0`` and ``y1 >= y0``
    (``xyxy``) or ``w, h >= 0`` (``cxcywh``), and with ``normalized`` that the box
    corners lie in ``[0, 1]`` (a tolerance of 1e-6 allows rounding).

    Args:
      boxes: ``[..., 4]`` boxes.
      name: argument name used in the message.
      fmt: ``"xyxy"`` or ``"cxcywh"``.
      normalized: also require corners in ``[0, 1]``.

    Example:
      >>> check_boxes(jnp.array([[0.5, 0.5, 0.2, 0.1]]), fmt="cxcywh", normalized=True)
    """
    if fmt not in ("xyxy", "cxcywh"):
        raise ValueError(f"fmt must be 'xyxy' or 'cxcywh', got {fmt!r}")
    if not is_concrete(boxes):
        return
    b = np.asarray(boxes, dtype=np.float64)
    if b.size == 0:
        return
    if not np.all(np.isfinite(b)):
        raise ValueError(f"{name} contains NaN or infinite coordinates")
    if fmt == "cxcywh":
        if np.any(b[..., 2:] < 0):
            raise ValueError(f"{name} (cx, cy, w, h) has a negative width or height")
        xyxy = np.concatenate([b[..., :2] - 0.5 * b[..., 2:], b[..., :2] + 0.5 * b[..., 2:]], -1)
    else:
        if np.any(b[..., 2:] < b[..., :2]):
            bad = np.argwhere(np.any(b[..., 2:] < b[..., :2], axis=-1))[0]
            raise ValueError(f"{name} (x0, y0, x1, y1) has x1 < x0 or y1 < y0 at index "
                             f"{tuple(int(i) for i in bad)}: {b[tuple(bad)].tolist()}")
        xyxy = b
    if normalized and (np.any(xyxy < -1e-6) or np.any(xyxy > 1 + 1e-6)):
        raise ValueError(f"{name} must be normalised boxes with corners in [0, 1], got values "
                         f"in [{xyxy.min():.4g}, {xyxy.max():.4g}]")


def valid_boxes(boxes: jax.Array, fmt: str = "xyxy") -> jax.Array:
    """Which boxes are valid: finite, ``x1 >= x0`` and ``y1 >= y0`` (``w, h >= 0``).

    The traced form of :func:`check_boxes` (without its ``normalized`` option).

    Args:
      boxes: ``[..., 4]`` boxes.
      fmt: ``"xyxy"`` or ``"cxcywh"``.

    Returns:
      ``[...]`` boolean.

    Example:
      >>> valid_boxes(jnp.array([[0., 0., 1., 1.], [0.5, 0., 0.2, 1.]])).tolist()
      [True, False]
    """
    if fmt not in ("xyxy", "cxcywh"):
        raise ValueError(f"fmt must be 'xyxy' or 'cxcywh', got {fmt!r}")
    boxes = jnp.asarray(boxes)
    size = boxes[..., 2:] if fmt == "cxcywh" else boxes[..., 2:] - boxes[..., :2]
    return jnp.all(jnp.isfinite(boxes), axis=-1) & jnp.all(size >= 0, axis=-1)


def _checked(boxes, name: str, spec: str, fmt: str, ndim: int | None = None):
    """Shape and dtype checks, the eager value check, and the traced validity ``[...]``."""
    boxes = _check_last4(boxes, name, spec, ndim)
    check_boxes(boxes, name, fmt=fmt)
    return boxes, valid_boxes(boxes, fmt)


def box_cxcywh_to_xyxy(boxes: jax.Array) -> jax.Array:
    """``(cx, cy, w, h) → (cx - w/2, cy - h/2, cx + w/2, cy + h/2)``.

    Args:
      boxes: ``[..., 4]`` in ``cxcywh``, ``w, h >= 0``.

    Returns:
      ``[..., 4]`` in ``xyxy`` (NaN rows for invalid boxes when traced).

    Example:
      >>> box_cxcywh_to_xyxy(jnp.array([0.5, 0.5, 0.25, 0.5])).tolist()
      [0.375, 0.25, 0.625, 0.75]
    """
    boxes, ok = _checked(boxes, "boxes", "[..., 4] (cx, cy, w, h)", "cxcywh")
    center, size = boxes[..., :2], boxes[..., 2:]
    return poison(jnp.concatenate([center - 0.5 * size, center + 0.5 * size], axis=-1),
                  ok[..., None])


def box_xyxy_to_cxcywh(boxes: jax.Array) -> jax.Array:
    """``(x0, y0, x1, y1) → ((x0 + x1)/2, (y0 + y1)/2, x1 - x0, y1 - y0)``.

    Args:
      boxes: ``[..., 4]`` in ``xyxy``, ``x1 >= x0``, ``y1 >= y0``.

    Returns:
      ``[..., 4]`` in ``cxcywh`` (NaN rows for invalid boxes when traced).

    Example:
      >>> box_xyxy_to_cxcywh(jnp.array([0.0, 0.0, 2.0, 4.0])).tolist()
      [1.0, 2.0, 2.0, 4.0]
    """
    boxes, ok = _checked(boxes, "boxes", "[..., 4] (x0, y0, x1, y1)", "xyxy")
    lo, hi = boxes[..., :2], boxes[..., 2:]
    return poison(jnp.concatenate([0.5 * (lo + hi), hi - lo], axis=-1), ok[..., None])


def box_area(boxes: jax.Array) -> jax.Array:
    """``(x1 - x0) · (y1 - y0)`` of ``xyxy`` boxes.

    Args:
      boxes: ``[..., 4]`` in ``xyxy``, ``x1 >= x0``, ``y1 >= y0``.

    Returns:
      ``[...]`` areas (NaN for invalid boxes when traced).

    Example:
      >>> box_area(jnp.array([[0.0, 0.0, 2.0, 3.0]])).tolist()
      [6.0]
    """
    boxes, ok = _checked(boxes, "boxes", "[..., 4] (x0, y0, x1, y1)", "xyxy")
    return poison((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1]), ok)


def _safe_ratio(num: jax.Array, den: jax.Array) -> jax.Array:
    """``num / den`` where ``den > 0``, else 0, with finite gradients everywhere."""
    positive = den > 0
    return jnp.where(positive, num / jnp.where(positive, den, 1.0), 0.0)


def _iou_terms(b1: jax.Array, b2: jax.Array):
    """Intersection, union and enclosing area of broadcast ``xyxy`` boxes ``[..., 4]``."""
    area1 = (b1[..., 2] - b1[..., 0]) * (b1[..., 3] - b1[..., 1])
    area2 = (b2[..., 2] - b2[..., 0]) * (b2[..., 3] - b2[..., 1])
    lt = jnp.maximum(b1[..., :2], b2[..., :2])
    rb = jnp.minimum(b1[..., 2:], b2[..., 2:])
    wh = jnp.clip(rb - lt, 0.0)  # [..., 2]
    inter = wh[..., 0] * wh[..., 1]
    union = area1 + area2 - inter
    lt_c = jnp.minimum(b1[..., :2], b2[..., :2])
    rb_c = jnp.maximum(b1[..., 2:], b2[..., 2:])
    wh_c = jnp.clip(rb_c - lt_c, 0.0)
    enclosing = wh_c[..., 0] * wh_c[..., 1]
    return inter, union, enclosing


def _pairwise_inputs(boxes1, boxes2):
    """Broadcast boxes ``[N, 1, 4]``, ``[1, M, 4]`` and the validity of each pair ``[N, M]``."""
    boxes1, ok1 = _checked(boxes1, "boxes1", "[N, 4] (x0, y0, x1, y1)", "xyxy", ndim=2)
    boxes2, ok2 = _checked(boxes2, "boxes2", "[M, 4] (x0, y0, x1, y1)", "xyxy", ndim=2)
    dtype = jnp.promote_types(boxes1.dtype, boxes2.dtype)
    return (boxes1.astype(dtype)[:, None, :], boxes2.astype(dtype)[None, :, :],
            ok1[:, None] & ok2[None, :])


def box_iou(boxes1: jax.Array, boxes2: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Pairwise intersection over union of two sets of ``xyxy`` boxes.

    ``IoU_ij = |A_i ∩ B_j| / |A_i ∪ B_j|`` (0 when the union is empty).

    Args:
      boxes1: ``[N, 4]`` in ``xyxy``.
      boxes2: ``[M, 4]`` in ``xyxy``.

    Returns:
      ``(iou [N, M], union [N, M])``; traced, NaN in the rows and columns of invalid
      boxes.

    Example:
      >>> iou, _ = box_iou(jnp.array([[0., 0., 2., 2.]]), jnp.array([[1., 0., 3., 2.]]))
      >>> round(float(iou[0, 0]), 4)
      0.3333
    """
    b1, b2, ok = _pairwise_inputs(boxes1, boxes2)
    inter, union, _ = _iou_terms(b1, b2)
    return poison((_safe_ratio(inter, union), union), ok)


def generalized_box_iou(boxes1: jax.Array, boxes2: jax.Array) -> jax.Array:
    """Pairwise generalized IoU of two sets of ``xyxy`` boxes.

    ``GIoU_ij = IoU_ij - (|C_ij| - |A_i ∪ B_j|) / |C_ij|`` with ``C_ij`` the smallest
    box enclosing ``A_i`` and ``B_j``; in ``[-1, 1]``, equal to 1 only for identical
    boxes of positive area. Ratios with an empty denominator are 0.

    Args:
      boxes1: ``[N, 4]`` in ``xyxy`` (``x1 >= x0``, ``y1 >= y0``).
      boxes2: ``[M, 4]`` in ``xyxy``.

    Returns:
      ``[N, M]`` generalized IoU; traced, NaN in the rows and columns of invalid boxes.

    Example:
      >>> a = jnp.array([[0., 0., 1., 1.]]); b = jnp.array([[2., 0., 3., 1.]])
      >>> float(generalized_box_iou(a, b)[0, 0])  # disjoint: IoU 0, enclosing 3, union 2
      -0.3333333432674408

    Paper: Rezatofighi et al. 2019, Algorithm 1.
    """
    b1, b2, ok = _pairwise_inputs(boxes1, boxes2)
    inter, union, enclosing = _iou_terms(b1, b2)
    return poison(_safe_ratio(inter, union) - _safe_ratio(enclosing - union, enclosing), ok)


def _elementwise_inputs(boxes1, boxes2):
    """Both sets of boxes ``[..., 4]`` and the validity of each pair ``[...]``."""
    boxes1 = _check_last4(boxes1, "boxes1", "[..., 4] (x0, y0, x1, y1)")
    boxes2 = _check_last4(boxes2, "boxes2", "[..., 4] (x0, y0, x1, y1)")
    if boxes1.shape != boxes2.shape:
        raise ValueError(f"boxes1 and boxes2 must have the same shape [..., 4], got "
                         f"{shape_str(boxes1.shape)} and {shape_str(boxes2.shape)}")
    check_boxes(boxes1, "boxes1")
    check_boxes(boxes2, "boxes2")
    dtype = jnp.promote_types(boxes1.dtype, boxes2.dtype)
    return boxes1.astype(dtype), boxes2.astype(dtype), valid_boxes(boxes1) & valid_boxes(boxes2)


def elementwise_box_iou(boxes1: jax.Array, boxes2: jax.Array) -> jax.Array:
    """IoU of corresponding ``xyxy`` boxes, ``boxes1[..., i]`` with ``boxes2[..., i]``.

    Args:
      boxes1: ``[..., 4]`` in ``xyxy``.
      boxes2: ``[..., 4]`` in ``xyxy``, same shape.

    Returns:
      ``[...]`` IoU (NaN where a box is invalid, when traced).

    Example:
      >>> float(elementwise_box_iou(jnp.array([0., 0., 1., 1.]), jnp.array([0., 0., 1., 1.])))
      1.0
    """
    b1, b2, ok = _elementwise_inputs(boxes1, boxes2)
    inter, union, _ = _iou_terms(b1, b2)
    return poison(_safe_ratio(inter, union), ok)


def elementwise_generalized_box_iou(boxes1: jax.Array, boxes2: jax.Array) -> jax.Array:
    """Generalized IoU of corresponding ``xyxy`` boxes (the diagonal of
    :func:`generalized_box_iou` without the ``[N, N]`` matrix).

    Args:
      boxes1: ``[..., 4]`` in ``xyxy``.
      boxes2: ``[..., 4]`` in ``xyxy``, same shape.

    Returns:
      ``[...]`` GIoU (NaN where a box is invalid, when traced).

    Example:
      >>> float(elementwise_generalized_box_iou(jnp.array([0., 0., 1., 1.]),
      ...                                       jnp.array([0., 0., 1., 1.])))
      1.0

    Paper: Rezatofighi et al. 2019.
    """
    b1, b2, ok = _elementwise_inputs(boxes1, boxes2)
    inter, union, enclosing = _iou_terms(b1, b2)
    return poison(_safe_ratio(inter, union) - _safe_ratio(enclosing - union, enclosing), ok)


def giou_loss(boxes1: jax.Array, boxes2: jax.Array) -> jax.Array:
    """GIoU loss ``1 - GIoU`` of corresponding ``xyxy`` boxes, in ``[0, 2]``.

    Args:
      boxes1: ``[..., 4]`` predicted boxes in ``xyxy``.
      boxes2: ``[..., 4]`` target boxes in ``xyxy``, same shape.

    Returns:
      ``[...]`` per-box losses (reduce them yourself; DETR sums and divides by the
      number of target boxes).

    Example:
      >>> float(giou_loss(jnp.array([0., 0., 1., 1.]), jnp.array([2., 0., 3., 1.])))
      1.3333333730697632

    Paper: Rezatofighi et al. 2019, section 3 (``L_GIoU = 1 - GIoU``).
    """
    return 1.0 - elementwise_generalized_box_iou(boxes1, boxes2)
