"""``detr-shapes``: DETR trained from scratch on synthetic coloured shapes, COCO AP.

Data: :mod:`vision.shapes` (``skimage.draw.random_shapes``: circles, rectangles,
triangles and ellipses, 1–6 per image, images of 48–64 pixels a side padded to 64 with
a pixel mask). Model: :class:`vision.detr.DETR` with a small ResNet. Loss: DETR's set
criterion with the Hungarian matching solved inside the jitted, scanned train step
(``vision.matching``, solver ``"jv"``). Evaluation: COCO bbox AP/AP50/AP75 of all
queries on a held-out split through pycocotools: during training every ``eval_every``
steps on its first ``eval_subset`` images (cheaper, noisier; ``eval/subset_ap*``), at the
end on all of it (``eval/ap*``, the headline). Figures: prediction overlays on
validation images and the learning curve.

Randomness: the training and validation splits come from ``seed`` and ``seed + 1``;
batches, flips and dropout from ``fold_in(key, step)`` (see ``common.train``).

Measured on a shared 2-core CPU: the quick config (3000 steps of batch 32 over 12 000
images, 12 queries, d_model 64) takes 4.5–6 minutes and reaches AP 0.26–0.36 on the 500
validation images depending on the seed (seed 0: 0.34, seed 1: 0.26); a run is
deterministic for a config and build, but 3,000 steps is early in training and a
last-digit change in any float computation moves AP by a few points. The same model
trained for 10 000 steps (14 minutes) reaches AP 0.77, AP50 0.96, AP75 0.92. The full
config (a larger model, 20 000 images, 30 000 steps) is sized for an accelerator and was
not run on the CPU.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from common.checks import check_fields
from common.optim import OptimConfig, build_optimizer
from common.precision import get_policy
from common.recipe import RunContext, default_total_steps, plot_smoothed, register_recipe
from common.train import TrainState, fit, train_step_fn
from vision.boxes import box_iou
from vision.coco import coco_detections, coco_ground_truth, evaluate_bbox
from vision.detr import (
    DETR,
    BackboneConfig,
    CriterionConfig,
    DETRConfig,
    postprocess,
    set_criterion,
)
from vision.matching import MATCHERS
from vision.shapes import CLASSES, ShapesData, generate_shapes, pixel_mask

__all__ = ["DetrShapesConfig", "evaluate", "make_batch_fn", "make_loss_fn", "make_predict",
           "train_detr_shapes"]

# Pixel statistics of the shapes images (white background, colours in [0, 200]).
_MEAN = 0.75
_STD = 0.35


@dataclasses.dataclass(frozen=True)
class DetrShapesConfig:
    """Config of ``detr-shapes``; ``optim.total_steps`` defaults to ``steps``.

    The optimizer is AdamW with gradient clipping as in DETR; ``optim.group_lr``
    scales the backbone's learning rate (DETR: 0.1 for its pretrained ResNet; 1.0
    here by default since this backbone trains from scratch).

    Every ``eval_every`` steps the AP is measured on the first ``eval_subset`` validation
    images only (logged as ``eval/subset_ap``, ``eval/subset_ap50``, ``eval/subset_ap75``;
    0 means the whole split, logged as ``eval/ap*``); the last step and the returned
    metrics always use the whole validation split.

    ``precision``: ``"fp32"`` or ``"bf16"`` (``common.precision``: bfloat16 convolutions,
    matmuls and activations; float32 parameters, norm statistics, softmax, matching and
    losses).
    """

    seed: int = 0
    image_size: int = 64
    min_image_size: int = 48
    max_objects: int = 6
    min_shape: int = 8
    max_shape: int = 24
    num_train: int = 12000
    num_val: int = 500
    model: DETRConfig = DETRConfig(
        num_classes=len(CLASSES), num_queries=12, d_model=64, num_heads=4,
        num_encoder_layers=2, num_decoder_layers=3, mlp_dim=128, dropout_rate=0.0,
        backbone=BackboneConfig(stem_channels=16, stem_stride=2, channels=(32, 64),
                                blocks=(1, 1), strides=(2, 2), norm="groupnorm"))
    criterion: CriterionConfig = CriterionConfig()
    batch_size: int = 32
    steps: int = 3000
    chunk_size: int = 100
    eval_every: int = 200
    eval_subset: int = 100
    checkpoint_every: int = 1000
    hflip: bool = True
    optim: OptimConfig = OptimConfig(name="adamw", learning_rate=1e-3, schedule="cosine",
                                     warmup_steps=200, end_factor=0.05, weight_decay=1e-4,
                                     clip_norm=0.1, group_lr=(("backbone", 1.0),))
    eval_batch: int = 250
    coco_backend: str = "pycocotools"
    overlay_images: int = 12
    overlay_threshold: float = 0.5
    precision: str = "fp32"

    def validate(self) -> None:
        check_fields(self, positive_ints=("image_size", "min_image_size", "max_objects",
                                          "min_shape", "max_shape", "num_train", "num_val",
                                          "batch_size", "steps", "chunk_size", "eval_every",
                                          "checkpoint_every", "eval_batch"),
                     nonnegative_ints=("seed", "overlay_images", "eval_subset"),
                     fractions=("overlay_threshold",))
        if not self.min_image_size <= self.image_size:
            raise ValueError(f"min_image_size ({self.min_image_size}) must not exceed "
                             f"image_size ({self.image_size})")
        if not self.min_shape <= self.max_shape < self.min_image_size:
            raise ValueError(f"need min_shape <= max_shape < min_image_size, got "
                             f"{self.min_shape}, {self.max_shape}, {self.min_image_size}")
        get_policy(self.precision)
        if self.model.num_classes != len(CLASSES):
            raise ValueError(f"model.num_classes must be {len(CLASSES)} for the shapes set, "
                             f"got {self.model.num_classes}")
        crit = self.criterion
        check_fields(crit, nonnegative=("cost_class", "cost_bbox", "cost_giou", "weight_ce",
                                        "weight_bbox", "weight_giou", "eos_coef"))
        MATCHERS.get(crit.matcher)
        if self.coco_backend not in ("pycocotools", "faster_coco_eval"):
            raise ValueError(f"coco_backend must be 'pycocotools' or 'faster_coco_eval', got "
                             f"{self.coco_backend!r}")


# ----------------------------------------------------------------------------- data


def _normalise(images_u8: jax.Array) -> jax.Array:
    return (images_u8.astype(jnp.float32) / 255.0 - _MEAN) / _STD


def _hflip(images, sizes, boxes, box_mask):
    """Mirror each image inside its real width (padding stays on the right)."""
    S = images.shape[2]
    x = jnp.arange(S)[None, :]  # [1, S]
    w = sizes[:, 1:2]  # [B, 1]
    src = jnp.where(x < w, w - 1 - x, x)  # [B, S]
    flipped = jnp.take_along_axis(images, src[:, None, :, None], axis=2)
    fboxes = boxes.at[..., 0].set(1.0 - boxes[..., 0])
    return flipped, jnp.where(box_mask[..., None], fboxes, boxes)


def make_batch_fn(cfg: DetrShapesConfig):
    """``batch_fn(data, key) -> batch`` drawing ``batch_size`` training images on device.

    ``data`` holds the device-resident split (uint8 images); the batch holds
    normalised ``images [B, S, S, 3]``, ``mask [B, S, S]`` and the padded targets.
    """

    def batch_fn(data, key):
        k_idx, k_flip = jax.random.split(key)
        idx = jax.random.randint(k_idx, (cfg.batch_size,), 0, data["images"].shape[0])
        images = jnp.take(data["images"], idx, axis=0)
        sizes = jnp.take(data["sizes"], idx, axis=0)
        boxes = jnp.take(data["boxes"], idx, axis=0)
        box_mask = jnp.take(data["box_mask"], idx, axis=0)
        if cfg.hflip:
            flip = jax.random.bernoulli(k_flip, 0.5, (cfg.batch_size,))
            f_images, f_boxes = _hflip(images, sizes, boxes, box_mask)
            images = jnp.where(flip[:, None, None, None], f_images, images)
            boxes = jnp.where(flip[:, None, None], f_boxes, boxes)
        return {"images": _normalise(images), "mask": pixel_mask(sizes, cfg.image_size),
                "labels": jnp.take(data["labels"], idx, axis=0), "boxes": boxes,
                "box_mask": box_mask}

    return batch_fn


# ----------------------------------------------------------------------------- model


def make_loss_fn(graphdef, criterion: CriterionConfig):
    """``loss_fn(params, rest, batch, key) -> (loss, (metrics, rest))``: DETR forward and
    set criterion, for ``train_step_fn(..., updates_rest=True)``. ``rest`` is the model's
    non-trainable state (frozen or running batch-norm statistics); the returned one
    carries the running averages a ``batchnorm`` backbone updates in training."""

    def loss_fn(params, rest, batch, key):
        model = nnx.merge(graphdef, params, rest)
        out = model(batch["images"], batch["mask"], deterministic=False,
                    rngs=nnx.Rngs(dropout=key))
        loss, metrics = set_criterion(out["logits"], out["boxes"], batch["labels"],
                                      batch["boxes"], batch["box_mask"], criterion)
        return loss, (metrics, nnx.split(model, nnx.Param, ...)[2])

    return loss_fn


def make_predict(graphdef, image_size: int):
    """Jitted ``predict(params, rest, images_u8 [B, S, S, 3], sizes [B, 2])`` →
    ``(scores [B, Q], labels [B, Q], boxes_xyxy [B, Q, 4] pixels)``."""

    @jax.jit
    def predict(params, rest, images_u8, sizes):
        model = nnx.merge(graphdef, params, rest)
        out = model(_normalise(images_u8), pixel_mask(sizes, image_size))
        return postprocess(out["logits"][-1], out["boxes"][-1], sizes)

    return predict


def _predict_all(predict, params, rest, data: ShapesData, batch: int):
    parts = [predict(params, rest, jnp.asarray(data.images[i:i + batch]),
                     jnp.asarray(data.sizes[i:i + batch]))
             for i in range(0, len(data), batch)]
    return tuple(np.concatenate([np.asarray(p[k]) for p in parts]) for k in range(3))


def ground_truth(data: ShapesData) -> dict:
    """The split's annotations as a COCO dataset dict (image ids ``1 .. N``)."""
    boxes, labels = zip(*(data.boxes_xywh(n) for n in range(len(data))), strict=True)
    return coco_ground_truth(data.sizes, boxes, labels, CLASSES)


def _coco_metrics(predictions, gt: dict, backend: str, count: int | None = None) -> dict:
    """COCO bbox metrics of ``predictions`` (of images ``1 .. count``, default all)."""
    scores, labels, boxes = (p[:count] for p in predictions)
    dets = coco_detections(list(range(1, len(scores) + 1)), boxes, scores, labels,
                           num_classes=len(CLASSES))
    return evaluate_bbox(gt, dets, backend=backend)


def _first(data: ShapesData, count: int) -> ShapesData:
    """The first ``count`` images of a split (image ids ``1 .. count`` in COCO terms)."""
    return ShapesData(**{k: v[:count] for k, v in data.as_arrays().items()})


def evaluate(predict, params, rest, data: ShapesData, gt: dict, *, batch: int = 250,
             backend: str = "pycocotools") -> tuple[dict, tuple]:
    """COCO bbox metrics of every query on ``data``; returns ``(metrics, predictions)``."""
    scores, labels, boxes = _predict_all(predict, params, rest, data, batch)
    predictions = (scores, labels, np.clip(boxes, 0.0, None))
    return _coco_metrics(predictions, gt, backend), predictions


def train_detr_shapes(cfg: DetrShapesConfig, *, logger=None, checkpointer=None,
                      progress: bool = False, history: list | None = None):
    """Generate the data, train DETR, evaluate on the validation split.

    Returns:
      ``(state, predict, val_data, val_metrics, predictions)``.
    """
    cfg.validate()
    optim = default_total_steps(cfg.optim, cfg.steps)
    shape_kw = dict(image_size=cfg.image_size, min_image_size=cfg.min_image_size,
                    max_objects=cfg.max_objects, min_shape=cfg.min_shape,
                    max_shape=cfg.max_shape)
    train = generate_shapes(cfg.num_train, seed=cfg.seed, **shape_kw)
    val = generate_shapes(cfg.num_val, seed=cfg.seed + 1, **shape_kw)
    gt = ground_truth(val)
    init_key, train_key = jax.random.split(jax.random.key(cfg.seed))
    model_cfg = dataclasses.replace(cfg.model, dtype=get_policy(cfg.precision).layer_dtype)
    model = DETR(model_cfg, rngs=nnx.Rngs(params=init_key, dropout=init_key))
    tx = build_optimizer(optim)
    state = TrainState.create(model, tx, train_key)
    loss_fn = make_loss_fn(state.graphdef, cfg.criterion)
    predict = make_predict(state.graphdef, cfg.image_size)
    data = {k: jnp.asarray(v) for k, v in train.as_arrays().items()}
    keys = ("ap", "ap50", "ap75")
    n_sub = cfg.eval_subset if 0 < cfg.eval_subset < len(val) else len(val)
    val_sub = _first(val, n_sub)
    gt_sub = ground_truth(val_sub) if n_sub < len(val) else gt
    final = {}  # the whole split's evaluation at the last step, reused below

    def eval_fn(state):
        step = int(state.step)
        if step < cfg.steps and n_sub < len(val):  # intermediate: the subset only
            metrics, _ = evaluate(predict, state.params, state.rest, val_sub, gt_sub,
                                  batch=cfg.eval_batch, backend=cfg.coco_backend)
            return {f"subset_{k}": metrics[k] for k in keys}
        metrics, predictions = evaluate(predict, state.params, state.rest, val, gt,
                                        batch=cfg.eval_batch, backend=cfg.coco_backend)
        if step == cfg.steps:
            final.update(step=step, metrics=metrics, predictions=predictions)
        out = {k: metrics[k] for k in keys}
        if n_sub < len(val):  # the subset curve's last point, from the same predictions
            sub = _coco_metrics(predictions, gt_sub, cfg.coco_backend, n_sub)
            out.update({f"subset_{k}": sub[k] for k in keys})
        return out

    state = fit(state, train_step_fn(loss_fn, tx, updates_rest=True), make_batch_fn(cfg), data,
                num_steps=cfg.steps, chunk_size=cfg.chunk_size, logger=logger,
                checkpointer=checkpointer, checkpoint_every=cfg.checkpoint_every,
                eval_fn=eval_fn, eval_every=cfg.eval_every, progress=progress,
                desc="detr-shapes", history=history)
    if final.get("step") == int(state.step):
        metrics, predictions = final["metrics"], final["predictions"]
    else:  # e.g. a finished run restored from its checkpoint: fit evaluated nothing
        metrics, predictions = evaluate(predict, state.params, state.rest, val, gt,
                                        batch=cfg.eval_batch, backend=cfg.coco_backend)
    return state, predict, val, metrics, predictions


# ----------------------------------------------------------------------------- figures


_CLASS_COLORS = ("tab:red", "tab:blue", "tab:green", "tab:purple")


def _display_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices of the boxes kept by greedy class-agnostic NMS, best score first.

    For the overlay figure only (AP scores every query): DETR's set loss discourages
    duplicates but a briefly trained model still emits a few, often under two classes
    (circle vs ellipse), so suppression ignores the class to leave one box per object.
    """
    if len(boxes) == 0:
        return np.zeros(0, int)
    iou = np.asarray(box_iou(jnp.asarray(boxes), jnp.asarray(boxes))[0])  # [K, K]
    keep: list[int] = []
    for i in np.argsort(-scores, kind="stable"):
        if all(iou[i, j] <= iou_threshold for j in keep):
            keep.append(int(i))
    return np.asarray(keep, int)


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word if n == 1 else plural or word + 's'}"


def _overlays(val: ShapesData, predictions, count: int, threshold: float,
              nms_iou: float = 0.5):
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    scores, labels, boxes = predictions
    count = min(count, len(val))
    cols = min(max(count, 1), 4)
    rows = max(1, -(-count // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 3.5 * rows + 0.9),
                             squeeze=False, layout="constrained")
    for k, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if k >= count:
            continue
        h, w = (int(v) for v in val.sizes[k])
        ax.axis("on")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor("0.6")
        ax.imshow(val.images[k, :h, :w])
        gt_boxes, gt_labels = val.boxes_xywh(k)
        for (x, y, bw, bh) in gt_boxes:
            ax.add_patch(Rectangle((x - 0.5, y - 0.5), bw, bh, fill=False, ls="--", lw=1.0,
                                   ec="0.35"))
        shown = np.flatnonzero(scores[k] > threshold)
        kept = shown[_display_nms(boxes[k, shown], scores[k, shown], nms_iou)]
        for q in kept:
            x0, y0, x1, y1 = boxes[k, q]
            c = int(labels[k, q])
            color = _CLASS_COLORS[c % len(_CLASS_COLORS)]
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, lw=1.8,
                                   ec=color))
            above = y0 > 0.12 * h  # room for the label above the box, else inside it
            right = x0 > 0.55 * w  # near the right edge: end the label at the box's right
            ax.text(x1 - 0.5 if right else x0 - 0.5, y0 - 1.0 if above else y0 + 0.5,
                    f"{CLASSES[c]} {scores[k, q]:.2f}", fontsize=8, color=color,
                    va="bottom" if above else "top", ha="right" if right else "left",
                    clip_on=True,
                    bbox=dict(facecolor="white", alpha=0.75, edgecolor="none", pad=0.6))
        title = f"{_plural(len(gt_labels), 'object')}, {h}×{w} px"
        if len(shown) > len(kept):
            title += (f"\n{_plural(len(shown) - len(kept), 'overlapping box', 'overlapping boxes')}"
                      " hidden")
        ax.set_title(title, fontsize=9)
    handles = [Line2D([], [], color=color, lw=1.8, label=name)
               for name, color in zip(CLASSES, _CLASS_COLORS, strict=False)]
    handles.append(Line2D([], [], color="0.35", lw=1.0, ls="--", label="ground truth"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=9,
               frameon=False)
    fig.suptitle(f"DETR predictions on validation images (score > {threshold:g}). For display "
                 f"only, overlapping predictions (IoU > {nms_iou:g}, any class) are reduced "
                 "to the highest-scoring one;\nAP is computed on every query.", fontsize=10)
    return fig


def _learning_curve(history, subset_images: int, val_images: int, eval_every: int):
    """Losses, and the AP during training on the first ``subset_images`` validation images
    next to the final AP on all ``val_images``."""
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12.0, 4.4), layout="constrained")
    for key, name in (("loss", "total"), ("loss_ce", "ce"), ("loss_bbox", "L1"),
                      ("loss_giou", "GIoU")):
        plot_smoothed(ax, history, key, points=60, label=f"{name} loss")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (smoothed)")
    ax.set_title("training losses", fontsize=10)
    ax.legend(loc="upper right", fontsize=8)
    top = 0.0
    subset = [(s, m["eval/subset_ap"], m["eval/subset_ap50"]) for s, m in history
              if "eval/subset_ap" in m]
    if subset:
        s, ap, ap50 = np.array(subset).T
        what = f"first {subset_images} of {val_images} val images, every {eval_every} steps"
        ax2.plot(s, ap, "o-", color="black", markersize=4, label=f"AP ({what})")
        ax2.plot(s, ap50, "s--", color="0.5", markersize=4, label=f"AP50 ({what})")
        top = max(top, float(ap50.max()))
    full = [(s, m["eval/ap"], m["eval/ap50"]) for s, m in history if "eval/ap" in m]
    if full:
        s, ap, ap50 = np.array(full).T
        line = "none" if subset else "-"  # eval_subset = 0: every evaluation is whole
        ax2.plot(s, ap, "*", color="tab:red", markersize=14, linestyle=line,
                 label=f"AP (all {val_images} val images): {ap[-1]:.3f}")
        ax2.plot(s, ap50, "*", color="tab:orange", markersize=14, linestyle=line,
                 label=f"AP50 (all {val_images} val images): {ap50[-1]:.3f}")
        top = max(top, float(ap50.max()))
    ax2.set_ylim(0.0, min(1.0, 1.3 * top) if top > 0 else 1.0)
    ax2.set_xlabel("step")
    ax2.set_ylabel("COCO bbox AP")
    ax2.set_title("validation AP (subset during training, whole split at the end)",
                  fontsize=10)
    ax2.legend(loc="upper left", fontsize=8)
    for a in (ax, ax2):
        a.grid(alpha=0.3)
    fig.suptitle("detr-shapes")
    return fig


@register_recipe(
    "detr-shapes",
    "DETR from scratch on synthetic shapes: in-jit Hungarian matching, COCO bbox AP",
    claim="AP 0.26–0.36 on 500 held-out images, depending on the seed (about 5 minutes)",
    quick=DetrShapesConfig(),
    full=DetrShapesConfig(num_train=20000, num_val=1000, steps=30000, eval_every=1000,
                          eval_subset=200,
                          checkpoint_every=2500,
                          model=dataclasses.replace(
                              DetrShapesConfig().model, d_model=128, num_heads=8,
                              num_encoder_layers=3, num_decoder_layers=4, mlp_dim=256,
                              num_queries=16, dropout_rate=0.1,
                              backbone=BackboneConfig(stem_channels=32, channels=(64, 128),
                                                      blocks=(2, 2), strides=(2, 2))),
                          optim=dataclasses.replace(DetrShapesConfig().optim,
                                                    learning_rate=5e-4, warmup_steps=1000)),
)
def detr_shapes(ctx: RunContext, cfg: DetrShapesConfig) -> dict:
    t0 = time.perf_counter()
    state, _predict, val, metrics, predictions = train_detr_shapes(
        cfg, logger=ctx.logger, checkpointer=ctx.checkpointer(), progress=ctx.progress)
    seconds = time.perf_counter() - t0
    history = ctx.history()  # the whole run, a resumed one included
    ctx.save_figure(_overlays(val, predictions, cfg.overlay_images, cfg.overlay_threshold),
                    "predictions")
    n_sub = cfg.eval_subset if 0 < cfg.eval_subset < len(val) else len(val)
    ctx.save_figure(_learning_curve(history, n_sub, len(val), cfg.eval_every),
                    "learning_curve")
    rows = [m for _, m in history if "loss" in m]
    tail = rows[-100:]
    return {
        "ap": metrics["ap"],
        "ap50": metrics["ap50"],
        "ap75": metrics["ap75"],
        "ar100": metrics["ar100"],
        "final_loss": float(np.mean([m["loss"] for m in tail])) if tail else float("nan"),
        "final_class_error": float(np.mean([m["class_error"] for m in tail])) if tail
        else float("nan"),
        "steps": int(state.step),
        "train_images": cfg.num_train,
        "val_images": len(val),
        "seconds": seconds,
    }
