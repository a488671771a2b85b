"""The DETR model in ``flax.nnx``: a small ResNet, a transformer, set-prediction heads.

``images [B, H, W, 3]`` (zero-padded to a common size, ``mask [B, H, W]`` marking the
real pixels) → the last stage of ``common.nn.ResNet``, ``[B, h, w, C_b]`` (stride
``s``) → 1×1 input
projection to ``d_model`` → flattened memory of ``S = h·w`` tokens with DETR's sine
positional encoding (``common.nn.sine_position_encoding_2d``, normalised per image so
padding is excluded) → post-norm transformer encoder (positions added to queries and
keys of every attention, never the values; padded tokens masked out) → decoder of
``Q`` learned object queries over the memory, returning every layer's output →
class head ``Linear(d_model, C+1)`` and a 3-layer box MLP with a sigmoid, applied to
every decoder layer (the auxiliary outputs).

The ResNet, attention and transformer layers are the shared ones of ``common.nn``.

Paper: Carion et al. 2020, "End-to-End Object Detection with Transformers",
section 3.2 and appendix A.3; He et al. 2016, "Deep Residual Learning for Image
Recognition" (ResNet).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from common.checks import check_fields, shape_of, shape_str
from common.nn import (
    MLP,
    Decoder,
    Encoder,
    ResNet,
    ResNetConfig,
    TransformerConfig,
    padding_mask,
    sine_position_encoding_2d,
)

__all__ = ["DETR", "BackboneConfig", "DETRConfig", "downsample_mask"]

@dataclasses.dataclass(frozen=True)
class BackboneConfig(ResNetConfig):
    """DETR's default backbone: a :class:`common.nn.ResNetConfig` for small images.

    The fields are those of ``ResNetConfig``; only the defaults differ: a 3×3
    stride-2 stem of 32 channels without max pool, stages of (32, 64, 128) channels
    with one basic block each and strides (1, 2, 2) (total stride 8), and group norm
    with 8 groups, which trains well from scratch with small batches. DETR's
    ImageNet-pretrained ResNet-50 used ``norm="frozen_bn"``.

    Example:
      >>> BackboneConfig(norm="frozen_bn").stride
      8
    """

    stem_channels: int = 32
    stem_kernel: int = 3
    stem_stride: int = 2
    stem_pool: bool = False
    channels: tuple[int, ...] = (32, 64, 128)
    blocks: tuple[int, ...] = (1, 1, 1)
    strides: tuple[int, ...] = (1, 2, 2)
    norm: str = "groupnorm"
    norm_groups: int = 8


def downsample_mask(mask: jax.Array, stride: int, size: tuple[int, int]) -> jax.Array:
    """Nearest-neighbour downsampling of a pixel mask to a feature map.

    ``out[b, i, j] = mask[b, i·s, j·s]`` (PyTorch's ``interpolate(mode="nearest")`` that
    DETR applies to its padding mask, for an integer factor ``s``).

    Args:
      mask: ``[B, H, W]`` boolean, ``True`` = real pixel.
      stride: the backbone stride ``s``.
      size: ``(h, w)`` of the feature map.

    Returns:
      ``[B, h, w]`` boolean.

    Example:
      >>> downsample_mask(jnp.ones((1, 8, 8), bool), 4, (2, 2)).shape
      (1, 2, 2)
    """
    h, w = size
    return mask[:, ::stride, ::stride][:, :h, :w]


@dataclasses.dataclass(frozen=True)
class DETRConfig:
    """Architecture of :class:`DETR`.

    Attributes:
      num_classes: object classes ``C`` (the head predicts ``C + 1`` with "no object").
      num_queries: object queries ``Q``.
      d_model: transformer width.
      num_heads: attention heads.
      num_encoder_layers, num_decoder_layers: transformer depth.
      mlp_dim: feed-forward hidden size.
      dropout_rate: transformer dropout (0.1 in DETR).
      backbone: the ResNet (any :class:`common.nn.ResNetConfig`; its norm is
        ``backbone.norm``, e.g. ``"frozen_bn"``).
      dtype: computation dtype of every layer, backbone included (``None``: float32
        like the parameters; ``jnp.bfloat16`` under ``common.precision``'s ``bf16``). The
        outputs are cast back to float32 for the loss and matching.
    """

    num_classes: int = 4
    num_queries: int = 16
    d_model: int = 128
    num_heads: int = 8
    num_encoder_layers: int = 2
    num_decoder_layers: int = 2
    mlp_dim: int = 256
    dropout_rate: float = 0.1
    backbone: ResNetConfig = BackboneConfig()
    dtype: Any = None

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field DETR cannot be built with."""
        check_fields(self, positive_ints=("num_classes", "num_queries", "d_model", "num_heads",
                                          "num_encoder_layers", "num_decoder_layers",
                                          "mlp_dim"), fractions=("dropout_rate",))
        if self.d_model % 4 != 0:
            raise ValueError(f"d_model must be divisible by 4 (sine encoding of 2 axes), got "
                             f"{self.d_model}")
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by num_heads "
                             f"({self.num_heads})")


class DETR(nnx.Module):
    """DEtection TRansformer: set prediction of ``Q`` (class, box) pairs per image.

    Args:
      config: a :class:`DETRConfig`.
      rngs: ``nnx.Rngs`` (``params``; ``dropout`` for training).

    Call:
      ``images [B, H, W, 3]`` float (normalised), ``mask [B, H, W]`` boolean
      (``True`` = real pixel; ``None`` = no padding), ``deterministic`` (no dropout;
      a ``"batchnorm"`` backbone then uses its running averages, otherwise batch
      statistics, updating the averages), ``rngs``. Returns
      ``{"logits": [L, B, Q, C+1], "boxes": [L, B, Q, 4]}`` for the ``L`` decoder
      layers (index ``-1`` is the model's prediction, the rest feed the auxiliary
      losses); boxes are normalised ``cxcywh`` relative to each image's real
      (unpadded) size.

    Example:
      >>> model = DETR(DETRConfig(num_classes=4, num_queries=5, d_model=32, num_heads=4),
      ...              rngs=nnx.Rngs(0))
      >>> out = model(jnp.zeros((2, 64, 64, 3)))
      >>> out["logits"].shape, out["boxes"].shape
      ((2, 2, 5, 5), (2, 2, 5, 4))

    Paper: Carion et al. 2020, figure 2 and appendix A.3.
    """

    def __init__(self, config: DETRConfig, *, rngs: nnx.Rngs):
        config.validate()
        self.config = config
        d = config.d_model
        dtype = config.dtype
        backbone = config.backbone if dtype is None else dataclasses.replace(config.backbone,
                                                                              dtype=dtype)
        self.backbone = ResNet(backbone, rngs=rngs)
        self.input_proj = nnx.Linear(self.backbone.out_channels[-1], d, dtype=dtype,
                                     rngs=rngs)  # 1×1 conv
        layers = TransformerConfig(d_model=d, num_heads=config.num_heads,
                                   mlp_dim=config.mlp_dim, dropout_rate=config.dropout_rate,
                                   activation="relu", norm_first=False, dtype=dtype)
        self.encoder = Encoder(dataclasses.replace(layers, num_layers=config.num_encoder_layers),
                               rngs=rngs)
        self.decoder = Decoder(dataclasses.replace(layers, num_layers=config.num_decoder_layers,
                                                   final_norm=True), rngs=rngs)
        self.query_embed = nnx.Param(jax.random.normal(rngs.params(), (config.num_queries, d)))
        self.class_embed = nnx.Linear(d, config.num_classes + 1, dtype=dtype, rngs=rngs)
        self.bbox_embed = MLP([d, d, d, 4], activation="relu", dtype=dtype, rngs=rngs)

    def __call__(self, images: jax.Array, mask: jax.Array | None = None, *,
                 deterministic: bool = True, rngs: nnx.Rngs | None = None) -> dict:
        if jnp.ndim(images) != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must have shape [B, H, W, 3], got "
                             f"{shape_str(shape_of(images))}")
        B, H, W, _ = images.shape
        if mask is None:
            mask = jnp.ones((B, H, W), bool)
        if jnp.shape(mask) != (B, H, W) or jnp.asarray(mask).dtype != jnp.bool_:
            raise ValueError(f"mask must be boolean with shape [B, H, W] = ({B}, {H}, {W}), "
                             f"got {jnp.asarray(mask).dtype} {shape_str(shape_of(mask))}")
        features = self.backbone(images, deterministic=deterministic)
        feats = self.input_proj(features[-1])  # [B, h, w, D]
        _, h, w, D = feats.shape
        fmask = downsample_mask(mask, self.config.backbone.stride, (h, w))  # [B, h, w]
        pos = sine_position_encoding_2d(fmask, D // 2, dtype=feats.dtype)  # [B, h, w, D]
        src = feats.reshape(B, h * w, D)
        pos = pos.reshape(B, h * w, D)
        key_mask = padding_mask(fmask.reshape(B, h * w))  # [B, 1, 1, S]
        memory = self.encoder(src, mask=key_mask, pos=pos, deterministic=deterministic,
                              rngs=rngs)
        queries = jnp.zeros((B, self.config.num_queries, D), feats.dtype)
        hs = self.decoder(queries, memory, return_intermediate=True, cross_mask=key_mask,
                          query_pos=self.query_embed[...][None].astype(feats.dtype), pos=pos,
                          deterministic=deterministic, rngs=rngs)  # [L, B, Q, D]
        wide = jnp.promote_types(hs.dtype, jnp.float32)  # float32 for loss and matching
        logits = self.class_embed(hs).astype(wide)
        boxes = jax.nn.sigmoid(self.bbox_embed(hs).astype(wide))
        return {"logits": logits, "boxes": boxes}
