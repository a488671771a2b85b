"""``face-openset``: detect → five landmarks → align → embed → verify, on unseen identities.

Data: :mod:`vision.face.synthetic`. The detector trains on cluttered scenes of training
identities; the embedders train on one image per face of ``num_train_ids`` training
identities; everything is evaluated on *test* identities (ids from
``TEST_ID_OFFSET`` on), never seen in training.

Pipeline and measurements:

1. **Detection** (:class:`vision.face.detect.FaceDetector`, trained with
   ``common.train.fit``): COCO bbox AP on held-out scenes of test identities
   (pycocotools through :mod:`vision.coco`), landmark NME (inter-ocular) of the matched
   faces, and a face / non-face check on the 200 real 25×25 images of
   ``skimage.data.lfw_subset()`` (AUC and accuracy of the detector's best heatmap score).
2. **Alignment**: ``vision.face.align.norm_crop`` to a ``crop_size`` crop (insightface's
   template rule: at the quick scale's 48 px, which 112 does not divide, the template is
   scaled by 48/128 and moved 3 px right). Training faces are aligned with their true
   landmarks; test faces with the detector's landmarks (the best-scoring detection;
   where there is none, the centre crop).
3. **Embedding**: a small :class:`common.nn.resnet.ResNet`, global average pooling and a
   linear layer to ``embed_dim``; trained per head with ``common.train.fit``: margin
   heads through ``vision.face.margins.margin_loss`` (``s = scale`` for every scaled
   head, insightface's margins otherwise; SphereFace with λ fixed at its floor 5, as
   the short runs end long before its annealing would), triplet with batch-hard mining
   (``vision.face.metric_losses.triplet_loss``) on batches of ``triplet_ids_per_batch``
   identities × ``rec_batch / triplet_ids_per_batch`` images.
4. **Verification** on ``num_pairs`` test pairs (alternating genuine / impostor):
   10-fold accuracy (``verify_kfold``), TAR at FAR = 1e-3 from cosine scores, and
   closed-set rank-1 identification (gallery: each test identity's first image,
   probes: the rest), embeddings flip-fused (``fuse_flip``).

Table 1 runs every head in ``heads`` with predicted landmarks at test time. Table 2 runs
``alignment_head`` four ways: true landmarks, predicted landmarks, no alignment (the
canvas's centre ``crop_size`` crop, train and test), and no alignment with one-to-many
augmentation (each training image re-drawn every step under a random similarity:
rotation, scale, shift and mirror).

Figures: normalised 2-D features per head (a small run on ``feature_ids`` identities with
``embed_dim = 2``), ROC curves per head, alignment before / after with landmarks,
detection overlays.

Quick scale is sized for a 2-core CPU (48×48 crops instead of insightface's 112, 150
training identities, 250 steps per head); the full config (112×112 crops, 2000
identities, 5000 steps) is sized for an accelerator and was not run on the CPU.

Measured at quick scale (seed 0, 4.2 minutes on a 2-core CPU shared with other jobs):
detection AP 0.57 / AP50 0.97, landmark NME 0.21; LFW face / non-face AUC 0.71;
with predicted landmarks, 10-fold accuracy 0.76–0.84 across the six heads (triplet
highest, plain softmax 0.81, the margin heads 0.76–0.81: at this scale the margin heads
do not beat softmax); ArcFace with true landmarks 0.94, with predicted 0.78, without
alignment 0.81 (TAR@FAR=1e-3 0.29, 0.09, 0.02).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from common.checks import check_fields
from common.nn.resnet import ResNet, ResNetConfig
from common.optim import OptimConfig, build_optimizer
from common.precision import get_policy
from common.recipe import PrefixedLogger, RunContext, default_total_steps, register_recipe
from common.train import TrainState, fit, train_step_fn
from vision.face.align import ARCFACE_TEMPLATE, norm_crop, warp_affine
from vision.face.detect import (
    Detections,
    DetectorConfig,
    FaceDetector,
    coco_face_metrics,
    decode,
    detector_loss,
    encode_targets,
    landmark_nme,
    match_detections,
    normalize_images,
)
from vision.face.margins import MARGINS, margin_loss
from vision.face.metric_losses import triplet_loss
from vision.face.synthetic import (
    Nuisance,
    identity_range,
    render_faces,
    render_scenes,
    sample_pairs,
)
from vision.face.verify import (
    cosine_scores,
    fuse_flip,
    rank1_accuracy,
    roc_curve,
    tar_at_far,
    verify_kfold,
)

__all__ = [
    "FaceEmbedder",
    "FaceOpensetConfig",
    "align_faces",
    "detect_faces",
    "evaluate_embeddings",
    "lfw_face_check",
    "run_face_openset",
    "train_detector",
    "train_embedders",
]

HEADS = ("softmax", "sphereface", "cosface", "arcface", "combined", "triplet")


@dataclasses.dataclass(frozen=True)
class FaceOpensetConfig:
    """Config of ``face-openset`` (see the module docstring for the stages).

    Detection: ``num_scenes`` training scenes of ``scene_size`` pixels with up to
    ``max_faces`` faces of outline half-height ``min_face``–``max_face`` pixels, a
    fraction ``gray_prob`` of them grey; ``det_steps`` steps of batch ``det_batch``.
    Recognition: canvases of ``canvas_size`` pixels (face half-height ``face_scale`` of
    the side), ``crop_size`` aligned crops, ``rec_steps`` steps of batch ``rec_batch``
    per head; ``scale`` is the ``s`` of every scaled margin head.
    """

    seed: int = 0
    scene_size: int = 64
    num_scenes: int = 1000
    num_val_scenes: int = 200
    max_faces: int = 3
    min_face: float = 8.0
    max_face: float = 20.0
    gray_prob: float = 0.2
    lfw_check: bool = True
    detector: DetectorConfig = DetectorConfig()
    det_steps: int = 400
    det_batch: int = 16
    det_optim: OptimConfig = OptimConfig(name="adamw", learning_rate=3e-3, schedule="cosine",
                                         warmup_steps=50, end_factor=0.05, weight_decay=1e-4,
                                         clip_norm=10.0)
    canvas_size: int = 64
    crop_size: int = 48
    face_scale: float = 0.3
    num_train_ids: int = 150
    train_images_per_id: int = 8
    num_test_ids: int = 100
    test_images_per_id: int = 6
    num_pairs: int = 2000
    heads: tuple[str, ...] = HEADS
    scale: float = 32.0
    embed_dim: int = 64
    embedder: ResNetConfig = ResNetConfig(stem_channels=16, stem_kernel=3, stem_stride=2,
                                          stem_pool=False, channels=(24, 48, 96),
                                          blocks=(1, 1, 1), strides=(2, 2, 2),
                                          norm="groupnorm", norm_groups=8)
    rec_steps: int = 250
    rec_batch: int = 48
    triplet_ids_per_batch: int = 12
    triplet_margin: float = 0.2
    rec_optim: OptimConfig = OptimConfig(name="adamw", learning_rate=3e-3, schedule="cosine",
                                         warmup_steps=30, end_factor=0.05, weight_decay=5e-4)
    precision: str = "fp32"
    alignment_head: str = "arcface"
    no_alignment_runs: bool = True
    augment_rotation: float = 20.0
    augment_scale: float = 0.1
    augment_shift: float = 0.06
    feature_heads: tuple[str, ...] = ("softmax", "sphereface", "cosface", "arcface")
    feature_ids: int = 8
    feature_steps: int = 100
    chunk_size: int = 50
    eval_batch: int = 200
    overlay_images: int = 8

    def validate(self) -> None:
        get_policy(self.precision)
        check_fields(self, positive_ints=(
            "scene_size", "num_scenes", "num_val_scenes", "max_faces", "det_steps",
            "det_batch", "canvas_size", "crop_size", "num_train_ids", "num_test_ids",
            "num_pairs", "embed_dim", "rec_steps", "rec_batch", "triplet_ids_per_batch",
            "feature_steps", "chunk_size", "eval_batch"),
            nonnegative_ints=("seed", "overlay_images", "feature_ids"),
            positive=("min_face", "max_face", "face_scale", "scale", "triplet_margin"),
            nonnegative=("augment_rotation", "augment_scale", "augment_shift"),
            fractions=("gray_prob",))
        self.detector.validate()
        stride = self.detector.backbone.stride
        if self.scene_size % stride or self.canvas_size % stride:
            raise ValueError(f"scene_size and canvas_size must be multiples of the detector's "
                             f"stride {stride}, got {self.scene_size} and {self.canvas_size}")
        if not 2.0 <= self.min_face <= self.max_face <= 0.35 * self.scene_size:
            raise ValueError(f"need 2 <= min_face <= max_face <= 0.35 * scene_size, got "
                             f"{self.min_face}, {self.max_face}, {self.scene_size}")
        if self.face_scale > 0.5:
            raise ValueError(f"face_scale must be <= 0.5, got {self.face_scale}")
        if self.crop_size > self.canvas_size:
            raise ValueError(f"crop_size ({self.crop_size}) must not exceed canvas_size "
                             f"({self.canvas_size})")
        for name in ("train_images_per_id", "test_images_per_id"):
            if getattr(self, name) < 2:
                raise ValueError(f"{name} must be >= 2, got {getattr(self, name)}")
        if not self.heads:
            raise ValueError("heads must name at least one head")
        for name, heads in (("heads", self.heads), ("feature_heads", self.feature_heads)):
            for head in heads:
                if head != "triplet" and head not in MARGINS.names():
                    raise ValueError(f"{name} entries must be 'triplet' or one of "
                                     f"{MARGINS.names()}, got {head!r}")
        if self.alignment_head != "triplet" and self.alignment_head not in MARGINS.names():
            raise ValueError(f"alignment_head must be 'triplet' or one of {MARGINS.names()}, "
                             f"got {self.alignment_head!r}")
        if self.rec_batch % self.triplet_ids_per_batch:
            raise ValueError(f"rec_batch ({self.rec_batch}) must be a multiple of "
                             f"triplet_ids_per_batch ({self.triplet_ids_per_batch})")
        if self.triplet_ids_per_batch > self.num_train_ids:
            raise ValueError(f"triplet_ids_per_batch ({self.triplet_ids_per_batch}) must not "
                             f"exceed num_train_ids ({self.num_train_ids})")
        if self.feature_ids == 1:
            raise ValueError("feature_ids must be 0 (no figure) or >= 2, got 1")
        self.det_optim.validate()
        self.rec_optim.validate()
        if self.rec_optim.clip_norm is not None:
            raise ValueError("rec_optim.clip_norm must be None: the embedders of one group "
                             "train together and a global-norm clip would couple them")


def _prefixed(logger, prefix):
    return None if logger is None else PrefixedLogger(logger, prefix)


# ----------------------------------------------------------------------------- detection


def train_detector(cfg: FaceOpensetConfig, *, logger=None, checkpointer=None,
                   progress: bool = False, history: list | None = None):
    """Train the detector on synthetic scenes with ``common.train.fit``.

    Returns:
      ``(state, predict)`` with ``predict(params, rest, images_u8 [B, S, S, 3]) ->
      (Detections, heatmap_probability_max [B])`` jitted.
    """
    train = render_scenes(cfg.num_scenes, size=cfg.scene_size, max_faces=cfg.max_faces,
                          min_face=cfg.min_face, max_face=cfg.max_face, seed=cfg.seed,
                          identities=identity_range("train", cfg.num_train_ids),
                          gray_prob=cfg.gray_prob)
    dcfg = dataclasses.replace(cfg.detector, backbone=dataclasses.replace(
        cfg.detector.backbone, dtype=get_policy(cfg.precision).layer_dtype))  # precision
    model = FaceDetector(dcfg, rngs=nnx.Rngs(cfg.seed))
    optim = default_total_steps(cfg.det_optim, cfg.det_steps)
    tx = build_optimizer(optim)
    state = TrainState.create(model, tx, jax.random.fold_in(jax.random.key(cfg.seed), 1))
    graphdef = state.graphdef

    def loss_fn(params, rest, batch, key):
        out = nnx.merge(graphdef, params, rest)(normalize_images(batch["images"]))
        targets = encode_targets(batch["boxes"], batch["landmarks"], batch["mask"],
                                 out["heatmap"].shape[1:], dcfg)
        return detector_loss(out, targets, batch["mask"], dcfg)

    def batch_fn(data, key):
        idx = jax.random.randint(key, (cfg.det_batch,), 0, data["images"].shape[0])
        return jax.tree.map(lambda x: jnp.take(x, idx, axis=0), data)

    data = {"images": jnp.asarray(train.images), "boxes": jnp.asarray(train.boxes),
            "landmarks": jnp.asarray(train.landmarks), "mask": jnp.asarray(train.mask)}
    state = fit(state, train_step_fn(loss_fn, tx), batch_fn, data, num_steps=cfg.det_steps,
                chunk_size=min(cfg.chunk_size, cfg.det_steps), logger=logger,
                checkpointer=checkpointer, checkpoint_every=cfg.det_steps, progress=progress,
                desc="face detector", history=history)

    @jax.jit
    def predict(params, rest, images_u8):
        out = nnx.merge(graphdef, params, rest)(normalize_images(images_u8))
        return decode(out, dcfg, max_output=cfg.max_faces + 2), jnp.max(
            jax.nn.sigmoid(out["heatmap"]), axis=(1, 2))

    return state, predict


def _in_batches(fn, x: np.ndarray, batch: int, axis: int = 0):
    """``fn`` over ``x`` in chunks of exactly ``batch`` rows (the last one zero-padded, so
    one compilation serves every chunk); outputs concatenated along ``axis`` and cut to
    ``len(x)``."""
    parts = []
    for i in range(0, len(x), batch):
        chunk = x[i:i + batch]
        pad = batch - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
        parts.append(jax.tree.map(np.asarray, fn(jnp.asarray(chunk))))
    out = jax.tree.map(lambda *p: np.concatenate(p, axis=axis), *parts)
    return jax.tree.map(lambda a: np.take(a, np.arange(len(x)), axis=axis), out)


def detect_faces(predict, state, images_u8: np.ndarray, batch: int = 200):
    """Run ``predict`` over ``images_u8 [N, S, S, 3]`` in batches → (Detections, best [N])."""
    dets, best = _in_batches(lambda x: predict(state.params, state.rest, x), images_u8, batch)
    return Detections(*dets), best


def detection_metrics(predict, state, scenes, batch: int = 200) -> tuple[dict, Detections]:
    """COCO AP of the detector on ``scenes`` and the NME of its matched landmarks."""
    dets, _ = detect_faces(predict, state, scenes.images, batch)
    n, s = scenes.images.shape[:2]
    coco = coco_face_metrics(np.full((n, 2), s), scenes.boxes, scenes.mask, dets)
    index, matched = jax.jit(jax.vmap(match_detections))(dets.boxes, dets.valid,
                                                         scenes.boxes, scenes.mask)
    index, matched = np.asarray(index), np.asarray(matched)
    pred = np.take_along_axis(dets.landmarks, index[..., None, None], axis=1)  # [N, T, 5, 2]
    nme = np.asarray(landmark_nme(pred[matched], scenes.landmarks[matched])) if matched.any() \
        else np.zeros(0)
    metrics = {"ap": coco["ap"], "ap50": coco["ap50"], "ap75": coco["ap75"],
               "recall_iou50": float(matched.sum() / max(1, scenes.mask.sum())),
               "nme": float(nme.mean()) if nme.size else float("nan")}
    return metrics, dets


def lfw_face_check(predict, state, scene_size: int, face_height: float,
                   batch: int = 200) -> dict:
    """Face / non-face check on ``skimage.data.lfw_subset()`` (100 faces, 100 non-faces).

    Each 25×25 grey image is resized to ``face_height`` pixels (at most ``scene_size −
    4``) and centred on a mid-grey ``scene_size`` canvas; its score is the detector's
    largest heatmap probability.
    Returns the ROC AUC (scikit-learn), the accuracy at probability 0.5 and the mean
    score of each class.
    """
    from skimage.data import lfw_subset
    from skimage.transform import resize
    from sklearn.metrics import roc_auc_score

    images = lfw_subset()  # [200, 25, 25] in [0, 1]; faces first
    side = min(scene_size - 4, round(face_height))
    canvas = np.full((len(images), scene_size, scene_size, 3), 128, np.uint8)
    off = (scene_size - side) // 2
    for k, img in enumerate(images):
        up = resize(img, (side, side), order=1, anti_aliasing=False)
        canvas[k, off:off + side, off:off + side] = np.rint(255 * up)[..., None]
    _, best = detect_faces(predict, state, canvas, batch)
    truth = np.arange(len(images)) < 100
    return {"auc": float(roc_auc_score(truth, best)),
            "accuracy": float(np.mean((best > 0.5) == truth)),
            "face_score": float(best[truth].mean()), "nonface_score": float(best[~truth].mean())}


# ----------------------------------------------------------------------------- alignment


def _template_points(canvas: int, crop: int) -> np.ndarray:
    """Landmarks that ``norm_crop`` maps to the template by a pure translation: the
    template of the crop, centred on the canvas (the "no alignment" centre crop)."""
    ratio = crop / 112.0 if crop % 112 == 0 else crop / 128.0
    shift = 0.0 if crop % 112 == 0 else 8.0 * ratio
    pts = ARCFACE_TEMPLATE.astype(np.float64) * ratio
    pts[:, 0] += shift
    return (pts + (canvas - crop) / 2.0).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _batched_norm_crop(crop: int):
    return jax.jit(jax.vmap(lambda im, lm: norm_crop(im, lm, crop)))


def align_faces(images_u8: np.ndarray, landmarks: np.ndarray, crop: int,
                batch: int = 500) -> np.ndarray:
    """``norm_crop`` of every image at its landmarks (vmapped, jitted) → uint8 crops."""
    fn = _batched_norm_crop(crop)
    images, landmarks = jnp.asarray(images_u8), jnp.asarray(landmarks, jnp.float32)
    out = _in_batches(lambda i: fn(images[i].astype(jnp.float32), landmarks[i]),
                      np.arange(len(images)), min(batch, max(1, len(images))))
    return np.clip(np.rint(np.nan_to_num(out)), 0, 255).astype(np.uint8)


def predicted_landmarks(dets: Detections, fallback: np.ndarray) -> tuple[np.ndarray, int]:
    """The best detection's landmarks per image, ``fallback [5, 2]`` where none or where
    they are degenerate; returns ``(landmarks [N, 5, 2], fallbacks used)``."""
    lm = np.array(dets.landmarks[:, 0], np.float32)
    eyes = np.linalg.norm(lm[:, 0] - lm[:, 1], axis=-1)
    bad = ~dets.valid[:, 0] | ~np.all(np.isfinite(lm), axis=(1, 2)) | (eyes < 1.0)
    lm[bad] = fallback
    return lm, int(bad.sum())


# ----------------------------------------------------------------------------- embedding


class FaceEmbedder(nnx.Module):
    """ResNet features → global average pool → linear ``embed_dim`` → batch norm (the
    "features" layer of insightface's output block); plus the class centres ``[C, D]``
    of a margin head.

    Call: ``x [B, S, S, 3]`` normalised crops, ``deterministic`` (batch norm: running
    averages when True, batch statistics and an update of the averages when False) →
    ``[B, D]`` embeddings.
    """

    def __init__(self, backbone: ResNetConfig, embed_dim: int, num_classes: int, *,
                 rngs: nnx.Rngs):
        self.backbone = ResNet(backbone, 3, rngs=rngs)
        self.head = nnx.Linear(backbone.channels[-1], embed_dim, rngs=rngs)
        self.features = nnx.BatchNorm(embed_dim, momentum=0.9, rngs=rngs)
        self.centers = nnx.Param(0.01 * jax.random.normal(rngs.params(),
                                                          (num_classes, embed_dim)))

    def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
        feats = self.backbone(x)[-1]
        return self.features(self.head(jnp.mean(feats, axis=(1, 2))),
                             use_running_average=deterministic)


def _random_similarity(key, n: int, size: int, rotation: float, scale: float, shift: float):
    """``[n, 3, 3]`` random similarities about the image centre, half of them mirrored."""
    k1, k2, k3, k4 = jax.random.split(key, 4)
    theta = jnp.deg2rad(jax.random.uniform(k1, (n,), minval=-rotation, maxval=rotation))
    s = jax.random.uniform(k2, (n,), minval=1 - scale, maxval=1 + scale)
    t = size * jax.random.uniform(k3, (n, 2), minval=-shift, maxval=shift)
    flip = jnp.where(jax.random.bernoulli(k4, 0.5, (n,)), -1.0, 1.0)
    c, sn = s * jnp.cos(theta), s * jnp.sin(theta)
    centre = (size - 1) / 2.0
    a = jnp.stack([jnp.stack([c * flip, -sn], -1), jnp.stack([sn * flip, c], -1)], -2)
    b = centre + t - jnp.einsum("nij,j->ni", a, jnp.full((2,), centre))
    top = jnp.concatenate([a, b[..., None]], -1)  # [n, 2, 3]
    bottom = jnp.broadcast_to(jnp.array([[0.0, 0.0, 1.0]]), (n, 1, 3))
    return jnp.concatenate([top, bottom], -2)


def train_embedders(cfg: FaceOpensetConfig, heads: tuple[str, ...], crops_u8: np.ndarray,
                    labels: np.ndarray, *, augment: tuple[bool, ...] | None = None,
                    embed_dim: int | None = None, steps: int | None = None, logger=None,
                    checkpointer=None, progress: bool = False, history: list | None = None):
    """Train one :class:`FaceEmbedder` per entry of ``heads``, together, with ``fit``.

    The ``H`` embedders share an architecture, so their parameters are stacked on a
    leading axis and one ``vmap``-ed forward pass serves them all (one compilation); the
    loss is the sum of the members' losses, whose parameters are disjoint, so the members
    train independently (Adam is per-parameter; the optimizer must not clip by a global
    norm, which would couple them). Every step draws one batch of
    ``triplet_ids_per_batch`` identities × ``rec_batch / triplet_ids_per_batch`` images
    (the P×K sampling triplet mining needs, used by every member).

    Args:
      heads: ``H`` head names (margin heads or ``"triplet"``).
      crops_u8: ``[V, N, S, S, 3]`` training crops in ``V`` variants (``V = 1`` or ``H``:
        member ``h`` reads variant ``h``) or ``[N, S, S, 3]`` shared by all.
      labels: ``[N]`` classes ``0 .. C − 1``, the same number of images each, grouped.
      augment: per member, redraw each image under a random similarity every step
        (one-to-many augmentation); default none.
      embed_dim, steps: default ``cfg.embed_dim`` and ``cfg.rec_steps``.

    Returns:
      ``(state, embed)``: ``embed(params, rest, crops_u8 [B, S, S, 3]) -> [H, B, D]``.
    """
    H = len(heads)
    augment = tuple(augment) if augment is not None else (False,) * H
    if len(augment) != H:
        raise ValueError(f"augment must have one entry per head ({H}), got {len(augment)}")
    crops_u8 = crops_u8 if crops_u8.ndim == 5 else crops_u8[None]
    if crops_u8.shape[0] not in (1, H):
        raise ValueError(f"crops_u8 must hold 1 or {H} variants, got {crops_u8.shape[0]}")
    labels = np.asarray(labels)
    num_classes = int(labels.max()) + 1
    per_id = np.bincount(labels)
    if np.any(per_id != per_id[0]) or np.any(np.diff(labels) < 0):
        raise ValueError("labels must hold the same number of images per class, grouped")
    per_id = int(per_id[0])
    d = embed_dim or cfg.embed_dim
    steps = steps or cfg.rec_steps
    P = min(cfg.triplet_ids_per_batch, num_classes)
    K = cfg.rec_batch // cfg.triplet_ids_per_batch
    backbone = dataclasses.replace(cfg.embedder, dtype=get_policy(cfg.precision).layer_dtype)
    members = [FaceEmbedder(backbone, d, num_classes, rngs=nnx.Rngs(cfg.seed + 10 + h))
               for h in range(H)]
    graphdef = None
    parts = []
    for m in members:
        graphdef, params, rest = nnx.split(m, nnx.Param, ...)
        parts.append((params, rest))
    params = jax.tree.map(lambda *x: jnp.stack(x), *[p for p, _ in parts])
    rest = jax.tree.map(lambda *x: jnp.stack(x), *[r for _, r in parts])
    optim = dataclasses.replace(default_total_steps(cfg.rec_optim, steps), clip_norm=None)
    tx = build_optimizer(optim)
    state = TrainState(params=params, opt_state=tx.init(params), step=jnp.zeros((), jnp.int32),
                       key=jax.random.fold_in(jax.random.key(cfg.seed), 2), rest=rest)
    size = crops_u8.shape[2]
    scaled = {"s": cfg.scale}

    def forward(params, rest, x, train):
        """x [H, B, S, S, 3] -> embeddings [H, B, D], centres [H, C, D], new rest."""
        def one(p, r, xi):
            model = nnx.merge(graphdef, p, r)
            emb = model(xi, deterministic=not train)
            return emb, model.centers[...], nnx.split(model, nnx.Param, ...)[2]

        return jax.vmap(one)(params, rest, x)

    def loss_fn(params, rest, batch, key):
        emb, centers, new_rest = forward(params, rest, batch["images"], True)
        total, metrics = 0.0, {}
        for h, head in enumerate(heads):
            if head == "triplet":
                loss = triplet_loss(emb[h], batch["labels"], mining="batch_hard",
                                    margin=cfg.triplet_margin)
            else:
                kw = scaled if head in ("normface", "cosface", "arcface", "combined") else {}
                loss = margin_loss(head, emb[h], centers[h], batch["labels"], **kw)
            metrics[f"loss_{h}_{head}"] = loss
            total = total + loss
        return total, (metrics, new_rest)

    def batch_fn(data, key):
        k_idx, k_img, k_aug = jax.random.split(key, 3)
        ids = jax.random.choice(k_idx, num_classes, (P,), replace=False)
        offs = jax.random.randint(k_img, (P, K), 0, per_id)
        idx = (ids[:, None] * per_id + offs).reshape(-1)  # [B]
        images = jnp.take(data["images"], idx, axis=1).astype(jnp.float32)  # [V, B, ...]
        images = jnp.broadcast_to(images, (H, *images.shape[1:]))
        if any(augment):
            mats = _random_similarity(k_aug, H * idx.shape[0], size, cfg.augment_rotation,
                                      cfg.augment_scale, cfg.augment_shift)
            flat = images.reshape((-1, *images.shape[2:]))
            warped = jax.vmap(lambda im, m: warp_affine(im, m, size))(flat, mats)
            on = jnp.asarray(augment)[:, None, None, None, None]
            images = jnp.where(on, warped.reshape(images.shape), images)
        return {"images": normalize_images(images), "labels": jnp.take(data["labels"], idx)}

    data = {"images": jnp.asarray(crops_u8), "labels": jnp.asarray(labels, jnp.int32)}
    state = fit(state, train_step_fn(loss_fn, tx, updates_rest=True), batch_fn, data,
                num_steps=steps, chunk_size=min(cfg.chunk_size, steps), logger=logger,
                checkpointer=checkpointer, checkpoint_every=steps, progress=progress,
                desc="embedders " + ",".join(heads), history=history)

    @jax.jit
    def embed(params, rest, crops):
        x = normalize_images(crops)
        return forward(params, rest, jnp.broadcast_to(x, (H, *x.shape)), False)[0]

    return state, embed


def _embed_all(embed, state, crops: np.ndarray, batch: int) -> np.ndarray:
    """Flip-fused embeddings ``[H, N, D]`` of ``crops [N, S, S, 3]`` by every member."""
    def run(x):
        return _in_batches(lambda c: embed(state.params, state.rest, c), x, batch, axis=1)

    plain, flipped = run(crops), run(crops[:, :, ::-1])
    return np.stack([np.asarray(fuse_flip(jnp.asarray(a), jnp.asarray(b)))
                     for a, b in zip(plain, flipped, strict=True)])


def evaluate_embeddings(emb: np.ndarray, labels: np.ndarray, pairs, per_id: int) -> dict:
    """10-fold verification accuracy, TAR@FAR=1e-3, rank-1 identification and the ROC.

    Args:
      emb: ``[N, D]`` embeddings of the test images, ``per_id`` per identity, grouped.
      labels: ``[N]`` identities; pairs: ``(i, j, same)`` of :func:`sample_pairs`.
    """
    i, j, same = pairs
    result = verify_kfold(jnp.asarray(emb[i]), jnp.asarray(emb[j]), jnp.asarray(same))
    scores = cosine_scores(jnp.asarray(emb[i]), jnp.asarray(emb[j]))
    fpr, tpr, _ = roc_curve(scores, jnp.asarray(same))
    first = np.arange(len(labels)) % per_id == 0
    rank1 = rank1_accuracy(jnp.asarray(emb[first]), jnp.asarray(labels[first]),
                           jnp.asarray(emb[~first]), jnp.asarray(labels[~first]))
    return {"accuracy": float(result["accuracy_mean"]),
            "accuracy_std": float(result["accuracy_std"]),
            "tar_far1e-3": float(tar_at_far(scores, jnp.asarray(same), 1e-3)),
            "rank1": float(rank1), "roc": (np.asarray(fpr), np.asarray(tpr))}


# ----------------------------------------------------------------------------- pipeline


def run_face_openset(cfg: FaceOpensetConfig, *, ctx: RunContext | None = None) -> dict:
    """The whole pipeline; returns the summary (and, with ``ctx``, saves the figures)."""
    cfg.validate()
    logger = None if ctx is None else ctx.logger
    progress = False if ctx is None else ctx.progress

    def ckpt(name):
        return None if ctx is None else ctx.checkpointer(f"checkpoints_{name}")

    def phase(what):
        return ctx.phase(what) if ctx is not None else contextlib.nullcontext()

    t0 = time.perf_counter()
    # --- detection
    det_state, predict = train_detector(cfg, logger=_prefixed(logger, "det/"),
                                        checkpointer=ckpt("detector"), progress=progress)
    val = render_scenes(cfg.num_val_scenes, size=cfg.scene_size, max_faces=cfg.max_faces,
                        min_face=cfg.min_face, max_face=cfg.max_face, seed=cfg.seed + 1,
                        identities=identity_range("test", cfg.num_test_ids))
    with phase("evaluating the detector"):
        det_metrics, val_dets = detection_metrics(predict, det_state, val, cfg.eval_batch)
        # a synthetic face box is about 2 half-heights tall: LFW crops at the mean size
        lfw = lfw_face_check(predict, det_state, cfg.scene_size, cfg.min_face + cfg.max_face,
                             cfg.eval_batch) if cfg.lfw_check else {}
    # --- recognition data
    train_ids = np.repeat(identity_range("train", cfg.num_train_ids), cfg.train_images_per_id)
    test_ids = np.repeat(identity_range("test", cfg.num_test_ids), cfg.test_images_per_id)
    kw = dict(size=cfg.canvas_size, face_scale=cfg.face_scale, nuisance=Nuisance())
    with phase("rendering, detecting and aligning faces"):
        train = render_faces(train_ids, seed=cfg.seed + 2, **kw)
        test = render_faces(test_ids, seed=cfg.seed + 3, **kw)
        train_labels = (train_ids - train_ids.min()).astype(np.int64)
        test_labels = test_ids - test_ids.min()
        centre_pts = _template_points(cfg.canvas_size, cfg.crop_size)
        test_dets, _ = detect_faces(predict, det_state, test.images, cfg.eval_batch)
        pred_lm, fallbacks = predicted_landmarks(test_dets, centre_pts)
        crops = {
            "train_gt": align_faces(train.images, train.landmarks, cfg.crop_size),
            "train_none": align_faces(train.images, np.broadcast_to(
                centre_pts, train.landmarks.shape), cfg.crop_size),
            "test_gt": align_faces(test.images, test.landmarks, cfg.crop_size),
            "test_pred": align_faces(test.images, pred_lm, cfg.crop_size),
            "test_none": align_faces(test.images, np.broadcast_to(
                centre_pts, test.landmarks.shape), cfg.crop_size)}
    test_nme = np.asarray(landmark_nme(jnp.asarray(pred_lm), jnp.asarray(test.landmarks)))
    pairs = sample_pairs(test_labels, cfg.num_pairs, seed=cfg.seed + 4)
    per_id = cfg.test_images_per_id

    def evaluate(state, embed, crops_u8):
        emb = _embed_all(embed, state, crops_u8, cfg.eval_batch)  # [H, N, D]
        return [evaluate_embeddings(e, test_labels, pairs, per_id) for e in emb]

    # --- table 1: every head, aligned with true landmarks in training, predicted in test
    heads = tuple(cfg.heads)
    align_in_table1 = cfg.alignment_head in heads
    group = heads if align_in_table1 else (*heads, cfg.alignment_head)
    state, embed = train_embedders(cfg, group, crops["train_gt"], train_labels,
                                   logger=_prefixed(logger, "heads/"),
                                   checkpointer=ckpt("heads"), progress=progress)
    with phase("evaluating the heads"):
        results = evaluate(state, embed, crops["test_pred"])
        gt_results = evaluate(state, embed, crops["test_gt"])
    table1, rocs = {}, {}
    for head, res in zip(heads, results, strict=False):
        rocs[head] = res.pop("roc")
        table1[head] = res
    a = group.index(cfg.alignment_head)
    # --- table 2: alignment variants of alignment_head
    table2 = {"true landmarks": gt_results[a], "predicted landmarks": results[a]}
    if cfg.no_alignment_runs:
        pair = (cfg.alignment_head, cfg.alignment_head)
        st, emb_fn = train_embedders(cfg, pair, crops["train_none"], train_labels,
                                     augment=(False, True), logger=_prefixed(logger, "noalign/"),
                                     checkpointer=ckpt("noalign"), progress=progress)
        with phase("evaluating without alignment"):
            plain, augmented = evaluate(st, emb_fn, crops["test_none"])
        table2["no alignment"] = plain
        table2["no alignment + augmentation"] = augmented
    for row in table2.values():
        row.pop("roc", None)
    # --- 2-D features for the figure
    features = {}
    k = cfg.feature_ids * cfg.train_images_per_id
    if cfg.feature_ids and cfg.feature_heads and ctx is not None:
        fheads = tuple(cfg.feature_heads)
        st, emb_fn = train_embedders(cfg, fheads, crops["train_gt"][:k], train_labels[:k],
                                     embed_dim=2, steps=cfg.feature_steps,
                                     logger=_prefixed(logger, "features2d/"),
                                     checkpointer=ckpt("features2d"), progress=progress)
        emb2 = np.asarray(emb_fn(st.params, st.rest, jnp.asarray(crops["train_gt"][:k])))
        features = dict(zip(fheads, emb2, strict=True))
    seconds = time.perf_counter() - t0
    if ctx is not None:
        _figures(ctx, cfg, val, val_dets, test, pred_lm, crops, rocs, table1, features,
                 train_labels[:k])
    return {"detection": det_metrics, "lfw_face_check": lfw,
            "test_landmark_nme": float(np.mean(test_nme)), "test_detection_fallbacks":
            fallbacks, "table1_heads": table1, "table2_alignment": table2,
            "train_identities": cfg.num_train_ids, "test_identities": cfg.num_test_ids,
            "pairs": cfg.num_pairs, "crop_size": cfg.crop_size, "seconds": seconds}


# ----------------------------------------------------------------------------- figures


def _figures(ctx, cfg, val, val_dets, test, pred_lm, crops, rocs, table1, features,
             feature_labels):
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    # detection overlays
    count = min(cfg.overlay_images, len(val))
    if count:
        cols = min(4, count)
        rows = -(-count // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.2 * rows), squeeze=False,
                                 layout="constrained")
        for k, ax in enumerate(axes.ravel()):
            ax.axis("off")
            if k >= count:
                continue
            ax.imshow(val.images[k])
            for b in val.boxes[k, val.mask[k]]:
                ax.add_patch(Rectangle(b[:2], *(b[2:] - b[:2]), fill=False, ls="--",
                                       ec="white", lw=1))
            for q in np.flatnonzero(val_dets.valid[k] & (val_dets.scores[k] > 0.3)):
                b = val_dets.boxes[k, q]
                ax.add_patch(Rectangle(b[:2], *(b[2:] - b[:2]), fill=False, ec="yellow",
                                       lw=1.5))
                ax.plot(*val_dets.landmarks[k, q].T, "c.", ms=4)
                ax.text(b[0], b[1] - 1, f"{val_dets.scores[k, q]:.2f}", color="yellow",
                        fontsize=7)
        fig.suptitle("detections (yellow, score > 0.3, landmarks cyan) vs truth (dashed) "
                     "on scenes of unseen identities", fontsize=9)
        ctx.save_figure(fig, "detections")
    # alignment before / after
    n = min(6, len(test))
    fig, axes = plt.subplots(3, n, figsize=(2.2 * n, 6.8), squeeze=False, layout="constrained")
    ratio = cfg.crop_size / 112.0 if cfg.crop_size % 112 == 0 else cfg.crop_size / 128.0
    dst = ARCFACE_TEMPLATE * ratio + np.array([0.0 if cfg.crop_size % 112 == 0 else 8 * ratio,
                                               0.0])
    for k in range(n):
        idx = k * cfg.test_images_per_id
        axes[0, k].imshow(test.images[idx])
        axes[0, k].plot(*test.landmarks[idx].T, "g+", ms=7, label="true")
        axes[0, k].plot(*pred_lm[idx].T, "rx", ms=5, label="predicted")
        axes[1, k].imshow(crops["test_pred"][idx])
        axes[1, k].plot(*dst.T, "c.", ms=5)
        axes[2, k].imshow(crops["test_none"][idx])
        for r in range(3):
            axes[r, k].axis("off")
    axes[0, 0].legend(fontsize=6, loc="lower left")
    axes[0, 0].set_title("input + landmarks", fontsize=8, loc="left")
    axes[1, 0].set_title(f"norm_crop {cfg.crop_size}px (template cyan)", fontsize=8, loc="left")
    axes[2, 0].set_title("centre crop (no alignment)", fontsize=8, loc="left")
    ctx.save_figure(fig, "alignment")
    # ROC curves
    fig, ax = plt.subplots(figsize=(5.5, 4.5), layout="constrained")
    for head, (fpr, tpr) in rocs.items():
        ax.plot(np.maximum(fpr, 1e-4), tpr,
                label=f"{head} (acc {table1[head]['accuracy']:.3f})")
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title("verification ROC on unseen identities (predicted landmarks)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ctx.save_figure(fig, "roc")
    # normalised 2-D features
    if features:
        fig, axes = plt.subplots(1, len(features), figsize=(3.2 * len(features), 3.4),
                                 squeeze=False, layout="constrained")
        for ax, (head, emb) in zip(axes[0], features.items(), strict=True):
            unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
            radius = 1.0 + 0.04 * feature_labels  # each identity on its own ring
            ax.scatter(unit[:, 0] * radius, unit[:, 1] * radius, c=feature_labels,
                       cmap="tab10", s=8)
            ax.add_patch(plt.Circle((0, 0), 1.0, fill=False, color="0.7", lw=0.8))
            ax.set_aspect("equal")
            ax.set_title(head, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle(f"normalised 2-D embeddings of {cfg.feature_ids} training identities "
                     "(identity k drawn at radius 1 + 0.04 k)", fontsize=9)
        ctx.save_figure(fig, "features_2d")


def _table_md(rows: dict) -> str:
    lines = ["| | 10-fold accuracy | TAR@FAR=1e-3 | rank-1 |", "|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['accuracy']:.3f} ± {r['accuracy_std']:.3f} | "
                     f"{r['tar_far1e-3']:.3f} | {r['rank1']:.3f} |")
    return "\n".join(lines)


@register_recipe(
    "face-openset",
    "face recognition: detect, five landmarks, align, embed (6 heads), verify unseen ids",
    claim="unseen identities: detection AP50 0.97; 10-fold accuracy 0.76-0.84 across heads "
          "(predicted landmarks), 0.94 with true landmarks (about 4 minutes)",
    quick=FaceOpensetConfig(),
    full=FaceOpensetConfig(num_scenes=5000, num_val_scenes=500, det_steps=4000,
                           scene_size=96, max_face=30.0, canvas_size=128, crop_size=112,
                           num_train_ids=2000, train_images_per_id=10, num_test_ids=500,
                           test_images_per_id=6, num_pairs=6000, embed_dim=128,
                           rec_steps=5000, rec_batch=128, triplet_ids_per_batch=32,
                           scale=64.0,
                           embedder=ResNetConfig(stem_channels=32, stem_kernel=3,
                                                 stem_stride=1, stem_pool=False,
                                                 channels=(32, 64, 128, 256),
                                                 blocks=(1, 2, 2, 1), strides=(2, 2, 2, 2),
                                                 norm="groupnorm", norm_groups=8),
                           feature_steps=1000),
)
def face_openset(ctx: RunContext, cfg: FaceOpensetConfig) -> dict:
    summary = run_face_openset(cfg, ctx=ctx)
    (ctx.run_dir / "tables.md").write_text(
        "Table 1 (heads, predicted landmarks)\n\n" + _table_md(summary["table1_heads"])
        + "\n\nTable 2 (alignment, head " + cfg.alignment_head + ")\n\n"
        + _table_md(summary["table2_alignment"]) + "\n", encoding="utf-8")
    return summary
