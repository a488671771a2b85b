"""DETR's matching cost and set-prediction criterion, jittable end to end.

* :func:`matcher_cost`: the ``[Q, T]`` cost of assigning query ``q`` to target ``t``,
  ``C = λ_cls·(−p_q(c_t)) + λ_L1·‖b_q − b_t‖₁ + λ_giou·(−GIoU(b_q, b_t))``.
* :func:`hungarian_match`: the optimal query↔target assignment of a padded batch,
  solved inside ``jit`` by a matcher from ``vision.matching.MATCHERS``.
* :func:`set_criterion`: the loss of Carion et al. (2020) exactly as their reference
  code computes it: cross-entropy over all queries with the no-object class (the
  last index) weighted ``eos_coef`` and averaged with the class weights
  (``Σ w·nll / Σ w``), L1 and GIoU losses of the matched boxes summed and divided by
  the number of target boxes (at least 1), the same losses at every decoder layer
  with its own matching (auxiliary decoding losses), and the cardinality and class
  errors as logged metrics.

Targets are padded to a fixed ``T`` per image: ``labels [B, T]``, ``boxes [B, T, 4]``
(normalised ``cxcywh``) and ``mask [B, T]`` (``True`` = real object), so shapes are
static and images with 0 objects are fine.

Boxes are in image coordinates normalised to ``[0, 1]``, but a box may extend past
the image (corners outside ``[0, 1]``, as after a crop or shift augmentation): the L1
and GIoU terms are well defined for any box with ``x1 >= x0`` and ``y1 >= y0``, and
such a box is matched and regressed as the geometric box it is, unclipped. Invalid
values follow :mod:`common.checks`: a real target with a negative width or height, a
non-finite coordinate or a class outside ``[0, C)`` (or a predicted box with a
negative size or non-finite coordinate) raises ``ValueError`` eagerly; traced, the
costs involving it are NaN, its image's matching is all ``-1`` and
:func:`set_criterion`'s loss and metrics are NaN. Padded targets are never checked.

Paper: Carion et al. 2020, "End-to-End Object Detection with Transformers",
section 3.1 (eq. 1-2), appendix A.2 (GIoU, auxiliary losses).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from common.checks import is_concrete, poison, shape_str
from vision.boxes import (
    box_cxcywh_to_xyxy,
    check_boxes,
    elementwise_generalized_box_iou,
    generalized_box_iou,
    valid_boxes,
)
from vision.matching import MATCHERS, assignment_vectors

__all__ = [
    "CriterionConfig",
    "check_targets",
    "hungarian_match",
    "matcher_cost",
    "set_criterion",
]


def _valid_targets(labels, boxes, num_classes: int) -> jax.Array:
    """``[...]`` True where a target has a class in ``[0, num_classes)`` and a valid box."""
    return (labels >= 0) & (labels < num_classes) & valid_boxes(boxes, "cxcywh")


def _check_labels(labels, num_classes: int, name: str, mask=None) -> None:
    if not jnp.issubdtype(jnp.asarray(labels).dtype, jnp.integer):
        raise ValueError(f"{name} must be integer class ids, got dtype {jnp.asarray(labels).dtype}")
    if not is_concrete(labels) or (mask is not None and not is_concrete(mask)):
        return
    values = np.asarray(labels)
    if mask is not None:
        values = values[np.asarray(mask)]
    if values.size and (values.min() < 0 or values.max() >= num_classes):
        raise ValueError(f"{name} must be class ids in [0, num_classes) = [0, {num_classes}); "
                         f"got values in [{values.min()}, {values.max()}] (the no-object class "
                         f"{num_classes} is not a target class)")


def matcher_cost(pred_logits: jax.Array, pred_boxes: jax.Array, tgt_labels: jax.Array,
                 tgt_boxes: jax.Array, *, cost_class: float = 1.0, cost_bbox: float = 5.0,
                 cost_giou: float = 2.0) -> jax.Array:
    """DETR's bipartite matching cost between ``Q`` predictions and ``T`` targets.

    ``C[q, t] = −cost_class·softmax(logits_q)[c_t] + cost_bbox·‖b_q − b_t‖₁
    − cost_giou·GIoU(xyxy(b_q), xyxy(b_t))``, with boxes in normalised ``cxcywh``
    (the L1 term on ``cxcywh``, GIoU on the corners), as in DETR's ``HungarianMatcher``.

    Args:
      pred_logits: ``[Q, C+1]`` class logits, the last class being "no object".
      pred_boxes: ``[Q, 4]`` predicted boxes, normalised ``cxcywh``, ``w, h >= 0``.
      tgt_labels: ``[T]`` integer target classes in ``[0, C)``.
      tgt_boxes: ``[T, 4]`` target boxes, normalised ``cxcywh``, ``w, h >= 0``; corners
        may lie outside ``[0, 1]`` (see the module docstring).
      cost_class, cost_bbox, cost_giou: weights ``λ`` of the three terms.

    Returns:
      ``[Q, T]`` costs (``T = 0`` gives ``[Q, 0]``); traced, NaN in the rows of invalid
      predicted boxes and the columns of invalid targets.

    Example:
      >>> logits = jnp.zeros((3, 5)); boxes = jnp.full((3, 4), 0.5)
      >>> matcher_cost(logits, boxes, jnp.array([1]), jnp.array([[0.5, 0.5, 0.5, 0.5]])).shape
      (3, 1)

    Paper: Carion et al. 2020, section 3.1 (``L_match``) and appendix A.1.
    """
    pred_logits = jnp.asarray(pred_logits)
    pred_boxes = jnp.asarray(pred_boxes)
    tgt_labels = jnp.asarray(tgt_labels)
    tgt_boxes = jnp.asarray(tgt_boxes)
    if pred_logits.ndim != 2 or pred_logits.shape[-1] < 2:
        raise ValueError(f"pred_logits must have shape [Q, C+1] with C >= 1, got shape "
                         f"{shape_str(pred_logits.shape)}")
    Q, C1 = pred_logits.shape
    if pred_boxes.shape != (Q, 4):
        raise ValueError(f"pred_boxes must have shape [Q, 4] = ({Q}, 4), got shape "
                         f"{shape_str(pred_boxes.shape)}")
    if tgt_labels.ndim != 1:
        raise ValueError(f"tgt_labels must have shape [T], got shape "
                         f"{shape_str(tgt_labels.shape)}")
    T = tgt_labels.shape[0]
    if tgt_boxes.shape != (T, 4):
        raise ValueError(f"tgt_boxes must have shape [T, 4] = ({T}, 4), got shape "
                         f"{shape_str(tgt_boxes.shape)}")
    _check_labels(tgt_labels, C1 - 1, "tgt_labels")
    check_boxes(tgt_boxes, "tgt_boxes", fmt="cxcywh")
    check_boxes(pred_boxes, "pred_boxes", fmt="cxcywh")
    prob = jax.nn.softmax(pred_logits, axis=-1)  # [Q, C+1]
    class_term = -jnp.take(prob, tgt_labels, axis=1, mode="clip")  # [Q, T]
    l1_term = jnp.sum(jnp.abs(pred_boxes[:, None, :] - tgt_boxes[None, :, :]), axis=-1)  # [Q, T]
    giou_term = -generalized_box_iou(box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(tgt_boxes))
    cost = cost_bbox * l1_term + cost_class * class_term + cost_giou * giou_term
    ok = valid_boxes(pred_boxes, "cxcywh")[:, None] & _valid_targets(tgt_labels, tgt_boxes,
                                                                     C1 - 1)[None, :]
    return poison(cost, ok)


def check_targets(labels, boxes, mask, num_classes: int) -> None:
    """Check padded targets ``labels [B, T]``, ``boxes [B, T, 4]``, ``mask [B, T]``.

    Shapes and dtypes always; when the arrays are concrete also the values of every
    real (``mask``) entry: class ids in ``[0, num_classes)`` and valid ``cxcywh``
    boxes (finite, ``w, h >= 0``; corners outside ``[0, 1]`` are accepted, see the
    module docstring). Traced values are checked by the losses (NaN, per
    :mod:`common.checks`).

    Example:
      >>> check_targets(jnp.zeros((2, 3), int), jnp.zeros((2, 3, 4)), jnp.zeros((2, 3), bool), 4)
    """
    labels, boxes, mask = jnp.asarray(labels), jnp.asarray(boxes), jnp.asarray(mask)
    if labels.ndim != 2:
        raise ValueError(f"target labels must have shape [B, T], got {shape_str(labels.shape)}")
    B, T = labels.shape
    if boxes.shape != (B, T, 4):
        raise ValueError(f"target boxes must have shape [B, T, 4] = ({B}, {T}, 4), got "
                         f"{shape_str(boxes.shape)}")
    if mask.shape != (B, T) or mask.dtype != jnp.bool_:
        raise ValueError(f"target mask must be boolean with shape [B, T] = ({B}, {T}), got "
                         f"{mask.dtype} {shape_str(mask.shape)}")
    _check_labels(labels, num_classes, "target labels", mask)
    if is_concrete(boxes) and is_concrete(mask):
        check_boxes(np.asarray(boxes)[np.asarray(mask)], "target boxes", fmt="cxcywh")


@dataclasses.dataclass(frozen=True)
class CriterionConfig:
    """Weights of DETR's matching cost and loss (the reference defaults).

    Attributes:
      cost_class, cost_bbox, cost_giou: matching cost weights (1, 5, 2).
      weight_ce, weight_bbox, weight_giou: loss weights (1, 5, 2).
      eos_coef: class weight of "no object" in the cross-entropy (0.1).
      aux_loss: add the losses of every intermediate decoder layer.
      matcher: name in ``vision.matching.MATCHERS`` (``"jv"`` in jit, ``"scipy"``
        through a host callback).
    """

    cost_class: float = 1.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    weight_ce: float = 1.0
    weight_bbox: float = 5.0
    weight_giou: float = 2.0
    eos_coef: float = 0.1
    aux_loss: bool = True
    matcher: str = "jv"


def hungarian_match(pred_logits: jax.Array, pred_boxes: jax.Array, tgt_labels: jax.Array,
                    tgt_boxes: jax.Array, tgt_mask: jax.Array, *, cost_class: float = 1.0,
                    cost_bbox: float = 5.0, cost_giou: float = 2.0, matcher: str = "jv"
                    ) -> tuple[jax.Array, jax.Array]:
    """Optimal query↔target assignment for every image of a padded batch.

    Minimises ``Σ C[q, t]`` (:func:`matcher_cost`) over one-to-one matchings of all
    real targets of each image (``min(Q, T_real)`` pairs); no gradient flows through
    the matching.

    Args:
      pred_logits: ``[B, Q, C+1]``.
      pred_boxes: ``[B, Q, 4]`` normalised ``cxcywh``.
      tgt_labels: ``[B, T]`` (padded entries: any valid class id, e.g. 0).
      tgt_boxes: ``[B, T, 4]`` normalised ``cxcywh`` (padded entries: any box).
      tgt_mask: ``[B, T]`` boolean, ``True`` = real target.
      cost_class, cost_bbox, cost_giou: matching cost weights.
      matcher: name in ``MATCHERS``.

    Returns:
      ``(query_for_target [B, T], target_for_query [B, Q])``, int32, ``-1`` where
      unmatched (padded targets, queries left as "no object"); traced, all ``-1`` for
      an image with an invalid real target or predicted box (see the module docstring).

    Example:
      >>> q4t, t4q = hungarian_match(jnp.zeros((1, 3, 3)), jnp.full((1, 3, 4), 0.5),
      ...                            jnp.zeros((1, 2), int), jnp.full((1, 2, 4), 0.5),
      ...                            jnp.array([[True, False]]))
      >>> q4t.shape, int(q4t[0, 1])
      ((1, 2), -1)

    Paper: Carion et al. 2020, section 3.1.
    """
    MATCHERS.get(matcher)
    if jnp.ndim(pred_logits) != 3:
        raise ValueError(f"pred_logits must have shape [B, Q, C+1], got "
                         f"{shape_str(jnp.shape(pred_logits))}")
    B, Q, _ = pred_logits.shape
    if jnp.shape(pred_boxes) != (B, Q, 4):
        raise ValueError(f"pred_boxes must have shape [B, Q, 4] = ({B}, {Q}, 4), got "
                         f"{shape_str(jnp.shape(pred_boxes))}")
    check_targets(tgt_labels, tgt_boxes, tgt_mask, pred_logits.shape[-1] - 1)
    if jnp.shape(tgt_labels)[0] != B:
        raise ValueError(f"targets must have batch size B = {B} like pred_logits, got "
                         f"{jnp.shape(tgt_labels)[0]}")
    # Padded targets get a harmless box so the cost stays finite.
    safe_boxes = jnp.where(tgt_mask[..., None], tgt_boxes, 0.5)
    safe_labels = jnp.where(tgt_mask, tgt_labels, 0)

    def one(logits, boxes, labels, tboxes, mask):
        cost = matcher_cost(logits, boxes, labels, tboxes, cost_class=cost_class,
                            cost_bbox=cost_bbox, cost_giou=cost_giou)  # [Q, T]
        t_for_q, q_for_t = assignment_vectors(cost, None, mask, matcher=matcher)
        return q_for_t, t_for_q

    return jax.vmap(one)(jax.lax.stop_gradient(pred_logits), jax.lax.stop_gradient(pred_boxes),
                         safe_labels, jax.lax.stop_gradient(safe_boxes), tgt_mask)


def _num_boxes(tgt_mask, axis_name, dtype):
    """DETR's normaliser: target boxes in the batch, averaged over devices, at least 1."""
    n = jnp.sum(tgt_mask).astype(dtype)
    if axis_name is not None:
        n = jax.lax.psum(n, axis_name) / jax.lax.psum(1.0, axis_name)
    return jnp.maximum(n, 1.0)


def _layer_losses(logits, boxes, labels, tboxes, mask, q_for_t, t_for_q, num_boxes,
                  eos_coef):
    """Unweighted DETR losses of one decoder layer given its matching."""
    no_object = logits.shape[-1] - 1
    matched = t_for_q >= 0  # [B, Q]
    target_classes = jnp.where(
        matched, jnp.take_along_axis(labels, jnp.maximum(t_for_q, 0), axis=1), no_object)
    weights = jnp.where(target_classes == no_object, eos_coef, 1.0).astype(logits.dtype)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, target_classes[..., None], axis=-1)[..., 0]  # [B, Q]
    loss_ce = jnp.sum(weights * nll) / jnp.sum(weights)

    src = jnp.take_along_axis(boxes, jnp.maximum(q_for_t, 0)[..., None], axis=1)  # [B, T, 4]
    real = mask.astype(boxes.dtype)
    tgt = jnp.where(mask[..., None], tboxes, src)  # padded entries: zero loss, finite grads
    loss_bbox = jnp.sum(jnp.abs(src - tgt) * real[..., None]) / num_boxes
    giou = elementwise_generalized_box_iou(box_cxcywh_to_xyxy(src), box_cxcywh_to_xyxy(tgt))
    loss_giou = jnp.sum((1.0 - giou) * real) / num_boxes
    return loss_ce, loss_bbox, loss_giou


def set_criterion(pred_logits: jax.Array, pred_boxes: jax.Array, tgt_labels: jax.Array,
                  tgt_boxes: jax.Array, tgt_mask: jax.Array,
                  config: CriterionConfig = CriterionConfig(), *, axis_name: str | None = None
                  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """DETR's set-prediction loss with auxiliary decoding losses.

    For each decoder layer ``l`` with matching ``σ_l`` (:func:`hungarian_match`)::

        L_ce   = Σ_{b,q} w_{bq} · (−log p_{bq}(c_{bq})) / Σ_{b,q} w_{bq}
                 (c_{bq} = matched target class or ∅; w = eos_coef for ∅, else 1)
        L_bbox = Σ_{b,t real} ‖b̂_{b,σ(t)} − b_{bt}‖₁ / N
        L_giou = Σ_{b,t real} (1 − GIoU(b̂_{b,σ(t)}, b_{bt})) / N
        N      = max(#real targets in the batch (mean over devices of ``axis_name``), 1)

    and the total is ``Σ_l (λ_ce L_ce + λ_bbox L_bbox + λ_giou L_giou)`` over the last
    layer and, with ``aux_loss``, every earlier one. Under ``jit`` with a sharded
    batch the sums are already global; pass ``axis_name`` inside ``shard_map`` to
    normalise per device exactly as DETR's distributed code does.

    Args:
      pred_logits: ``[L, B, Q, C+1]`` logits of every decoder layer (or ``[B, Q, C+1]``
        for a single layer); the last layer is the model's output.
      pred_boxes: ``[L, B, Q, 4]`` (or ``[B, Q, 4]``) normalised ``cxcywh`` boxes.
      tgt_labels: ``[B, T]`` class ids in ``[0, C)``.
      tgt_boxes: ``[B, T, 4]`` normalised ``cxcywh``.
      tgt_mask: ``[B, T]`` boolean, ``True`` = real target.
      config: loss and matching weights, ``eos_coef``, ``aux_loss``, matcher.
      axis_name: mapped axis to average the box count over (``shard_map``/``vmap``).

    Returns:
      ``(loss, metrics)``: the weighted total and a dict of ``loss_ce``, ``loss_bbox``,
      ``loss_giou`` (last layer), ``loss_ce_{i}`` etc. for auxiliary layer ``i``
      (DETR's names), ``class_error`` (percent of real targets whose matched query's
      arg-max class is wrong, last layer) and ``cardinality_error`` (mean absolute
      error of the number of non-∅ predictions). Traced, all NaN when a real target
      is invalid (eagerly: ``ValueError``).

    Example:
      >>> L, B, Q, C, T = 2, 1, 4, 3, 2
      >>> loss, m = set_criterion(jnp.zeros((L, B, Q, C + 1)), jnp.full((L, B, Q, 4), 0.5),
      ...                         jnp.zeros((B, T), int), jnp.full((B, T, 4), 0.25),
      ...                         jnp.array([[True, False]]))
      >>> sorted(m)[:3]
      ['cardinality_error', 'class_error', 'loss_bbox']

    Paper: Carion et al. 2020, eq. (2) and appendix A.2.
    """
    pred_logits = jnp.asarray(pred_logits)
    pred_boxes = jnp.asarray(pred_boxes)
    if pred_logits.ndim == 3:
        pred_logits, pred_boxes = pred_logits[None], pred_boxes[None]
    if pred_logits.ndim != 4:
        raise ValueError(f"pred_logits must have shape [L, B, Q, C+1] or [B, Q, C+1], got "
                         f"{shape_str(pred_logits.shape)}")
    L, B, Q, C1 = pred_logits.shape
    if pred_boxes.shape != (L, B, Q, 4):
        raise ValueError(f"pred_boxes must have shape [L, B, Q, 4] = ({L}, {B}, {Q}, 4) like "
                         f"pred_logits, got {shape_str(pred_boxes.shape)}")
    check_targets(tgt_labels, tgt_boxes, tgt_mask, C1 - 1)
    if jnp.shape(tgt_labels)[0] != B:
        raise ValueError(f"targets must have batch size B = {B} like pred_logits, got "
                         f"{jnp.shape(tgt_labels)[0]}")
    if not 0.0 < config.eos_coef:
        raise ValueError(f"eos_coef must be > 0, got {config.eos_coef}")
    # Traced form of check_targets: NaN loss and metrics for an invalid real target.
    targets_ok = jnp.all(_valid_targets(tgt_labels, tgt_boxes, C1 - 1) | ~tgt_mask)
    tgt_labels = jnp.where(tgt_mask, tgt_labels, 0)
    layers = list(range(L)) if config.aux_loss else [L - 1]
    logits = pred_logits if config.aux_loss else pred_logits[-1:]  # [L', B, Q, C+1]
    boxes = pred_boxes if config.aux_loss else pred_boxes[-1:]
    match = jax.vmap(lambda lg, bx: hungarian_match(
        lg, bx, tgt_labels, tgt_boxes, tgt_mask, cost_class=config.cost_class,
        cost_bbox=config.cost_bbox, cost_giou=config.cost_giou, matcher=config.matcher))
    q_for_t, t_for_q = match(logits, boxes)  # [L', B, T], [L', B, Q]
    num_boxes = _num_boxes(tgt_mask, axis_name, pred_boxes.dtype)
    per_layer = jax.vmap(lambda lg, bx, qt, tq: _layer_losses(
        lg, bx, tgt_labels, tgt_boxes, tgt_mask, qt, tq, num_boxes, config.eos_coef))
    ce, l1, gi = per_layer(logits, boxes, q_for_t, t_for_q)  # each [L']
    total = jnp.sum(config.weight_ce * ce + config.weight_bbox * l1 + config.weight_giou * gi)

    metrics = {"loss_ce": ce[-1], "loss_bbox": l1[-1], "loss_giou": gi[-1]}
    for k, layer in enumerate(layers[:-1]):
        metrics[f"loss_ce_{layer}"] = ce[k]
        metrics[f"loss_bbox_{layer}"] = l1[k]
        metrics[f"loss_giou_{layer}"] = gi[k]
    last_logits = jax.lax.stop_gradient(pred_logits[-1])  # [B, Q, C+1]
    matched_logits = jnp.take_along_axis(last_logits, jnp.maximum(q_for_t[-1], 0)[..., None],
                                         axis=1)  # [B, T, C+1]
    correct = (jnp.argmax(matched_logits, axis=-1) == tgt_labels) & tgt_mask
    n_real = jnp.sum(tgt_mask)
    metrics["class_error"] = 100.0 - 100.0 * jnp.sum(correct) / jnp.maximum(n_real, 1)
    card_pred = jnp.sum(jnp.argmax(last_logits, axis=-1) != C1 - 1, axis=-1)  # [B]
    metrics["cardinality_error"] = jnp.mean(
        jnp.abs(card_pred - jnp.sum(tgt_mask, axis=-1)).astype(pred_logits.dtype))
    return poison((total, metrics), targets_ok)
