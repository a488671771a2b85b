"""``detr-shapes``: DETR trained from scratch on synthetic coloured shapes, COCO AP.

Data: :mod:`vision.shapes` (``skimage.draw.random_shapes``: circles, rectangles,
triangles and ellipses, 1–6 per image, images of 48–64 pixels a side padded to 64 with
a pixel mask). Model: :class:`vision.detr.DETR` with a small ResNet. Loss: DETR's set
criterion with the Hungarian matching solved inside the jitted, scanned train step
(``vision.matching``, solver ``"jv"``). Evaluation: COCO bbox AP/AP50/AP75 of all
queries on a held-out split through pycocotools. Figures: prediction overlays on
validation images and the learning curve.

Randomness: the training and validation splits come from ``seed`` and ``seed + 1``;
batches, flips and dropout from ``fold_in(key, step)`` (see ``common.train``).

Measured on a shared 2-core CPU: the quick config (3000 steps of batch 32 over 12 000
images, 12 queries, d_model 64) takes 4.5–6 minutes and reaches AP 0.36, AP50 0.65,
AP75 0.37 on the 500 validation images (results are deterministic for a config; load
changes only the time). The same model trained for 10 000 steps (14 minutes) reaches
AP 0.77, AP50 0.96, AP75 0.92. The full config (a larger model, 20 000 images,
30 000 steps) is sized for an accelerator and was not run on the CPU.
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
from common.recipe import RunContext, default_total_steps, plot_smoothed, register_recipe
from common.train import TrainState, fit, train_step_fn
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
    eval_every: int = 1000
    checkpoint_every: int = 1000
    hflip: bool = True
    optim: OptimConfig = OptimConfig(name="adamw", learning_rate=1e-3, schedule="cosine",
                                     warmup_steps=200, end_factor=0.05, weight_decay=1e-4,
                                     clip_norm=0.1, group_lr=(("backbone", 1.0),))
    eval_batch: int = 250
    coco_backend: str = "pycocotools"
    overlay_images: int = 12
    overlay_threshold: float = 0.5

    def validate(self) -> None:
        check_fields(self, positive_ints=("image_size", "min_image_size", "max_objects",
                                          "min_shape", "max_shape", "num_train", "num_val",
                                          "batch_size", "steps", "chunk_size", "eval_every",
                                          "checkpoint_every", "eval_batch"),
                     nonnegative_ints=("seed", "overlay_images"),
                     fractions=("overlay_threshold",))
        if not self.min_image_size <= self.image_size:
            raise ValueError(f"min_image_size ({self.min_image_size}) must not exceed "
                             f"image_size ({self.image_size})")
        if not self.min_shape <= self.max_shape < self.min_image_size:
            raise ValueError(f"need min_shape <= max_shape < min_image_size, got "
                             f"{self.min_shape}, {self.max_shape}, {self.min_image_size}")
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


def evaluate(predict, params, rest, data: ShapesData, gt: dict, *, batch: int = 250,
             backend: str = "pycocotools") -> tuple[dict, tuple]:
    """COCO bbox metrics of every query on ``data``; returns ``(metrics, predictions)``."""
    scores, labels, boxes = _predict_all(predict, params, rest, data, batch)
    boxes = np.clip(boxes, 0.0, None)
    dets = coco_detections(list(range(1, len(data) + 1)), boxes, scores, labels,
                           num_classes=len(CLASSES))
    return evaluate_bbox(gt, dets, backend=backend), (scores, labels, boxes)


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
    model = DETR(cfg.model, rngs=nnx.Rngs(params=init_key, dropout=init_key))
    tx = build_optimizer(optim)
    state = TrainState.create(model, tx, train_key)
    loss_fn = make_loss_fn(state.graphdef, cfg.criterion)
    predict = make_predict(state.graphdef, cfg.image_size)
    data = {k: jnp.asarray(v) for k, v in train.as_arrays().items()}

    def eval_fn(state):
        metrics, _ = evaluate(predict, state.params, state.rest, val, gt,
                              batch=cfg.eval_batch, backend=cfg.coco_backend)
        return {k: metrics[k] for k in ("ap", "ap50", "ap75")}

    state = fit(state, train_step_fn(loss_fn, tx, updates_rest=True), make_batch_fn(cfg), data,
                num_steps=cfg.steps, chunk_size=cfg.chunk_size, logger=logger,
                checkpointer=checkpointer, checkpoint_every=cfg.checkpoint_every,
                eval_fn=eval_fn, eval_every=cfg.eval_every, progress=progress,
                desc="detr-shapes", history=history)
    metrics, predictions = evaluate(predict, state.params, state.rest, val, gt,
                                    batch=cfg.eval_batch, backend=cfg.coco_backend)
    return state, predict, val, metrics, predictions


# ----------------------------------------------------------------------------- figures


def _overlays(val: ShapesData, predictions, count: int, threshold: float):
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    scores, labels, boxes = predictions
    cols = min(count, 6)
    rows = max(1, -(-count // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.5 * rows), squeeze=False)
    colors = ("tab:red", "tab:blue", "tab:green", "tab:purple")
    for k, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if k >= min(count, len(val)):
            continue
        h, w = val.sizes[k]
        ax.axis("on")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor("0.6")
        ax.imshow(val.images[k, :h, :w])
        gt_boxes, gt_labels = val.boxes_xywh(k)
        for (x, y, bw, bh) in gt_boxes:
            ax.add_patch(Rectangle((x - 0.5, y - 0.5), bw, bh, fill=False, ls="--", lw=0.8,
                                   ec="0.4"))
        for q in np.flatnonzero(scores[k] > threshold):
            x0, y0, x1, y1 = boxes[k, q]
            c = int(labels[k, q])
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, lw=1.4,
                                   ec=colors[c % len(colors)]))
            ax.text(x0, y0 - 1, f"{CLASSES[c][:4]} {scores[k, q]:.2f}", fontsize=5.5,
                    color=colors[c % len(colors)], va="bottom")
        ax.set_title(f"{len(gt_labels)} objects, {h}x{w} px", fontsize=7)
    fig.suptitle(f"DETR predictions (score > {threshold}; dashed: ground truth)", fontsize=9)
    fig.tight_layout()
    return fig


def _learning_curve(history):
    import matplotlib.pyplot as plt

    evals = [(s, m["eval/ap"], m["eval/ap50"]) for s, m in history if "eval/ap" in m]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for key, name in (("loss", "total"), ("loss_ce", "ce"), ("loss_bbox", "L1"),
                      ("loss_giou", "GIoU")):
        plot_smoothed(ax, history, key, points=60, label=f"{name} loss")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (smoothed)")
    ax.legend(loc="upper left", fontsize=7)
    ax2 = ax.twinx()
    if evals:
        s, ap, ap50 = np.array(evals).T
        ax2.plot(s, ap, "o-", color="black", label="val AP")
        ax2.plot(s, ap50, "s--", color="0.5", label="val AP50")
        ax2.legend(loc="upper right", fontsize=7)
    ax2.set_ylim(0.0, 1.0)
    ax2.set_ylabel("COCO AP")
    ax.set_title("detr-shapes")
    return fig


@register_recipe(
    "detr-shapes",
    "DETR from scratch on synthetic shapes: in-jit Hungarian matching, COCO bbox AP",
    quick=DetrShapesConfig(),
    full=DetrShapesConfig(num_train=20000, num_val=1000, steps=30000, eval_every=5000,
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
    ctx.save_figure(_learning_curve(history), "learning_curve")
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
