"""A small DDPM-style U-Net score network for images (NHWC).

Residual blocks (GroupNorm → SiLU → 3×3 conv, plus the projected time embedding,
→ GroupNorm → SiLU → dropout → 3×3 conv, with a 1×1 skip when channels change),
self-attention blocks at the chosen (low) resolutions, strided-conv downsampling and
nearest-neighbour upsampling to the skip connection's size (so odd sizes such as
28 → 14 → 7 → 14 → 28 work), and a sinusoidal or Fourier time embedding.

Convolutions are ``common.nn.Conv2D`` (``"SAME"`` padding: a stride-2 downsampling of
an even size pads one row and column after, none before; gradients that stay fast
inside ``lax.scan`` on CPU). GroupNorm uses ``common.nn.group_count(C, groups)``
groups, i.e. ``gcd(C, groups)``.

Paper: Ho, Jain & Abbeel 2020, appendix B (architecture after PixelCNN++ / Wide
ResNet); Ronneberger et al. 2015, "U-Net"; Song et al. 2021, appendix H.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from common.checks import shape_of, shape_str
from common.nn import Conv2D, MultiHeadAttention, group_count
from generative.models.embedding import TimeEmbedding
from generative.models.registry import SCORE_NETS

__all__ = ["ScoreUNet", "default_init"]


#: DDPM / score_sde's default initialiser: variance scaling, fan-average, uniform.
default_init = nnx.initializers.variance_scaling(1.0, "fan_avg", "uniform")


class _ResBlock(nnx.Module):
    def __init__(self, cin: int, cout: int, temb: int, groups: int, dropout: float,
                 impl, rngs: nnx.Rngs, dtype=None):
        self.norm1 = nnx.GroupNorm(cin, num_groups=group_count(cin, groups), dtype=dtype,
                                   rngs=rngs)
        self.conv1 = Conv2D(cin, cout, 3, kernel_init=default_init, impl=impl, dtype=dtype,
                            rngs=rngs)
        self.temb = nnx.Linear(temb, cout, kernel_init=default_init, dtype=dtype, rngs=rngs)
        self.norm2 = nnx.GroupNorm(cout, num_groups=group_count(cout, groups), dtype=dtype,
                                   rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.conv2 = Conv2D(cout, cout, 3, kernel_init=nnx.initializers.zeros, impl=impl,
                            dtype=dtype, rngs=rngs)
        self.skip = (Conv2D(cin, cout, 1, kernel_init=default_init, impl=impl, dtype=dtype,
                            rngs=rngs) if cin != cout else None)

    def __call__(self, x, emb, deterministic, rngs):
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = h + self.temb(jax.nn.silu(emb))[:, None, None, :]
        h = self.dropout(jax.nn.silu(self.norm2(h)), deterministic=deterministic, rngs=rngs)
        h = self.conv2(h)
        return h + (x if self.skip is None else self.skip(x))


class _AttnBlock(nnx.Module):
    def __init__(self, channels: int, heads: int, groups: int, rngs: nnx.Rngs, dtype=None):
        self.norm = nnx.GroupNorm(channels, num_groups=group_count(channels, groups),
                                  dtype=dtype, rngs=rngs)
        self.attn = MultiHeadAttention(channels, heads, kernel_init=default_init, dtype=dtype,
                                       rngs=rngs)

    def __call__(self, x):
        B, H, W, C = x.shape
        h = self.norm(x).reshape(B, H * W, C)  # [B, HW, C]
        return x + self.attn(h).reshape(B, H, W, C)


@SCORE_NETS.register("unet")
class ScoreUNet(nnx.Module):
    """U-Net ``(x [B, H, W, C], t [B]) -> [B, H, W, C]`` for image score models.

    Args:
      in_channels: image channels ``C``.
      image_size: height = width of the inputs (sets the attention resolutions).
      channels: base width ``ch``; level ``l`` has ``ch · channel_mult[l]`` channels.
      channel_mult: width multipliers, one per resolution level.
      num_res_blocks: residual blocks per level on the way down (one more up).
      attention_levels: levels with self-attention (0 = full resolution); default:
        the lowest-resolution level.
      heads: attention heads.
      groups: requested GroupNorm groups; a level of ``C`` channels uses
        ``gcd(C, groups)`` (:func:`common.nn.group_count`).
      dropout: dropout in the residual blocks (active when ``deterministic=False``).
      embedding: ``"sinusoidal"`` (DDPM) or ``"fourier"`` (NCSN++).
      embedding_scale: see :class:`~generative.models.embedding.TimeEmbedding`.
      conv_impl: ``"auto"`` (im2col on CPU, XLA's elsewhere), ``"im2col"`` or ``"xla"``;
        see :func:`common.nn.conv2d`.
      dtype: computation dtype of convolutions, attention and norms (``None``: float32
        like the parameters; ``jnp.bfloat16`` under ``common.precision``'s ``bf16``). The
        time embedding and the returned score stay float32.
      rngs: ``nnx.Rngs``.

    Call:
      ``net(x, t, deterministic=True, rngs=None)``.

    Example:
        >>> net = ScoreUNet(1, image_size=8, channels=16, rngs=nnx.Rngs(0))
        >>> net(jnp.zeros((2, 8, 8, 1)), jnp.ones(2)).shape
        (2, 8, 8, 1)

    Paper: Ho et al. 2020, appendix B.
    """

    def __init__(self, in_channels: int = 1, *, image_size: int = 28, channels: int = 32,
                 channel_mult: tuple[int, ...] = (1, 2, 2), num_res_blocks: int = 1,
                 attention_levels: tuple[int, ...] | None = None, heads: int = 4,
                 groups: int = 8, dropout: float = 0.0, embedding: str = "sinusoidal",
                 embedding_scale: float | None = None, conv_impl: str = "auto",
                 dtype=None, rngs: nnx.Rngs):
        if min(in_channels, image_size, channels, num_res_blocks, heads) <= 0 \
                or not channel_mult:
            raise ValueError("in_channels, image_size, channels, num_res_blocks, heads must be "
                             f"> 0 and channel_mult non-empty, got {in_channels}, {image_size}, "
                             f"{channels}, {num_res_blocks}, {heads}, {channel_mult}")
        levels = len(channel_mult)
        if attention_levels is None:
            attention_levels = (levels - 1,)
        self.in_channels = in_channels
        self.image_size = image_size
        temb = 4 * channels
        self.embed = TimeEmbedding(channels, temb, kind=embedding, scale=embedding_scale,
                                   kernel_init=default_init, rngs=rngs)
        self.conv_in = Conv2D(in_channels, channels, 3, kernel_init=default_init,
                              impl=conv_impl, dtype=dtype, rngs=rngs)
        widths = [channels * m for m in channel_mult]

        down, skips = [], [channels]
        cin = channels
        for level, width in enumerate(widths):
            for _ in range(num_res_blocks):
                block = _ResBlock(cin, width, temb, groups, dropout, conv_impl, rngs, dtype)
                attn = (_AttnBlock(width, heads, groups, rngs, dtype)
                        if level in attention_levels else None)
                down.append((block, attn))
                cin = width
                skips.append(cin)
            if level != levels - 1:
                down.append((Conv2D(cin, cin, 3, 2, kernel_init=default_init, impl=conv_impl,
                                    dtype=dtype, rngs=rngs), None))
                skips.append(cin)
        self.down = nnx.List([nnx.List(list(pair)) for pair in down])
        self.mid = nnx.List([_ResBlock(cin, cin, temb, groups, dropout, conv_impl, rngs, dtype),
                             _AttnBlock(cin, heads, groups, rngs, dtype),
                             _ResBlock(cin, cin, temb, groups, dropout, conv_impl, rngs, dtype)])
        up = []
        for level in reversed(range(levels)):
            width = widths[level]
            for _ in range(num_res_blocks + 1):
                block = _ResBlock(cin + skips.pop(), width, temb, groups, dropout, conv_impl,
                                  rngs, dtype)
                attn = (_AttnBlock(width, heads, groups, rngs, dtype)
                        if level in attention_levels else None)
                up.append((block, attn))
                cin = width
            if level != 0:
                up.append((Conv2D(cin, cin, 3, kernel_init=default_init, impl=conv_impl,
                                  dtype=dtype, rngs=rngs), None))
        self.up = nnx.List([nnx.List(list(pair)) for pair in up])
        self.norm_out = nnx.GroupNorm(cin, num_groups=group_count(cin, groups), dtype=dtype,
                                      rngs=rngs)
        self.conv_out = Conv2D(cin, in_channels, 3, kernel_init=nnx.initializers.zeros,
                               impl=conv_impl, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, t: jax.Array, *, deterministic: bool = True,
                 rngs: nnx.Rngs | None = None) -> jax.Array:
        if jnp.ndim(x) != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(f"x must have shape [B, H, W, {self.in_channels}] (NHWC), got "
                             f"{shape_str(shape_of(x))}")
        if jnp.ndim(t) != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(f"t must have shape [B] = ({x.shape[0]},) like x's batch, got "
                             f"{shape_str(shape_of(t))}")
        emb = self.embed(t)
        h = self.conv_in(x)
        hs = [h]
        for block, attn in self.down:
            if isinstance(block, _ResBlock):
                h = block(h, emb, deterministic, rngs)
                if attn is not None:
                    h = attn(h)
            else:  # strided downsampling conv
                h = block(h)
            hs.append(h)
        h = self.mid[0](h, emb, deterministic, rngs)
        h = self.mid[1](h)
        h = self.mid[2](h, emb, deterministic, rngs)
        for block, attn in self.up:
            if isinstance(block, _ResBlock):
                h = block(jnp.concatenate([h, hs.pop()], axis=-1), emb, deterministic, rngs)
                if attn is not None:
                    h = attn(h)
            else:  # upsample to the next skip's size, then conv
                target = hs[-1].shape
                h = jax.image.resize(h, (h.shape[0], target[1], target[2], h.shape[3]),
                                     method="nearest")
                h = block(h)
        out = self.conv_out(jax.nn.silu(self.norm_out(h)))
        return out.astype(jnp.promote_types(x.dtype, jnp.float32))  # the score in float32
