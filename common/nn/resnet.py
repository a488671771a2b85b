"""A configurable ResNet of basic blocks that returns a feature pyramid (NHWC).

``x [B, H, W, C_in]`` → stem (``k × k`` convolution with stride ``s₀``, norm, ReLU,
optional 3×3 stride-2 max pool) → stages of basic blocks (the first block of stage
``i`` has stride ``s_i``) → the list of every stage's output, stage ``i`` at stride
``s₀ · (2 if pool) · s₁ ⋯ s_i``. The defaults are ResNet-18 (strides 4, 8, 16, 32).

Normalisation, one of three (:data:`NORMS`):

* ``"batchnorm"`` (Ioffe & Szegedy 2015): batch statistics when
  ``deterministic=False`` (the running averages in ``nnx.BatchStat`` are updated in
  place), running averages when ``deterministic=True``;
* ``"groupnorm"`` (Wu & He 2018): independent of the batch, trains well from scratch
  with small batches; the number of groups follows :func:`group_count`;
* ``"frozen_bn"``: batch norm with fixed statistics and affine parameters
  (:class:`FrozenBatchNorm`, DETR's ``FrozenBatchNorm2d``), stored as
  :class:`FrozenStat`, outside ``nnx.Param``, so an optimizer never updates them.

Convolutions are :class:`common.nn.conv.Conv2D` (``"SAME"`` padding, no bias, He-normal
kernels); a block whose stride or width changes projects its shortcut with a 1×1
convolution and a norm (option B of He et al. 2016).

Paper: He et al. 2016, "Deep Residual Learning for Image Recognition", table 1;
Ioffe & Szegedy 2015, "Batch Normalization"; Wu & He 2018, "Group Normalization";
Carion et al. 2020 (DETR, frozen batch norm).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from common.checks import check_in_range, check_int, check_positive, shape_of, shape_str
from common.nn.conv import IMPLEMENTATIONS, Conv2D

__all__ = [
    "NORMS",
    "BasicBlock",
    "FrozenBatchNorm",
    "FrozenStat",
    "ResNet",
    "ResNetConfig",
    "apply_conv_norm",
    "group_count",
    "make_conv_norm",
]

#: Normalisations a :class:`ResNet` accepts.
NORMS = ("batchnorm", "groupnorm", "frozen_bn")


def group_count(channels: int, groups: int) -> int:
    """Number of GroupNorm groups for ``channels``: ``gcd(channels, groups)``.

    The one rule used across the project: ``groups`` itself whenever it divides the
    channel count (32 for ResNet widths, 8 for small models), otherwise the largest
    divisor of ``groups`` that divides ``channels``, so that all groups have equal size.

    Args:
      channels: ``C >= 1``.
      groups: requested groups ``G >= 1``.

    Returns:
      ``gcd(C, G)``.

    Example:
      >>> group_count(64, 32), group_count(48, 32), group_count(4, 8)
      (32, 16, 4)

    Paper: Wu & He 2018, "Group Normalization" (G = 32).
    """
    return math.gcd(check_int(channels, "channels"), check_int(groups, "groups"))


class FrozenStat(nnx.Variable):
    """A fixed (non-trained) normalisation statistic or affine parameter."""


class FrozenBatchNorm(nnx.Module):
    """Batch norm with fixed statistics and affine parameters (DETR's ``FrozenBatchNorm2d``).

    ``y = (x − μ) / sqrt(σ² + ε) · γ + β`` with ``μ, σ², γ, β`` stored as
    :class:`FrozenStat` (not ``nnx.Param``: the optimizer never updates them). DETR
    freezes the statistics of its ImageNet-pretrained backbone; trained from scratch
    they stay at ``μ = 0, σ² = 1, γ = 1, β = 0`` unless loaded from a checkpoint, i.e.
    the layer is then the identity up to ``1/sqrt(1 + ε)``.

    Args:
      features: channels ``C``.
      eps: stabiliser (1e-5 as in DETR).

    Call: ``x [..., C]`` → ``[..., C]``.

    Example:
      >>> FrozenBatchNorm(4)(jnp.ones((1, 2, 2, 4))).shape
      (1, 2, 2, 4)

    Paper: Carion et al. 2020, section 4 (frozen BatchNorm of the backbone).
    """

    def __init__(self, features: int, eps: float = 1e-5):
        check_int(features, "features")
        self.mean = FrozenStat(jnp.zeros((features,)))
        self.var = FrozenStat(jnp.ones((features,)))
        self.scale = FrozenStat(jnp.ones((features,)))
        self.bias = FrozenStat(jnp.zeros((features,)))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (1,) * (jnp.ndim(x) - 1) + (-1,)
        factor = self.scale[...] * jax.lax.rsqrt(self.var[...] + self.eps)
        shift = self.bias[...] - self.mean[...] * factor  # float32 statistics
        out = x.astype(jnp.promote_types(x.dtype, jnp.float32)) * factor.reshape(shape)
        return (out + shift.reshape(shape)).astype(x.dtype)  # the input's dtype


def make_conv_norm(kind: str, features: int, *, groups: int = 32, eps: float = 1e-5,
                   momentum: float = 0.9, dtype=None, rngs: nnx.Rngs) -> nnx.Module:
    """A channel norm for ``[B, H, W, C]`` feature maps: one of :data:`NORMS`.

    Args:
      kind: ``"batchnorm"``, ``"groupnorm"`` or ``"frozen_bn"``.
      features: channels ``C``.
      groups: requested GroupNorm groups (the count used is :func:`group_count`).
      eps: variance stabiliser.
      momentum: running-average momentum of ``"batchnorm"``
        (``avg ← momentum · avg + (1 − momentum) · batch``).
      dtype: output dtype (``None``: from the input); statistics are reduced in float32.
      rngs: ``nnx.Rngs``.

    Returns:
      The norm module, ``[..., C] -> [..., C]``; call it with :func:`apply_conv_norm`,
      which passes ``deterministic`` to batch norm.

    Example:
      >>> make_conv_norm("groupnorm", 16, groups=8, rngs=nnx.Rngs(0)).num_groups
      8
    """
    if kind == "batchnorm":
        return nnx.BatchNorm(features, momentum=momentum, epsilon=eps,
                             use_fast_variance=False, dtype=dtype, rngs=rngs)
    if kind == "groupnorm":
        return nnx.GroupNorm(features, num_groups=group_count(features, groups), epsilon=eps,
                             use_fast_variance=False, dtype=dtype, rngs=rngs)
    if kind == "frozen_bn":
        return FrozenBatchNorm(features, eps)
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


def apply_conv_norm(norm: nnx.Module, x: jax.Array, deterministic: bool) -> jax.Array:
    """Apply a norm of :func:`make_conv_norm`; batch norm uses its running averages
    when ``deterministic`` and batch statistics (updating the averages) otherwise."""
    if isinstance(norm, nnx.BatchNorm):
        return norm(x, use_running_average=deterministic)
    return norm(x)


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    """Architecture of a :class:`ResNet` (defaults: ResNet-18 with batch norm).

    Attributes:
      stem_channels: channels of the stem convolution.
      stem_kernel: side of the stem convolution (7 in ResNet, 3 for small images).
      stem_stride: stride of the stem convolution.
      stem_pool: 3×3 stride-2 max pool after the stem (ResNet) or none.
      channels: output channels of each stage.
      blocks: basic blocks per stage.
      strides: stride of the first block of each stage.
      norm: ``"batchnorm"``, ``"groupnorm"`` or ``"frozen_bn"`` (see :data:`NORMS`).
      norm_groups: requested GroupNorm groups (the count used is :func:`group_count`).
      norm_eps: norm stabiliser.
      bn_momentum: running-average momentum of batch norm (PyTorch's 0.1 is 0.9 here).
      conv_impl: convolution implementation (see :func:`common.nn.conv.conv2d`).
      dtype: computation dtype of convolutions and norms (``None``: from inputs and
        parameters; ``jnp.bfloat16`` under ``common.precision``'s ``bf16``, parameters
        and norm statistics staying float32).
    """

    stem_channels: int = 64
    stem_kernel: int = 7
    stem_stride: int = 2
    stem_pool: bool = True
    channels: tuple[int, ...] = (64, 128, 256, 512)
    blocks: tuple[int, ...] = (2, 2, 2, 2)
    strides: tuple[int, ...] = (1, 2, 2, 2)
    norm: str = "batchnorm"
    norm_groups: int = 32
    norm_eps: float = 1e-5
    bn_momentum: float = 0.9
    conv_impl: str = "auto"
    dtype: Any = None

    def __post_init__(self):
        for name in ("stem_channels", "stem_kernel", "stem_stride", "norm_groups"):
            check_int(getattr(self, name), name)
        if not (len(self.channels) == len(self.blocks) == len(self.strides) >= 1):
            raise ValueError("channels, blocks and strides must be non-empty and of equal "
                             f"lengths, got {self.channels}, {self.blocks}, {self.strides}")
        for name in ("channels", "blocks", "strides"):
            for i, value in enumerate(getattr(self, name)):
                check_int(value, f"{name}[{i}]")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        check_positive(self.norm_eps, "norm_eps")
        check_in_range(self.bn_momentum, "bn_momentum", 0.0, 1.0, high_open=True)
        if self.conv_impl not in IMPLEMENTATIONS:
            raise ValueError(f"conv_impl must be one of {IMPLEMENTATIONS}, got "
                             f"{self.conv_impl!r}")

    @property
    def stage_strides(self) -> tuple[int, ...]:
        """Total stride of each stage's output relative to the input."""
        total = self.stem_stride * (2 if self.stem_pool else 1)
        out = []
        for s in self.strides:
            total *= s
            out.append(total)
        return tuple(out)

    @property
    def stride(self) -> int:
        """Total stride of the last stage."""
        return self.stage_strides[-1]


def _conv(cin, cout, k, stride, config, rngs):
    return Conv2D(cin, cout, k, stride, use_bias=False, impl=config.conv_impl,
                  kernel_init=nnx.initializers.he_normal(), dtype=config.dtype, rngs=rngs)


def _norm(features, config, rngs):
    return make_conv_norm(config.norm, features, groups=config.norm_groups,
                          eps=config.norm_eps, momentum=config.bn_momentum, dtype=config.dtype,
                          rngs=rngs)


class BasicBlock(nnx.Module):
    """ResNet basic block: ``relu(N₂(conv₂(relu(N₁(conv₁(x))))) + shortcut(x))``.

    ``conv₁`` is 3×3 with the block's stride, ``conv₂`` 3×3 with stride 1; the shortcut
    is the identity, or ``N(conv_1×1(x))`` with the block's stride when the stride or
    the width changes.

    Args:
      in_channels: ``C_in``.
      out_channels: ``C_out``.
      stride: stride of the block.
      config: a :class:`ResNetConfig` (norm and convolution settings).
      rngs: ``nnx.Rngs``.

    Call:
      ``x [B, H, W, C_in]``, ``deterministic`` → ``[B, ⌈H/s⌉, ⌈W/s⌉, C_out]``.

    Paper: He et al. 2016, figure 2 (left) and section 3.3 (option B shortcuts).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int,
                 config: ResNetConfig, *, rngs: nnx.Rngs):
        self.conv1 = _conv(in_channels, out_channels, 3, stride, config, rngs)
        self.norm1 = _norm(out_channels, config, rngs)
        self.conv2 = _conv(out_channels, out_channels, 3, 1, config, rngs)
        self.norm2 = _norm(out_channels, config, rngs)
        if stride != 1 or in_channels != out_channels:
            self.proj = _conv(in_channels, out_channels, 1, stride, config, rngs)
            self.proj_norm = _norm(out_channels, config, rngs)
        else:
            self.proj = nnx.data(None)
            self.proj_norm = nnx.data(None)

    def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
        h = jax.nn.relu(apply_conv_norm(self.norm1, self.conv1(x), deterministic))
        h = apply_conv_norm(self.norm2, self.conv2(h), deterministic)
        shortcut = x
        if self.proj is not None:
            shortcut = apply_conv_norm(self.proj_norm, self.proj(x), deterministic)
        return jax.nn.relu(h + shortcut)


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """3×3 max pool, stride 2, ``"SAME"`` padding with ``-inf``, from strided views
    (its gradient is a few selects, also fast inside loops on XLA:CPU)."""
    _, H, W, _ = x.shape
    Ho, Wo = -(-H // 2), -(-W // 2)
    ph, pw = max(2 * (Ho - 1) + 3 - H, 0), max(2 * (Wo - 1) + 3 - W, 0)
    xp = jnp.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)),
                 constant_values=-jnp.inf)
    out = None
    for i in range(3):
        for j in range(3):
            view = xp[:, i:i + 2 * (Ho - 1) + 1:2, j:j + 2 * (Wo - 1) + 1:2]
            out = view if out is None else jnp.maximum(out, view)
    return out


class ResNet(nnx.Module):
    """ResNet feature extractor returning every stage's output (a feature pyramid).

    Args:
      config: a :class:`ResNetConfig`.
      in_channels: image channels ``C_in``.
      rngs: ``nnx.Rngs`` (stream ``params``).

    Call:
      ``x [B, H, W, C_in]``; ``deterministic`` (batch norm: running averages when
      True, batch statistics and an in-place update of the averages when False).
      Returns a list with one ``[B, ⌈H/r_i⌉, ⌈W/r_i⌉, channels[i]]`` map per stage, with
      ``r_i = config.stage_strides[i]`` (``out_channels[i]`` channels).

    Example:
      >>> cfg = ResNetConfig(stem_channels=8, channels=(8, 16), blocks=(1, 1),
      ...                    strides=(1, 2), norm="groupnorm")
      >>> [f.shape for f in ResNet(cfg, rngs=nnx.Rngs(0))(jnp.zeros((1, 32, 32, 3)))]
      [(1, 8, 8, 8), (1, 4, 4, 16)]

    Paper: He et al. 2016, table 1.
    """

    def __init__(self, config: ResNetConfig, in_channels: int = 3, *, rngs: nnx.Rngs):
        if not isinstance(config, ResNetConfig):
            raise ValueError(f"config must be a ResNetConfig, got {type(config).__name__}")
        self.config = config
        self.in_channels = check_int(in_channels, "in_channels")
        self.stem = _conv(in_channels, config.stem_channels, config.stem_kernel,
                          config.stem_stride, config, rngs)
        self.stem_norm = _norm(config.stem_channels, config, rngs)
        stages = []
        ch = config.stem_channels
        for out_ch, n, stride in zip(config.channels, config.blocks, config.strides,
                                     strict=True):
            blocks = []
            for k in range(n):
                blocks.append(BasicBlock(ch, out_ch, stride if k == 0 else 1, config,
                                         rngs=rngs))
                ch = out_ch
            stages.append(nnx.List(blocks))
        self.stages = nnx.List(stages)
        self.out_channels = tuple(config.channels)
        self.strides = config.stage_strides

    def __call__(self, x: jax.Array, *, deterministic: bool = True) -> list[jax.Array]:
        if jnp.ndim(x) != 4 or jnp.shape(x)[-1] != self.in_channels:
            raise ValueError(f"x must have shape [B, H, W, {self.in_channels}], got shape "
                             f"{shape_str(shape_of(x))}")
        x = jax.nn.relu(apply_conv_norm(self.stem_norm, self.stem(x), deterministic))
        if self.config.stem_pool:
            x = _max_pool_3x3_s2(x)
        features = []
        for stage in self.stages:
            for block in stage:
                x = block(x, deterministic=deterministic)
            features.append(x)
        return features
