"""The DETR model in ``flax.nnx``: a small ResNet, a transformer, set-prediction heads.

``images [B, H, W, 3]`` (zero-padded to a common size, ``mask [B, H, W]`` marking the
real pixels) → ResNet features ``[B, h, w, C_b]`` (stride ``s``) → 1×1 input
projection to ``d_model`` → flattened memory of ``S = h·w`` tokens with DETR's sine
positional encoding (``common.nn.sine_position_encoding_2d``, normalised per image so
padding is excluded) → post-norm transformer encoder (positions added to queries and
keys of every attention, never the values; padded tokens masked out) → decoder of
``Q`` learned object queries over the memory, returning every layer's output →
class head ``Linear(d_model, C+1)`` and a 3-layer box MLP with a sigmoid, applied to
every decoder layer (the auxiliary outputs).

The attention and transformer layers are the shared ones of ``common.nn``.

Paper: Carion et al. 2020, "End-to-End Object Detection with Transformers",
section 3.2 and appendix A.3; He et al. 2016, "Deep Residual Learning for Image
Recognition" (ResNet).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from common.nn import MLP, Decoder, Encoder, padding_mask, sine_position_encoding_2d

__all__ = ["DETR", "BackboneConfig", "Conv2d", "DETRConfig", "FrozenBatchNorm",
           "ResNetBackbone", "conv2d", "downsample_mask"]

_DN = ("NHWC", "HWIO", "NHWC")


def _shape_str(shape) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


# ----------------------------------------------------------------------------- convolution


def _same_padding(size: int, k: int, stride: int) -> tuple[int, tuple[int, int]]:
    """Output size and (low, high) padding of XLA's ``"SAME"`` convolution."""
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return out, (total // 2, total - total // 2)


def _xla_conv(x, kernel, stride):
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), "SAME",
                                        dimension_numbers=_DN)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
    """2D convolution, ``"SAME"`` padding, NHWC, with a loop-friendly backward pass.

    ``y[b, o, p, c'] = Σ_{i, j, c} x̃[b, s·o + i, s·p + j, c] · K[i, j, c, c']`` with ``x̃``
    the zero-padded input (XLA's ``SAME`` padding). Values and gradients equal
    ``lax.conv_general_dilated``'s; the backward pass is written as a stride-1
    forward convolution of the dilated output gradient with the flipped kernel
    (input gradient) and ``k_h·k_w`` matmuls of shifted input slices (kernel
    gradient). XLA:CPU runs its own convolution gradients 5–50× slower inside a
    ``while`` loop than outside (jax-ml/jax#12868), which made the scanned training
    chunks of ``common.train`` ~30× slower for a ResNet; these forms run at full
    speed in and out of loops (the forward convolution is not affected).

    Args:
      x: ``[B, H, W, C]`` input.
      kernel: ``[k_h, k_w, C, C']``.
      stride: spatial stride ``s`` (both axes).

    Returns:
      ``[B, ⌈H/s⌉, ⌈W/s⌉, C']``.

    Example:
      >>> conv2d(jnp.ones((1, 8, 8, 3)), jnp.ones((3, 3, 3, 4)), 2).shape
      (1, 4, 4, 4)
    """
    return _xla_conv(x, kernel, stride)


def _conv2d_fwd(x, kernel, stride):
    return _xla_conv(x, kernel, stride), (x, kernel)


def _conv2d_bwd(stride, residuals, dy):
    x, kernel = residuals
    _, H, W, _ = x.shape
    kh, kw, cin, cout = kernel.shape
    Ho, (lo_h, hi_h) = _same_padding(H, kh, stride)
    Wo, (lo_w, hi_w) = _same_padding(W, kw, stride)
    # Input gradient: dilate dy by the stride, pad by k - 1, correlate with the
    # spatially flipped kernel whose in/out channels are swapped.
    zero = jnp.zeros((), dy.dtype)
    dilated = jax.lax.pad(dy, zero, ((0, 0, 0), (kh - 1, kh - 1, stride - 1),
                                     (kw - 1, kw - 1, stride - 1), (0, 0, 0)))
    flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
    dx_padded = jax.lax.conv_general_dilated(dilated, flipped, (1, 1), "VALID",
                                             dimension_numbers=_DN)
    extra_h = H + lo_h + hi_h - ((Ho - 1) * stride + kh)  # rows no window reaches
    extra_w = W + lo_w + hi_w - ((Wo - 1) * stride + kw)
    dx_padded = jnp.pad(dx_padded, ((0, 0), (0, extra_h), (0, extra_w), (0, 0)))
    dx = dx_padded[:, lo_h:lo_h + H, lo_w:lo_w + W, :]
    # Kernel gradient: for each tap (i, j), the input slice it sees times dy.
    xp = jnp.pad(x, ((0, 0), (lo_h, hi_h), (lo_w, hi_w), (0, 0)))
    taps = []
    for i in range(kh):
        for j in range(kw):
            seen = xp[:, i:i + stride * (Ho - 1) + 1:stride, j:j + stride * (Wo - 1) + 1:stride]
            taps.append(jnp.einsum("bhwc,bhwo->co", seen, dy))
    dk = jnp.stack(taps).reshape(kh, kw, cin, cout)
    return dx, dk.astype(kernel.dtype)


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


class Conv2d(nnx.Module):
    """Convolution layer over :func:`conv2d` (He-normal kernel, optional bias).

    Args:
      in_features: input channels ``C``.
      out_features: output channels ``C'``.
      kernel_size: square kernel side ``k``.
      stride: spatial stride.
      use_bias: add a bias.
      rngs: ``nnx.Rngs``.

    Call: ``x [B, H, W, C]`` → ``[B, ⌈H/s⌉, ⌈W/s⌉, C']``.

    Example:
      >>> Conv2d(3, 8, 3, stride=2, rngs=nnx.Rngs(0))(jnp.ones((1, 8, 8, 3))).shape
      (1, 4, 4, 8)
    """

    def __init__(self, in_features: int, out_features: int, kernel_size: int = 3, *,
                 stride: int = 1, use_bias: bool = False, rngs: nnx.Rngs):
        init = jax.nn.initializers.he_normal()
        self.kernel = nnx.Param(init(rngs.params(), (kernel_size, kernel_size, in_features,
                                                     out_features)))
        self.bias = nnx.Param(jnp.zeros((out_features,))) if use_bias else nnx.data(None)
        self.stride = stride

    def __call__(self, x: jax.Array) -> jax.Array:
        y = conv2d(x, self.kernel[...], self.stride)
        return y if self.bias is None else y + self.bias[...]


class FrozenStat(nnx.Variable):
    """A fixed (non-trained) normalisation statistic or affine parameter."""


class FrozenBatchNorm(nnx.Module):
    """Batch norm with fixed statistics and affine parameters (DETR's ``FrozenBatchNorm2d``).

    ``y = (x − μ) / sqrt(σ² + ε) · γ + β`` with ``μ, σ², γ, β`` stored as
    :class:`FrozenStat` (outside ``nnx.Param``, so the optimizer never updates them).
    DETR freezes the statistics of its ImageNet-pretrained backbone; trained from
    scratch they stay at ``μ = 0, σ² = 1, γ = 1, β = 0`` unless loaded from a
    checkpoint, i.e. the layer is then the identity up to ``1/sqrt(1 + ε)``.

    Args:
      features: channels ``C``.
      eps: stabiliser (1e-5 as in DETR).

    Call: ``x [..., C]`` → ``[..., C]``.

    Example:
      >>> FrozenBatchNorm(4)(jnp.ones((1, 2, 2, 4))).shape
      (1, 2, 2, 4)
    """

    def __init__(self, features: int, eps: float = 1e-5):
        self.mean = FrozenStat(jnp.zeros((features,)))
        self.var = FrozenStat(jnp.ones((features,)))
        self.scale = FrozenStat(jnp.ones((features,)))
        self.bias = FrozenStat(jnp.zeros((features,)))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (1,) * (jnp.ndim(x) - 1) + (-1,)
        factor = self.scale[...] * jax.lax.rsqrt(self.var[...] + self.eps)
        shift = self.bias[...] - self.mean[...] * factor
        return x * factor.reshape(shape) + shift.reshape(shape)


def _make_norm(kind: str, features: int, rngs: nnx.Rngs) -> nnx.Module:
    if kind == "group":
        return nnx.GroupNorm(features, num_groups=min(8, features), epsilon=1e-5, rngs=rngs)
    if kind == "frozen_bn":
        return FrozenBatchNorm(features)
    raise ValueError(f"backbone norm must be 'group' or 'frozen_bn', got {kind!r}")


class _BasicBlock(nnx.Module):
    """ResNet basic block: two 3×3 convolutions with a residual (1×1 projection when
    the shape changes)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, norm: str, rngs: nnx.Rngs):
        self.conv1 = Conv2d(in_ch, out_ch, 3, stride=stride, rngs=rngs)
        self.norm1 = _make_norm(norm, out_ch, rngs)
        self.conv2 = Conv2d(out_ch, out_ch, 3, rngs=rngs)
        self.norm2 = _make_norm(norm, out_ch, rngs)
        if stride != 1 or in_ch != out_ch:
            self.proj = Conv2d(in_ch, out_ch, 1, stride=stride, rngs=rngs)
            self.proj_norm = _make_norm(norm, out_ch, rngs)
        else:
            self.proj = nnx.data(None)
            self.proj_norm = nnx.data(None)

    def __call__(self, x):
        h = jax.nn.relu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        shortcut = x if self.proj is None else self.proj_norm(self.proj(x))
        return jax.nn.relu(h + shortcut)


@dataclasses.dataclass(frozen=True)
class BackboneConfig:
    """A small ResNet: a 3×3 stem, then stages of basic blocks.

    Attributes:
      stem_channels: channels of the stem convolution.
      stem_stride: stride of the stem.
      channels: output channels of each stage.
      blocks: basic blocks per stage.
      strides: stride of the first block of each stage.
      norm: ``"group"`` (GroupNorm, trains well from scratch with small batches) or
        ``"frozen_bn"`` (DETR's frozen batch norm).
    """

    stem_channels: int = 32
    stem_stride: int = 2
    channels: tuple[int, ...] = (32, 64, 128)
    blocks: tuple[int, ...] = (1, 1, 1)
    strides: tuple[int, ...] = (1, 2, 2)
    norm: str = "group"

    @property
    def stride(self) -> int:
        total = self.stem_stride
        for s in self.strides:
            total *= s
        return total


class ResNetBackbone(nnx.Module):
    """Small ResNet feature extractor.

    Args:
      config: a :class:`BackboneConfig`.
      in_channels: image channels.
      rngs: ``nnx.Rngs``.

    Call:
      ``x [B, H, W, C_in]`` → ``[B, ⌈H/s⌉, ⌈W/s⌉, channels[-1]]`` with ``s =
      config.stride``.

    Example:
      >>> net = ResNetBackbone(BackboneConfig(), rngs=nnx.Rngs(0))
      >>> net(jnp.zeros((1, 64, 64, 3))).shape
      (1, 8, 8, 128)

    Paper: He et al. 2016.
    """

    def __init__(self, config: BackboneConfig, in_channels: int = 3, *, rngs: nnx.Rngs):
        if not (len(config.channels) == len(config.blocks) == len(config.strides)):
            raise ValueError("backbone channels, blocks and strides must have equal lengths, "
                             f"got {config.channels}, {config.blocks}, {config.strides}")
        self.config = config
        self.stem = Conv2d(in_channels, config.stem_channels, 3, stride=config.stem_stride,
                           rngs=rngs)
        self.stem_norm = _make_norm(config.norm, config.stem_channels, rngs)
        blocks = []
        ch = config.stem_channels
        for out_ch, n, stride in zip(config.channels, config.blocks, config.strides,
                                     strict=True):
            for k in range(n):
                blocks.append(_BasicBlock(ch, out_ch, stride if k == 0 else 1, config.norm, rngs))
                ch = out_ch
        self.blocks = nnx.List(blocks)
        self.out_channels = ch

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jax.nn.relu(self.stem_norm(self.stem(x)))
        for block in self.blocks:
            x = block(x)
        return x


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
      backbone: the ResNet.
    """

    num_classes: int = 4
    num_queries: int = 16
    d_model: int = 128
    num_heads: int = 8
    num_encoder_layers: int = 2
    num_decoder_layers: int = 2
    mlp_dim: int = 256
    dropout_rate: float = 0.1
    backbone: BackboneConfig = BackboneConfig()


class DETR(nnx.Module):
    """DEtection TRansformer: set prediction of ``Q`` (class, box) pairs per image.

    Args:
      config: a :class:`DETRConfig`.
      rngs: ``nnx.Rngs`` (``params``; ``dropout`` for training).

    Call:
      ``images [B, H, W, 3]`` float (normalised), ``mask [B, H, W]`` boolean
      (``True`` = real pixel; ``None`` = no padding), ``deterministic``, ``rngs``.
      Returns ``{"logits": [L, B, Q, C+1], "boxes": [L, B, Q, 4]}`` for the ``L``
      decoder layers (index ``-1`` is the model's prediction, the rest feed the
      auxiliary losses); boxes are normalised ``cxcywh`` relative to each image's
      real (unpadded) size.

    Example:
      >>> model = DETR(DETRConfig(num_classes=4, num_queries=5, d_model=32, num_heads=4),
      ...              rngs=nnx.Rngs(0))
      >>> out = model(jnp.zeros((2, 64, 64, 3)))
      >>> out["logits"].shape, out["boxes"].shape
      ((2, 2, 5, 5), (2, 2, 5, 4))

    Paper: Carion et al. 2020, figure 2 and appendix A.3.
    """

    def __init__(self, config: DETRConfig, *, rngs: nnx.Rngs):
        if config.num_classes < 1 or config.num_queries < 1:
            raise ValueError(f"need num_classes >= 1 and num_queries >= 1, got "
                             f"{config.num_classes}, {config.num_queries}")
        if config.d_model % 4 != 0:
            raise ValueError(f"d_model must be divisible by 4 (sine encoding of 2 axes), got "
                             f"{config.d_model}")
        self.config = config
        d = config.d_model
        self.backbone = ResNetBackbone(config.backbone, rngs=rngs)
        self.input_proj = nnx.Linear(self.backbone.out_channels, d, rngs=rngs)  # 1×1 conv
        layer_kwargs = dict(norm_first=False, dropout_rate=config.dropout_rate,
                            activation="relu")
        self.encoder = Encoder(config.num_encoder_layers, d, config.num_heads, config.mlp_dim,
                               rngs=rngs, **layer_kwargs)
        self.decoder = Decoder(config.num_decoder_layers, d, config.num_heads, config.mlp_dim,
                               final_norm=True, rngs=rngs, **layer_kwargs)
        self.query_embed = nnx.Param(jax.random.normal(rngs.params(), (config.num_queries, d)))
        self.class_embed = nnx.Linear(d, config.num_classes + 1, rngs=rngs)
        self.bbox_embed = MLP([d, d, d, 4], activation="relu", rngs=rngs)

    def __call__(self, images: jax.Array, mask: jax.Array | None = None, *,
                 deterministic: bool = True, rngs: nnx.Rngs | None = None) -> dict:
        if jnp.ndim(images) != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must have shape [B, H, W, 3], got "
                             f"{_shape_str(jnp.shape(images))}")
        B, H, W, _ = images.shape
        if mask is None:
            mask = jnp.ones((B, H, W), bool)
        if jnp.shape(mask) != (B, H, W) or jnp.asarray(mask).dtype != jnp.bool_:
            raise ValueError(f"mask must be boolean with shape [B, H, W] = ({B}, {H}, {W}), "
                             f"got {jnp.asarray(mask).dtype} {_shape_str(jnp.shape(mask))}")
        feats = self.input_proj(self.backbone(images))  # [B, h, w, D]
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
                          query_pos=self.query_embed[...][None], pos=pos,
                          deterministic=deterministic, rngs=rngs)  # [L, B, Q, D]
        return {"logits": self.class_embed(hs), "boxes": jax.nn.sigmoid(self.bbox_embed(hs))}
