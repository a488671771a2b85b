"""A single-stage face detector with five landmarks (CenterNet style), NMS, AP and NME.

Model (:class:`FaceDetector`): the shared :class:`common.nn.resnet.ResNet`; its last
stage is projected, upsampled to the stride ``R`` of the stage before it and added to
that stage's projection (one top-down step of a feature pyramid); a 3×3 convolution and
a 1×1 convolution then predict, at every cell of the ``[h, w] = [H/R, W/R]`` grid,

* a face-centre **heatmap** logit (the cell holds a face centre),
* the centre's sub-cell **offset** ``c/R − ⌊c/R⌋`` (2 numbers),
* the box **size** ``log(w/R), log(h/R)`` (2 numbers),
* the five **landmarks** relative to the centre, in box units
  ``((x_k − c_x)/w, (y_k − c_y)/h)`` (10 numbers).

Targets (:func:`encode_targets`): face ``t`` with centre ``c_t`` (pixels) sits at cell
``ĉ_t = ⌊c_t / R⌋``; the heatmap target is ``Y_xy = max_t exp(−‖(x, y) − ĉ_t‖² / 2σ_t²)``
with ``σ_t = max(σ_min, κ · √(w_t h_t) / R)`` (a simpler rule than CenterNet's
IoU-based radius; ``κ = 0.1``, ``σ_min = 0.5``), equal to 1 exactly at the centres.

Loss (:func:`detector_loss`): CenterNet's penalty-reduced focal loss on the heatmap
(``α = 2, β = 4``) plus L1 losses on offset, size and landmarks read at the true centre
cells, each normalised by the number of faces.

Decoding (:func:`decode`): heatmap peaks (a cell equal to the maximum of its 3×3
neighbourhood), the top ``K`` of them by score, then fixed-size greedy NMS
(:func:`nms`), all jittable and ``vmap``-able. Evaluation: COCO bbox AP through
:mod:`vision.coco` (:func:`coco_face_metrics`) and the landmark normalised mean error
(:func:`landmark_nme`) of the detections matched to the faces
(:func:`match_detections`).

Coordinates are pixels, pixel ``(row r, column c)`` centred at ``(x, y) = (c, r)``
(scikit-image's convention, :mod:`vision.face.synthetic`); boxes are ``xyxy``.

Paper: Zhou et al. 2019, "Objects as Points" (CenterNet); Deng et al. 2020,
"RetinaFace: Single-shot Multi-level Face Localisation in the Wild" (boxes with five
landmarks in one stage); Lin et al. 2017, "Focal Loss for Dense Object Detection".
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from common.checks import (
    check_fields,
    check_float_dtype,
    check_int,
    check_rank,
    is_concrete,
    poison,
    shape_of,
    shape_str,
)
from common.nn.conv import Conv2D
from common.nn.resnet import ResNet, ResNetConfig
from vision.boxes import box_iou, check_boxes
from vision.coco import coco_detections, coco_ground_truth, evaluate_bbox

__all__ = [
    "Detections",
    "DetectorConfig",
    "FaceDetector",
    "coco_face_metrics",
    "decode",
    "detector_loss",
    "encode_targets",
    "landmark_nme",
    "match_detections",
    "nms",
    "normalize_images",
]

#: Channels of the head's output: heatmap 1, offset 2, size 2, landmarks 10.
HEAD_CHANNELS = 15
_PRIOR_LOGIT = -2.19  # sigmoid = 0.1, CenterNet's heatmap bias


def normalize_images(images_u8: jax.Array) -> jax.Array:
    """``(x / 255 − 0.5) / 0.25``: uint8 ``[..., 3]`` images to the network's float input."""
    return (jnp.asarray(images_u8, jnp.float32) / 255.0 - 0.5) / 0.25


@dataclasses.dataclass(frozen=True)
class DetectorConfig:
    """Architecture and loss weights of :class:`FaceDetector`.

    Attributes:
      backbone: a :class:`ResNetConfig` with at least two stages; the output stride
        ``R`` is the stride of its second-to-last stage.
      head_channels: width of the pyramid merge and the head.
      sigma_scale, sigma_min: heatmap Gaussian ``σ = max(σ_min, κ √(wh) / R)``.
      focal_alpha, focal_beta: CenterNet's focal-loss exponents.
      weight_offset, weight_size, weight_landmarks: L1 loss weights.
    """

    backbone: ResNetConfig = ResNetConfig(stem_channels=16, stem_kernel=3, stem_stride=2,
                                          stem_pool=False, channels=(16, 32, 64),
                                          blocks=(1, 1, 1), strides=(1, 2, 2),
                                          norm="groupnorm", norm_groups=8)
    head_channels: int = 32
    sigma_scale: float = 0.1
    sigma_min: float = 0.5
    focal_alpha: float = 2.0
    focal_beta: float = 4.0
    weight_offset: float = 1.0
    weight_size: float = 1.0
    weight_landmarks: float = 2.0

    def validate(self) -> None:
        if not isinstance(self.backbone, ResNetConfig):
            raise ValueError(f"backbone must be a ResNetConfig, got {type(self.backbone)}")
        if len(self.backbone.channels) < 2:
            raise ValueError("backbone must have at least two stages, got "
                             f"{len(self.backbone.channels)}")
        check_fields(self, positive_ints=("head_channels",),
                     positive=("sigma_scale", "sigma_min", "focal_alpha"),
                     nonnegative=("focal_beta", "weight_offset", "weight_size",
                                  "weight_landmarks"))

    @property
    def stride(self) -> int:
        """Output stride ``R`` (pixels per heatmap cell)."""
        return self.backbone.stage_strides[-2]


class FaceDetector(nnx.Module):
    """CenterNet-style face detector with landmarks over the shared ResNet.

    Args:
      config: a :class:`DetectorConfig`.
      rngs: ``nnx.Rngs`` (stream ``params``).

    Call:
      ``x [B, H, W, 3]`` normalised images (:func:`normalize_images`), ``H`` and ``W``
      multiples of the backbone's total stride → dict of ``heatmap [B, h, w]`` logits,
      ``offset [B, h, w, 2]``, ``size [B, h, w, 2]``, ``landmarks [B, h, w, 10]``
      with ``h = H / R``, ``w = W / R``.

    Example:
      >>> model = FaceDetector(DetectorConfig(), rngs=nnx.Rngs(0))
      >>> model(jnp.zeros((1, 32, 32, 3)))["heatmap"].shape
      (1, 8, 8)

    Paper: Zhou et al. 2019 (CenterNet); Lin et al. 2017 (feature pyramid).
    """

    def __init__(self, config: DetectorConfig, *, rngs: nnx.Rngs):
        if not isinstance(config, DetectorConfig):
            raise ValueError(f"config must be a DetectorConfig, got {type(config).__name__}")
        config.validate()
        self.config = config
        b = config.backbone
        hc = config.head_channels
        self.backbone = ResNet(b, 3, rngs=rngs)
        self.lateral_fine = Conv2D(b.channels[-2], hc, 1, rngs=rngs)
        self.lateral_coarse = Conv2D(b.channels[-1], hc, 1, rngs=rngs)
        self.head_conv = Conv2D(hc, hc, 3, rngs=rngs)
        bias = jnp.zeros((HEAD_CHANNELS,)).at[0].set(_PRIOR_LOGIT)
        self.head_out = Conv2D(hc, HEAD_CHANNELS, 1, rngs=rngs,
                               kernel_init=nnx.initializers.normal(0.01),
                               bias_init=lambda *_: bias)
        self.up = b.stage_strides[-1] // b.stage_strides[-2]

    def __call__(self, x: jax.Array, *, deterministic: bool = True) -> dict[str, jax.Array]:
        total = self.config.backbone.stride
        if jnp.ndim(x) != 4 or shape_of(x)[-1] != 3 or shape_of(x)[1] % total or shape_of(
                x)[2] % total:
            raise ValueError(f"x must have shape [B, H, W, 3] with H and W multiples of "
                             f"{total}, got shape {shape_str(shape_of(x))}")
        check_float_dtype(x, "x")
        feats = self.backbone(x, deterministic=deterministic)
        coarse = self.lateral_coarse(feats[-1])
        coarse = jnp.repeat(jnp.repeat(coarse, self.up, axis=1), self.up, axis=2)
        h = jax.nn.relu(self.lateral_fine(feats[-2]) + coarse)
        out = self.head_out(jax.nn.relu(self.head_conv(h)))  # [B, h, w, 15]
        return {"heatmap": out[..., 0], "offset": out[..., 1:3], "size": out[..., 3:5],
                "landmarks": out[..., 5:15]}


# ----------------------------------------------------------------------------- targets


def _check_targets(boxes, landmarks, mask):
    check_rank(boxes, "boxes", 3, "[B, T, 4]")
    B, T, four = shape_of(boxes)
    if four != 4:
        raise ValueError(f"boxes must have shape [B, T, 4], got shape {shape_str((B, T, four))}")
    if shape_of(landmarks) != (B, T, 5, 2):
        raise ValueError(f"landmarks must have shape [B, T, 5, 2] = {shape_str((B, T, 5, 2))}, "
                         f"got shape {shape_str(shape_of(landmarks))}")
    if shape_of(mask) != (B, T):
        raise ValueError(f"mask must have shape [B, T] = {shape_str((B, T))}, got shape "
                         f"{shape_str(shape_of(mask))}")
    check_float_dtype(boxes, "boxes")
    check_float_dtype(landmarks, "landmarks")
    if is_concrete(boxes) and is_concrete(mask):
        real = np.asarray(mask, bool)
        b = np.asarray(boxes, np.float64)[real]
        check_boxes(b, "boxes")
        if b.size and np.any(b[:, 2:] <= b[:, :2]):
            raise ValueError("boxes of real faces must have x1 > x0 and y1 > y0")


def encode_targets(boxes: jax.Array, landmarks: jax.Array, mask: jax.Array,
                   grid: tuple[int, int], config: DetectorConfig) -> dict[str, jax.Array]:
    """CenterNet targets of padded faces on an ``[h, w]`` grid of stride ``R``.

    ``ĉ = ⌊c / R⌋`` with ``c`` the box centre; heatmap ``max_t exp(−‖p − ĉ_t‖² / 2σ_t²)``;
    ``offset = c/R − ĉ``; ``size = log((x1 − x0)/R), log((y1 − y0)/R)``; landmarks
    ``((x_k − c_x)/w, (y_k − c_y)/h)``.

    Args:
      boxes: ``[B, T, 4]`` ``xyxy`` pixels (real faces: positive width and height).
      landmarks: ``[B, T, 5, 2]`` ``(x, y)`` pixels.
      mask: ``[B, T]`` bool, real faces.
      grid: ``(h, w)`` of the heatmap.
      config: the :class:`DetectorConfig` (stride, σ rule).

    Returns:
      dict of ``heatmap [B, h, w]``, ``index [B, T]`` (flat cell ``ĉ_y·w + ĉ_x``, clipped
      to the grid), ``offset [B, T, 2]``, ``size [B, T, 2]``, ``landmarks [B, T, 10]``.
      Traced invalid boxes (``x1 <= x0``) of real faces give NaN targets.

    Example:
      >>> t = encode_targets(jnp.array([[[8., 8., 24., 24.]]]), jnp.full((1, 1, 5, 2), 16.),
      ...                    jnp.array([[True]]), (8, 8), DetectorConfig())
      >>> int(t["index"][0, 0]), float(t["heatmap"][0, 4, 4])
      (36, 1.0)
    """
    _check_targets(boxes, landmarks, mask)
    h, w = (check_int(v, "grid") for v in grid)
    R = config.stride
    boxes = jnp.asarray(boxes, jnp.float32)
    mask = jnp.asarray(mask, bool)
    wh = boxes[..., 2:] - boxes[..., :2]  # [B, T, 2]
    ok = jnp.all(wh > 0, -1) | ~mask
    wh = jnp.where(mask[..., None], jnp.maximum(wh, 1e-6), 1.0)
    centre = 0.5 * (boxes[..., :2] + boxes[..., 2:])
    cell = jnp.floor(centre / R)
    cell = jnp.clip(cell, 0.0, jnp.array([[[w - 1, h - 1]]], jnp.float32))
    sigma = jnp.maximum(config.sigma_min,
                        config.sigma_scale * jnp.sqrt(wh[..., 0] * wh[..., 1]) / R)
    ys, xs = jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32)
    dx2 = (xs[None, None, None, :] - cell[..., 0][..., None, None]) ** 2  # [B, T, 1, w]
    dy2 = (ys[None, None, :, None] - cell[..., 1][..., None, None]) ** 2  # [B, T, h, 1]
    g = jnp.exp(-(dx2 + dy2) / (2.0 * sigma[..., None, None] ** 2))  # [B, T, h, w]
    heat = jnp.max(jnp.where(mask[..., None, None], g, 0.0), axis=1, initial=0.0)
    index = (cell[..., 1] * w + cell[..., 0]).astype(jnp.int32)
    rel = (jnp.asarray(landmarks, jnp.float32) - centre[..., None, :]) / wh[..., None, :]
    targets = {"heatmap": heat, "index": jnp.where(mask, index, 0),
               "offset": centre / R - cell, "size": jnp.log(wh / R),
               "landmarks": rel.reshape((*rel.shape[:2], 10))}
    return {k: (v if k in ("heatmap", "index") else
                jnp.where(ok[..., None], v, jnp.nan)) for k, v in targets.items()}


def _gather(pred: jax.Array, index: jax.Array) -> jax.Array:
    """``pred [B, h, w, C]`` at flat cells ``index [B, T]`` → ``[B, T, C]``."""
    B, h, w, C = pred.shape
    return jnp.take_along_axis(pred.reshape(B, h * w, C), index[..., None], axis=1)


def detector_loss(outputs: dict[str, jax.Array], targets: dict[str, jax.Array],
                  mask: jax.Array, config: DetectorConfig) -> tuple[jax.Array, dict]:
    """CenterNet's loss with landmarks: focal heatmap loss plus L1 regressions.

    ``L_heat = −1/N Σ_xy { (1 − p)^α log p                if Y = 1
                          (1 − Y)^β p^α log(1 − p)      otherwise }``,
    ``L_• = 1/N Σ_t m_t ‖ŷ_•(ĉ_t) − y_•,t‖₁`` for offset, size and landmarks, with
    ``N = max(1, Σ_t m_t)`` per batch; total ``L_heat + λ_off L_off + λ_size L_size +
    λ_lm L_lm``.

    Args:
      outputs: the model's dict (``heatmap [B, h, w]`` logits, ``offset``, ``size``,
        ``landmarks`` ``[B, h, w, ·]``).
      targets: :func:`encode_targets` of the batch.
      mask: ``[B, T]`` bool, real faces.
      config: the :class:`DetectorConfig` (exponents and weights).

    Returns:
      ``(loss, metrics)`` with ``loss_heatmap``, ``loss_offset``, ``loss_size``,
      ``loss_landmarks``.

    Example:
      >>> loss, parts = detector_loss(model(x), encode_targets(...), mask, config)

    Paper: Zhou et al. 2019, equations 1–3.
    """
    heat = outputs["heatmap"]
    if shape_of(heat) != shape_of(targets["heatmap"]):
        raise ValueError(f"outputs['heatmap'] must have the targets' shape "
                         f"{shape_str(shape_of(targets['heatmap']))}, got "
                         f"{shape_str(shape_of(heat))}")
    if shape_of(mask) != shape_of(targets["index"]):
        raise ValueError(f"mask must have shape [B, T] = {shape_str(shape_of(targets['index']))}"
                         f", got {shape_str(shape_of(mask))}")
    mask = jnp.asarray(mask, jnp.float32)
    n = jnp.maximum(1.0, jnp.sum(mask))
    y = targets["heatmap"]
    log_p, log_1p = jax.nn.log_sigmoid(heat), jax.nn.log_sigmoid(-heat)
    p = jnp.exp(log_p)
    pos = y >= 1.0
    a, b = config.focal_alpha, config.focal_beta
    focal = jnp.where(pos, (1.0 - p) ** a * log_p, (1.0 - y) ** b * p ** a * log_1p)
    l_heat = -jnp.sum(focal) / n

    def l1(name):
        pred = _gather(outputs[name], targets["index"])
        diff = jnp.where(mask[..., None] > 0, jnp.abs(pred - targets[name]), 0.0)
        return jnp.sum(diff) / n

    parts = {"loss_heatmap": l_heat, "loss_offset": l1("offset"), "loss_size": l1("size"),
             "loss_landmarks": l1("landmarks")}
    loss = (l_heat + config.weight_offset * parts["loss_offset"]
            + config.weight_size * parts["loss_size"]
            + config.weight_landmarks * parts["loss_landmarks"])
    return loss, parts


# ----------------------------------------------------------------------------- decoding


class Detections(NamedTuple):
    """Fixed-size detections (``M`` slots; invalid slots are zeros with ``valid`` False).

    Attributes:
      boxes: ``[..., M, 4]`` ``xyxy`` pixels.
      scores: ``[..., M]`` face probabilities, descending among valid slots.
      landmarks: ``[..., M, 5, 2]`` ``(x, y)`` pixels.
      valid: ``[..., M]`` bool.
    """

    boxes: jax.Array
    scores: jax.Array
    landmarks: jax.Array
    valid: jax.Array


def nms(boxes: jax.Array, scores: jax.Array, *, iou_threshold: float = 0.4,
        max_output: int = 10, score_threshold: float = 0.0) -> tuple[jax.Array, jax.Array]:
    """Greedy non-maximum suppression with a fixed output size (jittable, ``vmap``-able).

    Visit boxes by descending score (ties: lower index first); keep a box unless its IoU
    with an already kept box exceeds ``iou_threshold``; boxes scoring at most
    ``score_threshold`` are never kept. Returns the first ``max_output`` kept.

    Args:
      boxes: ``[K, 4]`` ``xyxy``.
      scores: ``[K]``.
      iou_threshold: suppress at IoU strictly above this.
      max_output: ``M``, the fixed number of returned slots.
      score_threshold: keep only boxes scoring above this.

    Returns:
      ``(indices [M] int32, valid [M] bool)``: kept indices into ``boxes`` in descending
      score, padded with 0 where ``valid`` is False. Traced invalid boxes (NaN
      coordinates, ``x1 < x0``) have NaN IoU and suppress nothing; eagerly they raise.

    Example:
      >>> b = jnp.array([[0., 0., 10., 10.], [1., 1., 10., 10.], [20., 20., 30., 30.]])
      >>> idx, ok = nms(b, jnp.array([0.9, 0.8, 0.7]), max_output=3)
      >>> idx[ok].tolist()
      [0, 2]

    Paper: Neubeck & Van Gool 2006, "Efficient Non-Maximum Suppression".
    """
    check_rank(boxes, "boxes", 2, "[K, 4]")
    K = shape_of(boxes)[0]
    if shape_of(boxes)[1] != 4:
        raise ValueError(f"boxes must have shape [K, 4], got shape {shape_str(shape_of(boxes))}")
    if shape_of(scores) != (K,):
        raise ValueError(f"scores must have shape [K] = ({K}), got shape "
                         f"{shape_str(shape_of(scores))}")
    max_output = check_int(max_output, "max_output")
    order = jnp.argsort(-jnp.asarray(scores), stable=True)
    sorted_boxes = jnp.asarray(boxes)[order]
    sorted_scores = jnp.asarray(scores)[order]
    if K == 0:
        return jnp.zeros((max_output,), jnp.int32), jnp.zeros((max_output,), bool)
    iou = box_iou(sorted_boxes, sorted_boxes)[0]  # [K, K]
    later = jnp.arange(K)[None, :] > jnp.arange(K)[:, None]

    def body(i, keep):
        suppress = keep[i] & later[i] & (iou[i] > iou_threshold)
        return keep & ~suppress

    keep = jax.lax.fori_loop(0, K, body, sorted_scores > score_threshold)
    # the first max_output kept positions, in score order
    rank = jnp.cumsum(keep) - 1
    slot = jnp.where(keep & (rank < max_output), rank, max_output)
    indices = jnp.zeros((max_output + 1,), jnp.int32).at[slot].set(order.astype(jnp.int32))
    valid = jnp.zeros((max_output + 1,), bool).at[slot].set(True)
    return indices[:max_output], valid[:max_output]


def decode(outputs: dict[str, jax.Array], config: DetectorConfig, *, top_k: int = 20,
           max_output: int = 10, iou_threshold: float = 0.4,
           score_threshold: float = 0.05) -> Detections:
    """Detections from the model's outputs: heatmap peaks, top ``K``, boxes, landmarks, NMS.

    A cell is a peak when its heatmap equals the maximum of its 3×3 neighbourhood; the
    ``top_k`` peaks by ``σ(heatmap)`` give centres ``(cell + offset) · R``, sizes
    ``R · exp(size)`` and landmarks ``centre + (w, h) ⊙ landmarks``; then :func:`nms`.

    Args:
      outputs: the model's dict for a batch (``heatmap [B, h, w]``, ...).
      config: the :class:`DetectorConfig` (stride).
      top_k: peaks considered per image (at most ``h·w`` are).
      max_output: ``M`` detections per image.
      iou_threshold, score_threshold: of :func:`nms`.

    Returns:
      :class:`Detections` with leading ``[B]``.

    Example:
      >>> dets = decode(model(x), config, max_output=5)
      >>> dets.boxes.shape
      (B, 5, 4)
    """
    heat = outputs["heatmap"]
    check_rank(heat, "outputs['heatmap']", 3, "[B, h, w]")
    B, h, w = shape_of(heat)
    top_k = min(check_int(top_k, "top_k", 1), h * w)
    R = config.stride
    prob = jax.nn.sigmoid(heat)
    pooled = jax.lax.reduce_window(prob, -jnp.inf, jax.lax.max, (1, 3, 3), (1, 1, 1), "SAME")
    peaks = jnp.where(prob == pooled, prob, 0.0).reshape(B, h * w)
    scores, index = jax.lax.top_k(peaks, top_k)  # [B, K]
    cell = jnp.stack([index % w, index // w], -1).astype(jnp.float32)  # (x, y)
    offset = _gather(outputs["offset"], index)
    size = R * jnp.exp(jnp.clip(_gather(outputs["size"], index), -10.0, 10.0))
    centre = (cell + offset) * R
    boxes = jnp.concatenate([centre - 0.5 * size, centre + 0.5 * size], -1)
    rel = _gather(outputs["landmarks"], index).reshape(B, top_k, 5, 2)
    landmarks = centre[..., None, :] + rel * size[..., None, :]
    keep, valid = jax.vmap(lambda b, s: nms(b, s, iou_threshold=iou_threshold,
                                            max_output=max_output,
                                            score_threshold=score_threshold))(boxes, scores)
    def take(x):
        picked = jnp.take_along_axis(x, keep.reshape(keep.shape + (1,) * (x.ndim - 2)), axis=1)
        return jnp.where(valid.reshape(valid.shape + (1,) * (x.ndim - 2)), picked, 0)

    return Detections(take(boxes), take(scores), take(landmarks), valid)


# ----------------------------------------------------------------------------- evaluation


def landmark_nme(pred: jax.Array, gt: jax.Array) -> jax.Array:
    """Normalised mean error of five landmarks, normalised by the inter-ocular distance.

    ``NME_n = (1/5) Σ_k ‖p_nk − g_nk‖₂ / ‖g_n,left_eye − g_n,right_eye‖₂``. The eye
    landmarks are the eye centres, so the normaliser is the distance between them (the
    "inter-ocular" normalisation of five-point benchmarks, which for eye centres is
    the inter-pupil distance).

    Args:
      pred: ``[N, 5, 2]`` predicted ``(x, y)``.
      gt: ``[N, 5, 2]`` true ``(x, y)`` in :data:`vision.face.synthetic.LANDMARK_NAMES`
        order.

    Returns:
      ``[N]`` NME per face. Coincident true eyes raise eagerly; traced, they give NaN.

    Example:
      >>> g = jnp.array([[[0., 0.], [10., 0.], [5., 5.], [2., 8.], [8., 8.]]])
      >>> float(landmark_nme(g + jnp.array([1., 0.]), g)[0])
      0.1
    """
    for x, name in ((pred, "pred"), (gt, "gt")):
        if jnp.ndim(x) != 3 or shape_of(x)[1:] != (5, 2):
            raise ValueError(f"{name} must have shape [N, 5, 2], got shape "
                             f"{shape_str(shape_of(x))}")
        check_float_dtype(x, name)
    if shape_of(pred) != shape_of(gt):
        raise ValueError(f"pred must have gt's shape {shape_str(shape_of(gt))}, got "
                         f"{shape_str(shape_of(pred))}")
    iod = jnp.linalg.norm(gt[:, 0] - gt[:, 1], axis=-1)  # [N]
    if is_concrete(iod) and np.any(np.asarray(iod) <= 0):
        raise ValueError("gt must have distinct left and right eye landmarks (inter-ocular "
                         "distance 0)")
    err = jnp.mean(jnp.linalg.norm(pred - gt, axis=-1), axis=-1)
    return poison(err / jnp.where(iod > 0, iod, 1.0), iod > 0)


def match_detections(det_boxes: jax.Array, det_valid: jax.Array, gt_boxes: jax.Array,
                     gt_mask: jax.Array, iou_threshold: float = 0.5
                     ) -> tuple[jax.Array, jax.Array]:
    """For each true face, the valid detection of highest IoU, if above ``iou_threshold``.

    Args:
      det_boxes: ``[M, 4]``; det_valid: ``[M]`` bool.
      gt_boxes: ``[T, 4]``; gt_mask: ``[T]`` bool.
      iou_threshold: the least IoU of a match.

    Returns:
      ``(index [T] int32, matched [T] bool)``.

    Example:
      >>> idx, ok = match_detections(d.boxes[0], d.valid[0], gt_boxes, gt_mask)
    """
    check_rank(det_boxes, "det_boxes", 2, "[M, 4]")
    check_rank(gt_boxes, "gt_boxes", 2, "[T, 4]")
    iou = box_iou(jnp.asarray(gt_boxes), jnp.asarray(det_boxes))[0]  # [T, M]
    iou = jnp.where(jnp.asarray(det_valid)[None, :], iou, -1.0)
    index = jnp.argmax(iou, axis=1).astype(jnp.int32)
    best = jnp.max(iou, axis=1, initial=-1.0)
    return index, (best >= iou_threshold) & jnp.asarray(gt_mask, bool)


def coco_face_metrics(sizes: np.ndarray, gt_boxes: np.ndarray, gt_mask: np.ndarray,
                      detections: Detections) -> dict[str, float]:
    """COCO bbox AP/AR of face detections through :mod:`vision.coco` (one class, "face").

    Args:
      sizes: ``[N, 2]`` image ``(height, width)``.
      gt_boxes: ``[N, T, 4]`` ``xyxy`` pixels; gt_mask: ``[N, T]`` bool.
      detections: :class:`Detections` with leading ``[N]`` (only valid slots count).

    Returns:
      ``{name: value}`` for ``vision.coco.COCO_STAT_NAMES`` (``ap``, ``ap50``, ...).

    Example:
      >>> coco_face_metrics(np.array([[64, 64]]), gt, mask, dets)["ap50"]
    """
    gt_boxes = np.asarray(gt_boxes, np.float64)
    gt_mask = np.asarray(gt_mask, bool)
    if gt_boxes.ndim != 3 or gt_boxes.shape[-1] != 4 or gt_mask.shape != gt_boxes.shape[:2]:
        raise ValueError(f"gt_boxes must have shape [N, T, 4] and gt_mask [N, T], got "
                         f"{gt_boxes.shape} and {gt_mask.shape}")
    n = gt_boxes.shape[0]
    xywh = [np.concatenate([b[m][:, :2], b[m][:, 2:] - b[m][:, :2]], -1)
            for b, m in zip(gt_boxes, gt_mask, strict=True)]
    gt = coco_ground_truth(np.asarray(sizes), xywh, [np.zeros(len(x), int) for x in xywh],
                           ["face"])
    valid = np.asarray(detections.valid, bool)
    boxes = np.asarray(detections.boxes, np.float64)
    if boxes.shape[0] != n:
        raise ValueError(f"detections must hold N = {n} images, got {boxes.shape[0]}")
    scores = np.where(valid, np.asarray(detections.scores, np.float64), 0.0)
    boxes = np.where(valid[..., None], boxes, 0.0)
    dets = coco_detections(list(range(1, n + 1)), boxes, scores, np.zeros(valid.shape, int),
                           num_classes=1)
    return evaluate_bbox(gt, dets)
