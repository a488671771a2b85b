"""Top-down pose models: one ResNet backbone and a keypoint head chosen by name.

Coordinates. A crop of ``S × S`` pixels has pixel centres at integer ``(x, y)``;
heads work in *normalised* coordinates ``u = (x + 0.5) / S − 0.5 ∈ [−0.5, 0.5]`` (as
RLE's official code), so a head and its loss do not depend on the input size.
:func:`to_normalized` and :func:`to_pixels` convert.

Heads (registry :data:`HEADS`; a config names one, so a recipe swaps heads by name, e.g.
``jaxatlas run pose-rle --set heads=rle,heatmap``). Each is an ``nnx.Module`` built as
``HEADS.get(name)(config, in_channels, feature_size, rngs=...)`` that maps the
backbone's feature pyramid to a dict of outputs and provides

* ``loss(outputs, target [B, K, 2], weight [B, K]) -> (loss, metrics)`` (normalised
  coordinates) and
* ``decode(outputs) -> (coords [B, K, 2], scores [B, K])`` (normalised coordinates, a
  per-keypoint confidence in ``[0, 1]``-ish used for COCO keypoint scores).

Registered:

* ``"l1"``, ``"l2"``: flattened last feature map → linear → ``μ``; L1 / L2 loss
  (DeepPose-style direct regression). Score 1.
* ``"rle"``: the same trunk → ``μ`` and ``σ = sigmoid(·) + 1e-9``; the loss is
  :func:`vision.pose.rle.rle_loss` with the model's flow (``config.flow``), ``Q`` and
  residual mode from the config. Score ``mean_c(1 − σ_c)`` (the paper's). The flow is
  used only in training; inference reads ``μ`` and ``σ``.
* ``"heatmap"``: the last feature map upsampled to stride ``heatmap_stride`` by
  resize-convolutions with FPN-style lateral inputs from the backbone stages at the
  intermediate strides, 1×1 conv → ``K`` heatmaps; MSE to Gaussian targets
  (:func:`~vision.pose.rle.heatmap_mse`), argmax decoding with the quarter-pixel
  refinement. Score: the heatmap maximum.
* ``"integral"``: the same maps read by :func:`~vision.pose.rle.soft_argmax`
  (integral regression), L1 loss on the coordinates. Score: the largest probability.

Papers: Toshev & Szegedy 2014 (DeepPose); Li et al. 2021 (RLE); Xiao et al. 2018
(Simple Baselines); Sun et al. 2018 (integral regression).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from common.checks import check_fields, check_int, shape_of, shape_str
from common.nn.conv import Conv2D
from common.nn.resnet import ResNet, ResNetConfig
from common.registry import Registry
from vision.pose.flows import FlowConfig, make_flow
from vision.pose.rle import (
    Q_DENSITIES,
    argmax_decode,
    gaussian_heatmaps,
    heatmap_mse,
    l1_loss,
    l2_loss,
    rle_loss,
    soft_argmax,
)

__all__ = ["HEADS", "PoseConfig", "PoseModel", "pose_loss", "predict", "to_normalized",
           "to_pixels"]

#: Keypoint heads by name: ``HEADS.get(name)(config, in_channels, feature_size, rngs=...)``.
HEADS: Registry[type] = Registry("pose head")


@dataclasses.dataclass(frozen=True)
class PoseConfig:
    """A top-down pose model: backbone, head and the head's options.

    Attributes:
      head: registered head name (``HEADS.names()``).
      num_keypoints: ``K`` (17 for COCO).
      input_size: crop side ``S`` in pixels.
      backbone: the ResNet (every head uses its last stage).
      flow: the RLE flow (only the ``"rle"`` head builds one).
      q: RLE's simple density, ``"laplace"`` or ``"gaussian"``.
      residual: RLE in residual mode (True) or direct likelihood (False).
      min_sigma: σ clamp of the RLE loss.
      heatmap_stride: output stride of heatmaps (divides the backbone's stride).
      heatmap_sigma: Gaussian target width in heatmap pixels.
      head_channels: width of the heatmap head's 3×3 convolution.
      integral_beta: soft-argmax inverse temperature.
    """

    head: str = "rle"
    num_keypoints: int = 17
    input_size: int = 64
    backbone: ResNetConfig = ResNetConfig(
        stem_channels=16, stem_kernel=3, stem_stride=2, stem_pool=True, channels=(16, 32, 64),
        blocks=(1, 1, 1), strides=(1, 2, 2), norm="groupnorm", norm_groups=8)
    flow: FlowConfig = FlowConfig()
    q: str = "laplace"
    residual: bool = True
    min_sigma: float = 1e-4
    heatmap_stride: int = 4
    heatmap_sigma: float = 1.0
    head_channels: int = 32
    integral_beta: float = 1.0

    def validate(self) -> None:
        HEADS.get(self.head)
        check_fields(self, positive_ints=("num_keypoints", "input_size", "heatmap_stride",
                                          "head_channels"),
                     positive=("min_sigma", "heatmap_sigma", "integral_beta"))
        self.flow.validate()
        if self.q not in Q_DENSITIES:
            raise ValueError(f"q must be one of {Q_DENSITIES}, got {self.q!r}")
        stride = self.backbone.stride
        factor = stride // self.heatmap_stride
        if stride % self.heatmap_stride or factor & (factor - 1):
            raise ValueError(f"heatmap_stride ({self.heatmap_stride}) must divide the "
                             f"backbone's stride ({stride}) by a power of 2")
        if self.input_size % stride:
            raise ValueError(f"input_size ({self.input_size}) must be a multiple of the "
                             f"backbone's stride ({stride})")


def to_normalized(xy: jax.Array, size: int) -> jax.Array:
    """Pixel coordinates of an ``S × S`` crop to ``u = (x + 0.5) / S − 0.5``."""
    return (xy + 0.5) / size - 0.5


def to_pixels(u: jax.Array, size: int) -> jax.Array:
    """Normalised coordinates back to pixels: ``x = (u + 0.5) · S − 0.5``."""
    return (u + 0.5) * size - 0.5


def _flatten(features):
    last = features[-1]
    return jnp.reshape(last, (shape_of(last)[0], -1))


class _Regression(nnx.Module):
    """Flattened last feature map → linear ``μ`` (and ``σ`` with ``with_sigma``)."""

    def __init__(self, config: PoseConfig, in_channels: int, feature_size: int, *,
                 rngs: nnx.Rngs, with_sigma: bool = False):
        k = config.num_keypoints
        dim = in_channels * feature_size * feature_size
        self.k = k
        self.coord = nnx.Linear(dim, 2 * k, kernel_init=nnx.initializers.zeros_init(),
                                rngs=rngs)
        self.sigma = nnx.Linear(dim, 2 * k, rngs=rngs) if with_sigma else nnx.data(None)

    def __call__(self, features):
        h = _flatten(features)
        b = shape_of(h)[0]
        out = {"mu": jnp.reshape(self.coord(h), (b, self.k, 2))}
        if self.sigma is not None:
            out["sigma"] = jax.nn.sigmoid(jnp.reshape(self.sigma(h), (b, self.k, 2))) + 1e-9
        return out

    def decode(self, out):
        return out["mu"], jnp.ones(shape_of(out["mu"])[:2], out["mu"].dtype)


@HEADS.register("l1")
class L1Head(_Regression):
    """Direct regression of ``μ`` trained with :func:`~vision.pose.rle.l1_loss`."""

    def loss(self, out, target, weight):
        loss = l1_loss(out["mu"], target, weight)
        return loss, {"l1": l1_loss(out["mu"], target, weight)}


@HEADS.register("l2")
class L2Head(_Regression):
    """Direct regression of ``μ`` trained with :func:`~vision.pose.rle.l2_loss`."""

    def loss(self, out, target, weight):
        return l2_loss(out["mu"], target, weight), {"l1": l1_loss(out["mu"], target, weight)}


@HEADS.register("rle")
class RLEHead(_Regression):
    """``μ``, ``σ`` and a flow trained with :func:`~vision.pose.rle.rle_loss`."""

    def __init__(self, config: PoseConfig, in_channels: int, feature_size: int, *,
                 rngs: nnx.Rngs):
        super().__init__(config, in_channels, feature_size, rngs=rngs, with_sigma=True)
        self.flow = make_flow(config.flow, rngs=rngs)
        self.q, self.residual, self.min_sigma = config.q, config.residual, config.min_sigma

    def loss(self, out, target, weight):
        loss = rle_loss(out["mu"], out["sigma"], target, weight, self.flow.log_prob, q=self.q,
                        residual=self.residual, min_sigma=self.min_sigma)
        return loss, {"l1": l1_loss(out["mu"], target, weight),
                      "mean_sigma": jnp.mean(out["sigma"])}

    def decode(self, out):
        return out["mu"], jnp.mean(1.0 - out["sigma"], axis=-1)


class _Maps(nnx.Module):
    """Heatmaps at stride ``heatmap_stride`` from the feature pyramid: per factor 2,
    nearest ×2 upsampling, plus a 1×1 lateral projection of the backbone stage at that
    stride when there is one (FPN-style), then a 3×3 conv and ReLU (Simple Baselines'
    deconvolution stack written as resize-convolutions); one 3×3 conv when no upsampling
    is needed; finally a 1×1 conv to ``K`` maps."""

    def __init__(self, config: PoseConfig, in_channels: int, feature_size: int, *,
                 rngs: nnx.Rngs):
        factor = config.backbone.stride // config.heatmap_stride
        ups = max(factor.bit_length() - 1, 0)
        self.size = feature_size * factor
        impl = config.backbone.conv_impl
        strides = config.backbone.stage_strides
        convs, laterals, self.lateral_index = [], [], []
        ch = in_channels
        stride = config.backbone.stride
        for _ in range(max(ups, 1)):
            if ups:
                stride //= 2
            level = strides.index(stride) if ups and stride in strides else None
            self.lateral_index.append(level)
            laterals.append(None if level is None else Conv2D(
                config.backbone.channels[level], ch, 1, 1, impl=impl, rngs=rngs))
            convs.append(Conv2D(ch, config.head_channels, 3, 1, impl=impl, rngs=rngs))
            ch = config.head_channels
        self.ups = ups
        self.convs = nnx.List(convs)
        self.laterals = nnx.List(laterals)
        self.out = Conv2D(ch, config.num_keypoints, 1, 1, impl=impl, rngs=rngs)
        self.sigma_px = config.heatmap_sigma
        self.beta = config.integral_beta

    def __call__(self, features):
        x = features[-1]
        for i, conv in enumerate(self.convs):
            if i < self.ups:
                x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
            if self.laterals[i] is not None:
                x = x + self.laterals[i](features[self.lateral_index[i]])
            x = jax.nn.relu(conv(x))
        maps = self.out(x)                                           # [B, h, w, K]
        return {"heatmaps": jnp.transpose(maps, (0, 3, 1, 2))}       # [B, K, h, w]


@HEADS.register("heatmap")
class HeatmapHead(_Maps):
    """Heatmaps trained by MSE to Gaussian targets, decoded by refined argmax."""

    def loss(self, out, target, weight):
        maps = out["heatmaps"]
        centers = to_pixels(target, self.size)                       # heatmap pixels
        targets = gaussian_heatmaps(centers, self.size, self.size, self.sigma_px)
        return heatmap_mse(maps, targets, weight), {}

    def decode(self, out):
        coords, maxvals = argmax_decode(out["heatmaps"])
        return to_normalized(coords, self.size), jnp.clip(maxvals, 0.0, 1.0)


@HEADS.register("integral")
class IntegralHead(_Maps):
    """Heatmap logits read by soft-argmax, trained with L1 on the coordinates."""

    def _coords(self, out):
        return to_normalized(soft_argmax(out["heatmaps"], self.beta), self.size)

    def loss(self, out, target, weight):
        loss = l1_loss(self._coords(out), target, weight)
        return loss, {"l1": loss}

    def decode(self, out):
        maps = out["heatmaps"]
        b, k, h, w = shape_of(maps)
        p = jax.nn.softmax(self.beta * jnp.reshape(maps, (b, k, h * w)), axis=-1)
        return self._coords(out), jnp.max(p, axis=-1)


class PoseModel(nnx.Module):
    """Backbone + keypoint head for ``S × S`` crops.

    Args:
      config: a :class:`PoseConfig`.
      rngs: ``nnx.Rngs``.

    Call: ``images [B, S, S, 3]`` → the head's outputs (a dict).

    Example:
      >>> model = PoseModel(PoseConfig(head="l1", input_size=32), rngs=nnx.Rngs(0))
      >>> model(jnp.zeros((2, 32, 32, 3)))["mu"].shape
      (2, 17, 2)
    """

    def __init__(self, config: PoseConfig, *, rngs: nnx.Rngs):
        config.validate()
        self.config = config
        self.backbone = ResNet(config.backbone, 3, rngs=rngs)
        feature_size = config.input_size // config.backbone.stride
        self.head = HEADS.get(config.head)(config, config.backbone.channels[-1], feature_size,
                                           rngs=rngs)

    def __call__(self, images: jax.Array) -> dict:
        s = self.config.input_size
        if jnp.ndim(images) != 4 or shape_of(images)[1:] != (s, s, 3):
            raise ValueError(f"images must have shape [B, {s}, {s}, 3], got shape "
                             f"{shape_str(shape_of(images))}")
        return self.head(self.backbone(images, deterministic=True))


def pose_loss(model: PoseModel, images: jax.Array, target: jax.Array,
              weight: jax.Array) -> tuple[jax.Array, dict]:
    """The head's loss of ``model`` on a batch.

    Args:
      model: a :class:`PoseModel`.
      images: ``[B, S, S, 3]`` crops.
      target: ``[B, K, 2]`` normalised keypoint coordinates.
      weight: ``[B, K]`` keypoint weights (1 for labelled keypoints, 0 otherwise).

    Returns:
      ``(loss, metrics)``.
    """
    check_int(model.config.num_keypoints, "num_keypoints")
    return model.head.loss(model(images), target, weight)


def predict(model: PoseModel, images: jax.Array) -> tuple[jax.Array, jax.Array, dict]:
    """Decoded keypoints of ``images [B, S, S, 3]``.

    Returns:
      ``(coords [B, K, 2], scores [B, K], outputs)``: normalised coordinates, per-keypoint
      confidences, and the raw head outputs (``sigma`` for RLE).
    """
    out = model(images)
    coords, scores = model.head.decode(out)
    return coords, scores, out
