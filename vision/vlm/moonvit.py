"""MoonViT: a native-resolution vision transformer over packed images (Kimi-VL's encoder).

Each image is cut into ``p × p`` patches (``p = 14``) at its own size; a patch is
flattened channel-first (``C·p·p``, the layout of a stride-``p`` convolution's kernel)
and embedded linearly. A learnable absolute position table ``[h0, w0, D]`` is
interpolated (PyTorch's bicubic) to each image's patch grid and added; attention
rotates queries and keys with axial 2-D RoPE by each patch's (row, column). Blocks are
pre-norm (LayerNorm, attention with q/k/v biases, GELU MLP), with a final LayerNorm.

Packing (NaViT): images of different sizes share a buffer of ``R`` rows of ``L``
tokens; a token's *segment id* is its image's index (``-1`` for padding) and attention
is confined to one segment by a block-diagonal mask (``common.nn.segment_mask``), so an
image encoded in a pack equals the image encoded alone. One image per row padded to the
longest image is the *padded-batch* mode, the same code with ``one_per_row=True``.

Bad input: images smaller than one patch, a pack over its token budget and wrong
shapes raise ``ValueError`` naming the argument (packing is host-side, with concrete
values). Inside ``jit`` the encoder takes whatever ids it is given: segment ids,
rows and columns come from :func:`pack_images`.

Paper: Kimi Team 2025, "Kimi-VL Technical Report" (MoonViT, section 2.1); Dehghani et
al. 2023, "Patch n' Pack: NaViT"; Heo et al. 2024 (2-D RoPE); Dosovitskiy et al. 2021
(ViT).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from common.checks import check_fields, check_int, check_rank, shape_of, shape_str
from common.nn import Encoder, TransformerConfig, segment_mask

__all__ = [
    "CONFIGS",
    "MoonViT",
    "MoonViTConfig",
    "PackInfo",
    "PackedImages",
    "bicubic_taps",
    "first_fit",
    "interpolate_pos_embed",
    "pack_images",
    "patchify",
    "pos_embed_at",
]

#: PyTorch's bicubic convolution constant (``upsample_bicubic2d``).
CUBIC_A = -0.75


@dataclasses.dataclass(frozen=True)
class MoonViTConfig:
    """Shape of a MoonViT encoder.

    Attributes:
      patch_size: ``p`` (Kimi-VL: 14).
      channels: image channels ``C``.
      d_model: width ``D``.
      num_layers: blocks.
      num_heads: attention heads (``D / H`` divisible by 4 for 2-D RoPE).
      mlp_dim: hidden size of the MLP.
      pos_grid: ``(h0, w0)`` of the learnable position table (Kimi-VL: 64 × 64).
      rope_base: 2-D RoPE base wavelength.
      norm_eps: LayerNorm epsilon.
      dtype: computation dtype of the patch embedding and the blocks (``None``: float32
        like the parameters; ``jnp.bfloat16`` under ``common.precision``'s ``bf16``).
    """

    patch_size: int = 14
    channels: int = 3
    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 4
    mlp_dim: int = 128
    pos_grid: tuple[int, int] = (8, 8)
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    dtype: Any = None

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        check_fields(self, positive_ints=("patch_size", "channels", "d_model", "num_layers",
                                          "num_heads", "mlp_dim"),
                     positive=("rope_base", "norm_eps"), sizes=("pos_grid",))
        if len(self.pos_grid) != 2:
            raise ValueError(f"pos_grid must be a pair (h0, w0), got {self.pos_grid!r}")
        if self.d_model % self.num_heads or (self.d_model // self.num_heads) % 4:
            raise ValueError(f"d_model={self.d_model} / num_heads={self.num_heads} must be "
                             "an integer head size divisible by 4 (2-D RoPE)")

    @property
    def patch_dim(self) -> int:
        return self.channels * self.patch_size**2

    def transformer_config(self) -> TransformerConfig:
        return TransformerConfig(
            d_model=self.d_model, num_heads=self.num_heads, mlp_dim=self.mlp_dim,
            num_layers=self.num_layers, activation="gelu_tanh", mlp="mlp", norm="layernorm",
            norm_first=True, final_norm=True, norm_eps=self.norm_eps, qkv_bias=True,
            rope="2d", rope_base=self.rope_base, cross_attention=False, dtype=self.dtype)

    def replace(self, **changes) -> MoonViTConfig:
        return dataclasses.replace(self, **changes)


CONFIGS: dict[str, MoonViTConfig] = {
    # the published MoonViT (Kimi-VL-A3B: hidden 1152, 27 layers, 16 heads, MLP 4304,
    # patch 14, initial position grid 64 × 64; SigLIP-SO-400M initialisation)
    "moonvit-400m": MoonViTConfig(patch_size=14, d_model=1152, num_layers=27, num_heads=16,
                                  mlp_dim=4304, pos_grid=(64, 64)),
    "tiny": MoonViTConfig(),
}


# ----------------------------------------------------------------------------- positions


def _cubic(x: jax.Array) -> jax.Array:
    """Keys' cubic convolution kernel with ``A = −0.75`` at distance ``|x| < 2``."""
    a = CUBIC_A
    x = jnp.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return jnp.where(x <= 1, near, far)


def bicubic_taps(out_index: jax.Array, out_size: jax.Array, in_size: int
                 ) -> tuple[jax.Array, jax.Array]:
    """The four source indices and weights of PyTorch's bicubic resampling along one axis.

    ``align_corners=False``: ``src = (i + ½)·in/out − ½`` (not clamped), ``f = ⌊src⌋``,
    ``t = src − f``; taps ``f−1 … f+2`` clamped to ``[0, in−1]`` with weights
    ``k(t+1), k(t), k(1−t), k(2−t)`` of Keys' kernel with ``A = −0.75``.

    Args:
      out_index: ``[...]`` output positions ``i`` (int; may be traced).
      out_size: output length, scalar or ``[...]`` (may be traced).
      in_size: source length (static).

    Returns:
      ``(index [..., 4] int32, weight [..., 4] float32)``.

    Example:
      >>> idx, w = bicubic_taps(jnp.arange(3), 3, 3)
      >>> idx[1].tolist(), w[1].tolist()
      ([0, 1, 2, 2], [0.0, 1.0, 0.0, 0.0])

    Paper: Keys 1981, "Cubic convolution interpolation for digital image processing";
    PyTorch ``upsample_bicubic2d``.
    """
    out_index = jnp.asarray(out_index, jnp.float32)
    scale = jnp.float32(in_size) / jnp.broadcast_to(jnp.asarray(out_size, jnp.float32),
                                                    out_index.shape)
    src = (out_index + 0.5) * scale - 0.5
    f = jnp.floor(src)
    t = src - f
    offsets = jnp.arange(-1, 3).reshape((1,) * f.ndim + (4,))
    index = jnp.clip(f.astype(jnp.int32)[..., None] + offsets, 0, in_size - 1)
    weight = _cubic(t[..., None] - offsets.astype(jnp.float32))
    return index.astype(jnp.int32), weight


def pos_embed_at(table: jax.Array, rows: jax.Array, cols: jax.Array, heights: jax.Array,
                 widths: jax.Array) -> jax.Array:
    """The bicubically interpolated position embedding of each patch of a packed buffer.

    ``e[t] = Σ_{a,b} wy_a(t) · wx_b(t) · table[iy_a(t), ix_b(t)]`` with the taps of
    :func:`bicubic_taps` for row ``rows[t]`` of ``heights[t]`` and column ``cols[t]`` of
    ``widths[t]``: the entry ``(rows[t], cols[t])`` of
    ``interpolate_pos_embed(table, (heights[t], widths[t]))``, for any mix of grids.

    Args:
      table: ``[h0, w0, D]``.
      rows, cols: ``[...]`` int patch coordinates.
      heights, widths: ``[...]`` int grid size of each patch's image (``>= 1``).

    Returns:
      ``[..., D]``.

    Example:
      >>> pos_embed_at(jnp.ones((4, 4, 8)), jnp.zeros(3, int), jnp.arange(3),
      ...              jnp.full(3, 2), jnp.full(3, 3)).shape
      (3, 8)
    """
    check_rank(table, "table", 3, "[h0, w0, D]")
    h0, w0, _ = table.shape
    iy, wy = bicubic_taps(rows, heights, h0)  # [..., 4]
    ix, wx = bicubic_taps(cols, widths, w0)
    taps = table[iy[..., :, None], ix[..., None, :]]  # [..., 4, 4, D]
    w = (wy[..., :, None] * wx[..., None, :]).astype(table.dtype)  # [..., 4, 4]
    return jnp.einsum("...ab,...abd->...d", w, taps)


def interpolate_pos_embed(table: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Resize a position table to an image's patch grid, exactly as Kimi-VL does.

    PyTorch's ``F.interpolate(table, size, mode="bicubic", align_corners=False)``
    (``A = −0.75``, border taps clamped, see :func:`bicubic_taps`); the table itself
    when ``size`` equals its grid.

    Args:
      table: ``[h0, w0, D]`` learnable positions.
      size: ``(h, w)`` target grid, each ``>= 1``.

    Returns:
      ``[h, w, D]``.

    Example:
      >>> interpolate_pos_embed(jnp.ones((8, 8, 4)), (3, 5)).shape
      (3, 5, 4)

    Paper: Kimi Team 2025 (MoonViT's ``Learnable2DInterpPosEmb``).
    """
    check_rank(table, "table", 3, "[h0, w0, D]")
    if not isinstance(size, (tuple, list)) or len(size) != 2:
        raise ValueError(f"size must be a pair (h, w), got {size!r}")
    h, w = check_int(size[0], "size[0]"), check_int(size[1], "size[1]")
    if (h, w) == tuple(table.shape[:2]):
        return table
    rows, cols = jnp.meshgrid(jnp.arange(h), jnp.arange(w), indexing="ij")
    return pos_embed_at(table, rows, cols, jnp.full((h, w), h), jnp.full((h, w), w))


# ----------------------------------------------------------------------------- packing


def patchify(image, patch_size: int, *, name: str = "image") -> np.ndarray:
    """Cut an image into patches, each flattened channel-first (``C·p·p``).

    An ``H × W`` image gives an ``⌊H/p⌋ × ⌊W/p⌋`` grid; a remainder of fewer than ``p``
    pixels at the bottom or right is dropped (resize images to multiples of ``p`` to
    keep every pixel, as Kimi-VL's processor does).

    Args:
      image: ``[H, W, C]`` (numpy or jax; host side).
      patch_size: ``p``.
      name: the argument name used in errors.

    Returns:
      ``[⌊H/p⌋, ⌊W/p⌋, C·p·p]`` float32 numpy array.

    Example:
      >>> patchify(np.zeros((28, 42, 3)), 14).shape
      (2, 3, 588)
    """
    p = check_int(patch_size, "patch_size")
    image = np.asarray(image, np.float32)
    if image.ndim != 3:
        raise ValueError(f"{name} must have shape [H, W, C], got shape {image.shape}")
    H, W, C = image.shape
    if H < p or W < p:
        raise ValueError(f"{name} of {H}×{W} pixels is smaller than one {p}×{p} patch")
    h, w = H // p, W // p
    x = image[:h * p, :w * p].reshape(h, p, w, p, C).transpose(0, 2, 4, 1, 3)  # [h,w,C,p,p]
    return x.reshape(h, w, C * p * p)


class PackedImages(NamedTuple):
    """Images packed into ``R`` rows of ``L`` tokens (device arrays; a pytree).

    Attributes:
      patches: ``[R, L, C·p·p]`` float32 (zeros at padding).
      segment_ids: ``[R, L]`` int32 image index, ``-1`` at padding.
      rows, cols: ``[R, L]`` int32 patch coordinates in the image's grid.
      heights, widths: ``[R, L]`` int32 the image's grid (1 at padding).
    """

    patches: jax.Array
    segment_ids: jax.Array
    rows: jax.Array
    cols: jax.Array
    heights: jax.Array
    widths: jax.Array


@dataclasses.dataclass(frozen=True)
class PackInfo:
    """Where each image went (host side).

    Attributes:
      grids: ``(h_i, w_i)`` patch grid of image ``i``.
      offsets: flat position ``row·L + start`` of image ``i``'s first patch in the
        ``[R·L]`` buffer.
      row_of: the row holding image ``i``.
      used: real tokens per row.
      max_tokens: ``L``.
    """

    grids: tuple[tuple[int, int], ...]
    offsets: tuple[int, ...]
    row_of: tuple[int, ...]
    used: tuple[int, ...]
    max_tokens: int

    @property
    def efficiency(self) -> float:
        """Real tokens / buffer tokens."""
        return sum(self.used) / max(1, len(self.used) * self.max_tokens)


def first_fit(sizes, max_tokens: int) -> tuple[list[int], list[int], list[int]]:
    """First-fit-decreasing assignment of sequences to rows of ``max_tokens``.

    Args:
      sizes: tokens of each sequence (each ``<= max_tokens``).
      max_tokens: row length.

    Returns:
      ``(row_of, start, used)``: each sequence's row and start, and the tokens used in
      each of the rows opened.

    Example:
      >>> first_fit([3, 5, 2], 6)
      ([1, 0, 1], [0, 0, 3], [5, 5])
    """
    row_of, start = [0] * len(sizes), [0] * len(sizes)
    used: list[int] = []
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        r = next((r for r in range(len(used)) if used[r] + sizes[i] <= max_tokens), None)
        if r is None:
            used.append(0)
            r = len(used) - 1
        row_of[i], start[i] = r, used[r]
        used[r] += sizes[i]
    return row_of, start, used


def pack_images(images, patch_size: int, max_tokens: int, num_rows: int = 1, *,
                one_per_row: bool = False) -> tuple[PackedImages, PackInfo]:
    """Pack images of any sizes into ``num_rows`` rows of ``max_tokens`` patches.

    Images are placed first-fit in order of decreasing token count (each image stays
    contiguous and row-major in one row); with ``one_per_row`` image ``i`` fills row
    ``i`` (the padded-batch mode: ``num_rows = len(images)``, ``max_tokens`` at least
    the longest image).

    Args:
      images: a sequence of ``[H_i, W_i, C]`` arrays.
      patch_size: ``p``.
      max_tokens: ``L``, the token budget of one row.
      num_rows: ``R``.
      one_per_row: padded-batch mode.

    Returns:
      ``(PackedImages, PackInfo)``.

    Raises:
      ValueError: an image smaller than one patch (naming ``images[i]``), an image
        over ``max_tokens``, or images that do not fit in ``num_rows`` rows.

    Example:
      >>> packed, info = pack_images([np.zeros((28, 56, 3)), np.zeros((14, 14, 3))], 14, 16)
      >>> packed.patches.shape, info.offsets
      ((1, 16, 588), (0, 8))
    """
    L = check_int(max_tokens, "max_tokens")
    R = check_int(num_rows, "num_rows")
    grids_patches = [patchify(im, patch_size, name=f"images[{i}]")
                     for i, im in enumerate(images)]
    if not grids_patches:
        raise ValueError("images must hold at least one image")
    sizes = [g.shape[0] * g.shape[1] for g in grids_patches]
    for i, n in enumerate(sizes):
        if n > L:
            raise ValueError(f"images[{i}] has {n} patches, over the packed length budget "
                             f"max_tokens={L}")
    if one_per_row:
        if len(images) > R:
            raise ValueError(f"one_per_row needs num_rows >= {len(images)} images, got "
                             f"num_rows={R}")
        row_of, starts = list(range(len(images))), [0] * len(images)
        used = sizes + [0] * (R - len(images))
    else:
        row_of, starts, used = first_fit(sizes, L)
        if len(used) > R:
            raise ValueError(f"{sum(sizes)} patches of {len(images)} images do not fit in "
                             f"num_rows={R} rows of max_tokens={L} (packed length over "
                             f"the budget; they need {len(used)} rows)")
        used = used + [0] * (R - len(used))
    P = grids_patches[0].shape[-1]
    patches = np.zeros((R, L, P), np.float32)
    seg = np.full((R, L), -1, np.int32)
    rows = np.zeros((R, L), np.int32)
    cols = np.zeros((R, L), np.int32)
    hs = np.ones((R, L), np.int32)
    ws = np.ones((R, L), np.int32)
    for i, g in enumerate(grids_patches):
        h, w = g.shape[:2]
        r, s = row_of[i], starts[i]
        sl = slice(s, s + h * w)
        patches[r, sl] = g.reshape(h * w, P)
        seg[r, sl] = i
        rr, cc = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        rows[r, sl], cols[r, sl] = rr.reshape(-1), cc.reshape(-1)
        hs[r, sl], ws[r, sl] = h, w
    packed = PackedImages(*(jnp.asarray(a) for a in (patches, seg, rows, cols, hs, ws)))
    info = PackInfo(tuple((g.shape[0], g.shape[1]) for g in grids_patches),
                    tuple(row_of[i] * L + starts[i] for i in range(len(images))),
                    tuple(row_of), tuple(used), L)
    return packed, info


# ----------------------------------------------------------------------------- model


class MoonViT(nnx.Module):
    """MoonViT encoder over packed images.

    ``x = patches W_e + b + pos(table; grid) → L pre-norm blocks (2-D RoPE, segment
    mask) → LayerNorm``.

    Args:
      config: a :class:`MoonViTConfig`.
      rngs: ``nnx.Rngs``.

    Call:
      ``PackedImages`` (``[R, L]`` buffers) → ``[R, L, D]`` features (padding rows hold
      values that belong to no image).

    Example:
      >>> vit = MoonViT(CONFIGS["tiny"], rngs=nnx.Rngs(0))
      >>> packed, info = pack_images([np.zeros((28, 56, 3))], 14, 8)
      >>> vit(packed).shape
      (1, 8, 64)

    Paper: Kimi Team 2025, "Kimi-VL Technical Report" (MoonViT).
    """

    def __init__(self, config: MoonViTConfig, *, rngs: nnx.Rngs):
        if not isinstance(config, MoonViTConfig):
            raise ValueError(f"config must be a MoonViTConfig, got {type(config).__name__}")
        self.config = config
        self.patch_embed = nnx.Linear(config.patch_dim, config.d_model, dtype=config.dtype,
                                      rngs=rngs)
        h0, w0 = config.pos_grid
        self.pos_emb = nnx.Param(
            0.02 * jax.random.normal(rngs.params(), (h0, w0, config.d_model), jnp.float32))
        self.encoder = Encoder(config.transformer_config(), rngs=rngs)

    def __call__(self, packed: PackedImages) -> jax.Array:
        c = self.config
        if not isinstance(packed, PackedImages):
            raise ValueError(f"packed must be a PackedImages, got {type(packed).__name__}")
        check_rank(packed.patches, "packed.patches", 3, f"[R, L, {c.patch_dim}]")
        R, L, P = packed.patches.shape
        if P != c.patch_dim:
            raise ValueError(f"packed.patches must have shape [R, L, {c.patch_dim}] "
                             f"(C·p·p), got shape {shape_str(shape_of(packed.patches))}")
        for name in ("segment_ids", "rows", "cols", "heights", "widths"):
            if shape_of(getattr(packed, name)) != (R, L):
                raise ValueError(f"packed.{name} must have shape [R, L] = ({R}, {L}), got "
                                 f"shape {shape_str(shape_of(getattr(packed, name)))}")
        x = self.patch_embed(packed.patches)  # [R, L, D]
        x = x + pos_embed_at(self.pos_emb[...], packed.rows, packed.cols, packed.heights,
                             packed.widths).astype(x.dtype)
        positions = jnp.stack([packed.rows, packed.cols], axis=-1)  # [R, L, 2]
        return self.encoder(x, mask=segment_mask(packed.segment_ids), positions=positions)
