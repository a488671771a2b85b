"""Object keypoint similarity (OKS), COCO's keypoint IoU, as a pure jittable function.

For a prediction ``d`` and a ground-truth person ``g`` with ``K`` keypoints
``(x_k, y_k, v_k)`` and area ``s²``::

    e_k  = ((x̂_k − x_k)² + (ŷ_k − y_k)²) / (2 · s² · (2σ_k)²)
    OKS  = Σ_{k: v_k > 0} exp(−e_k) / #{k: v_k > 0}

exactly as pycocotools' ``COCOeval.computeOks`` (which adds ``np.spacing(1)`` to the
area). A ground truth without labelled keypoints (all ``v_k = 0``) is scored, as there,
by the distance of each predicted keypoint outside the box ``[x − w, x + 2w] × [y − h,
y + 2h]`` (``boxes`` required; without ``boxes`` such pairs get OKS 0), averaged over all
``K`` keypoints.

Bad input: shapes are checked at trace time naming the argument (a ``sigmas`` of the
wrong length, keypoint counts that differ between ``pred`` and ``gt``). Eagerly, negative
or non-finite ``areas`` and non-positive ``sigmas`` raise ``ValueError``; traced, they
make the affected result NaN (:mod:`common.checks`).

Paper: Lin et al. 2014 (COCO), keypoint evaluation; Ronchi & Perona 2017, "Benchmarking
and Error Diagnosis in Multi-Instance Pose Estimation".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from common.checks import check_float_dtype, poison, shape_of, shape_str, value_ok

__all__ = ["COCO_KEYPOINT_NAMES", "COCO_SIGMAS", "COCO_SKELETON", "oks"]

#: COCO's 17 keypoints, in order.
COCO_KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip",
    "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)

#: COCO's per-keypoint OKS constants σ_k (pycocotools' default ``kpt_oks_sigmas``).
COCO_SIGMAS = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07,
                        .87, .87, .89, .89]) / 10.0

#: COCO's skeleton as 1-based keypoint pairs (the ``categories`` entry of COCO files).
COCO_SKELETON = ((16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7),
                 (6, 8), (7, 9), (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5),
                 (4, 6), (5, 7))

_SPACING = float(np.spacing(1.0))


def oks(pred: jax.Array, gt: jax.Array, areas: jax.Array, sigmas=None, *,
        boxes: jax.Array | None = None) -> jax.Array:
    """OKS of every prediction against every ground truth, ``[N, M]``.

    Args:
      pred: ``[N, K, 2]`` predicted ``(x, y)``.
      gt: ``[M, K, 3]`` ground truth ``(x, y, visibility)``; visibility 0 means
        unlabelled (COCO: 1 labelled but occluded, 2 visible).
      areas: ``[M]`` ground-truth areas ``s²`` (>= 0).
      sigmas: ``[K]`` per-keypoint constants (> 0); default :data:`COCO_SIGMAS` (K = 17).
      boxes: optional ``[M, 4]`` ``[x, y, w, h]`` boxes, used only for ground truths
        without labelled keypoints (see the module docstring).

    Returns:
      ``[N, M]`` OKS in ``[0, 1]``.

    Example:
      >>> gt = jnp.concatenate([jnp.zeros((1, 17, 2)), jnp.full((1, 17, 1), 2.0)], -1)
      >>> oks(jnp.zeros((1, 17, 2)), gt, jnp.array([100.0])).tolist()
      [[1.0]]

    Paper: Lin et al. 2014; pycocotools ``COCOeval.computeOks``.
    """
    if jnp.ndim(pred) != 3 or shape_of(pred)[-1] != 2:
        raise ValueError(f"pred must have shape [N, K, 2], got shape {shape_str(shape_of(pred))}")
    check_float_dtype(pred, "pred")
    k = shape_of(pred)[1]
    if jnp.ndim(gt) != 3 or shape_of(gt)[1:] != (k, 3):
        raise ValueError(f"gt must have shape [M, K, 3] = [M, {k}, 3] (K from pred), got "
                         f"shape {shape_str(shape_of(gt))}")
    m = shape_of(gt)[0]
    if shape_of(areas) != (m,):
        raise ValueError(f"areas must have shape [M] = ({m}), got shape "
                         f"{shape_str(shape_of(areas))}")
    if sigmas is None:
        sigmas = COCO_SIGMAS
    if shape_of(sigmas) != (k,):
        raise ValueError(f"sigmas must have shape [K] = ({k}) (one per keypoint), got shape "
                         f"{shape_str(shape_of(sigmas))}")
    if boxes is not None and shape_of(boxes) != (m, 4):
        raise ValueError(f"boxes must have shape [M, 4] = ({m}, 4), got shape "
                         f"{shape_str(shape_of(boxes))}")
    ok = value_ok(areas, "areas", lambda a: jnp.isfinite(a) & (a >= 0), "finite and >= 0")
    ok = ok & value_ok(sigmas, "sigmas", lambda s: jnp.isfinite(s) & (s > 0), "finite and > 0")
    dtype = jnp.result_type(pred.dtype, jnp.float32)
    pred = jnp.asarray(pred, dtype)
    gt = jnp.asarray(gt, dtype)
    sigmas = jnp.asarray(sigmas, dtype)
    areas = jnp.asarray(areas, dtype)
    variances = (2.0 * sigmas) ** 2                                   # [K]
    labelled = gt[..., 2] > 0                                         # [M, K]
    dx = pred[:, None, :, 0] - gt[None, :, :, 0]                      # [N, M, K]
    dy = pred[:, None, :, 1] - gt[None, :, :, 1]
    if boxes is not None:
        boxes = jnp.asarray(boxes, dtype)
        x0 = boxes[:, 0] - boxes[:, 2]
        x1 = boxes[:, 0] + 2 * boxes[:, 2]
        y0 = boxes[:, 1] - boxes[:, 3]
        y1 = boxes[:, 1] + 2 * boxes[:, 3]
        px, py = pred[:, None, :, 0], pred[:, None, :, 1]             # [N, 1, K]
        bx = (jnp.maximum(0.0, x0[None, :, None] - px)
              + jnp.maximum(0.0, px - x1[None, :, None]))             # [N, M, K]
        by = (jnp.maximum(0.0, y0[None, :, None] - py)
              + jnp.maximum(0.0, py - y1[None, :, None]))
        any_lab = jnp.any(labelled, axis=-1)[None, :, None]           # [1, M, 1]
        dx = jnp.where(any_lab, dx, bx)
        dy = jnp.where(any_lab, dy, by)
    e = (dx**2 + dy**2) / variances[None, None, :] / (areas[None, :, None] + _SPACING) / 2.0
    count = jnp.sum(labelled, axis=-1).astype(dtype)                  # [M]
    sim = jnp.exp(-e)
    labelled_mean = jnp.sum(jnp.where(labelled[None], sim, 0.0), axis=-1) / jnp.maximum(
        count, 1.0)[None, :]
    if boxes is not None:
        out = jnp.where(count[None] > 0, labelled_mean, jnp.mean(sim, axis=-1))
    else:
        out = jnp.where(count[None] > 0, labelled_mean, 0.0)
    return poison(out, ok)
