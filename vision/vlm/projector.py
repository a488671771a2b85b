"""Kimi-VL's patch merger and MLP projector: 2×2 pixel shuffle, LayerNorm, Linear–GELU–Linear.

MoonViT's patch features ``[H, W, D]`` are merged in ``kh × kw`` windows (pixel shuffle:
the window's patches concatenated along channels, row-major within the window), giving
``[H/kh, W/kw, kh·kw·D]``, a quarter as many tokens for the language model with the
default 2×2 kernel. The projector normalises each patch feature (LayerNorm over ``D``),
then maps the merged vector through ``Linear(4D, 4D) → GELU → Linear(4D, D_lm)``.

Layout (the published one, so that a converter is a mapping of names): the merge is
``x.view(H/2, 2, W/2, 2, D).permute(0, 2, 1, 3, 4).reshape(H/2·W/2, 4·D)``; the
projector's ``pre_norm`` is a LayerNorm over the *unmerged* width ``D`` (applied per
patch, which commutes with the merge), then ``linear_1``, GELU, ``linear_2``.

Odd grids (a rule of this module; Kimi-VL's processor resizes images so that the grid
is always a multiple of the kernel): the grid is zero-padded at the bottom and right to
the next multiple of the kernel, so an ``H × W`` grid gives ``⌈H/kh⌉ × ⌈W/kw⌉`` merged
tokens and the missing window members are zero features (zeros entering the
projector, whose per-patch LayerNorm maps them to its bias).

Paper: Kimi Team 2025, "Kimi-VL Technical Report" (section 2.1: "MLP projector ... a
pixel shuffle operation to compress the spatial dimension of the image features
extracted by MoonViT, performing 2×2 downsampling ... then fed into a two-layer MLP").
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from common.checks import check_fields, check_int, check_rank, shape_of, shape_str

__all__ = ["Projector", "ProjectorConfig", "merge_gather_index", "merge_patches", "merged_grid"]


def _check_kernel(kernel) -> tuple[int, int]:
    if not isinstance(kernel, (tuple, list)) or len(kernel) != 2:
        raise ValueError(f"kernel must be a pair (kh, kw), got {kernel!r}")
    return check_int(kernel[0], "kernel[0]"), check_int(kernel[1], "kernel[1]")


def merged_grid(grid: tuple[int, int], kernel=(2, 2)) -> tuple[int, int]:
    """The merged grid ``(⌈H/kh⌉, ⌈W/kw⌉)`` of a ``grid = (H, W)`` patch grid.

    Example:
      >>> merged_grid((5, 8))
      (3, 4)
    """
    kh, kw = _check_kernel(kernel)
    return -(-int(grid[0]) // kh), -(-int(grid[1]) // kw)


def merge_patches(x: jax.Array, kernel=(2, 2)) -> jax.Array:
    """Pixel shuffle: concatenate each ``kh × kw`` window of patch features along channels.

    ``y[i, j] = concat(x[kh·i + a, kw·j + b] for a < kh for b < kw)`` (row-major within
    the window), i.e. ``x.view(H/kh, kh, W/kw, kw, D).permute(0, 2, 1, 3, 4)``. Odd grids
    are zero-padded at the bottom and right first (module docstring).

    Args:
      x: ``[H, W, D]`` patch features of one image.
      kernel: ``(kh, kw)``, Kimi-VL's ``merge_kernel_size`` ``(2, 2)``.

    Returns:
      ``[⌈H/kh⌉, ⌈W/kw⌉, kh·kw·D]``.

    Example:
      >>> merge_patches(jnp.zeros((4, 6, 8))).shape
      (2, 3, 32)

    Paper: Kimi Team 2025, "Kimi-VL Technical Report", section 2.1.
    """
    kh, kw = _check_kernel(kernel)
    check_rank(x, "x", 3, "[H, W, D]")
    H, W, D = x.shape
    if H < 1 or W < 1:
        raise ValueError(f"x must have shape [H, W, D] with H, W >= 1, got shape "
                         f"{shape_str(shape_of(x))}")
    Hm, Wm = merged_grid((H, W), (kh, kw))
    x = jnp.pad(x, ((0, Hm * kh - H), (0, Wm * kw - W), (0, 0)))
    x = x.reshape(Hm, kh, Wm, kw, D).transpose(0, 2, 1, 3, 4)  # [Hm, Wm, kh, kw, D]
    return x.reshape(Hm, Wm, kh * kw * D)


def merge_gather_index(grid: tuple[int, int], offset: int, kernel=(2, 2), *,
                       pad_index: int = -1) -> np.ndarray:
    """Indices into a flat (packed) patch buffer that gather one image's merged tokens.

    The image's patches sit row-major at ``offset + r·W + c``; merged token ``(i, j)``
    (row-major over the merged grid) gathers window member ``(a, b)`` from
    ``offset + (kh·i + a)·W + kw·j + b``, or ``pad_index`` (a zero row) where the odd-grid
    rule pads. ``buffer[index].reshape(M, kh·kw·D)`` then equals
    ``merge_patches(image).reshape(M, -1)``.

    Args:
      grid: ``(H, W)`` the image's patch grid.
      offset: flat position of the image's first patch.
      kernel: ``(kh, kw)``.
      pad_index: index of a zero row of the buffer, used for padded window members.

    Returns:
      ``[⌈H/kh⌉·⌈W/kw⌉, kh·kw]`` int32 (host numpy).

    Example:
      >>> merge_gather_index((2, 2), 10).tolist()
      [[10, 11, 12, 13]]
    """
    kh, kw = _check_kernel(kernel)
    H, W = check_int(grid[0], "grid[0]"), check_int(grid[1], "grid[1]")
    Hm, Wm = merged_grid((H, W), (kh, kw))
    r = (np.arange(Hm)[:, None, None, None] * kh + np.arange(kh)[None, None, :, None])
    c = (np.arange(Wm)[None, :, None, None] * kw + np.arange(kw)[None, None, None, :])
    r, c = np.broadcast_arrays(r, c)  # [Hm, Wm, kh, kw]
    index = np.where((r < H) & (c < W), offset + r * W + c, pad_index)
    return index.reshape(Hm * Wm, kh * kw).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class ProjectorConfig:
    """Shape of the projector.

    Attributes:
      vision_dim: MoonViT width ``D``.
      text_dim: the language model's width ``D_lm``.
      kernel: merge kernel ``(kh, kw)``.
      norm_eps: LayerNorm epsilon (Kimi-VL: 1e-5).
    """

    vision_dim: int
    text_dim: int
    kernel: tuple[int, int] = (2, 2)
    norm_eps: float = 1e-5

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        check_fields(self, positive_ints=("vision_dim", "text_dim"), positive=("norm_eps",))
        _check_kernel(self.kernel)

    @property
    def merged_dim(self) -> int:
        return self.kernel[0] * self.kernel[1] * self.vision_dim


class Projector(nnx.Module):
    """LayerNorm (per patch) → merge → ``Linear(4D, 4D)`` → GELU → ``Linear(4D, D_lm)``.

    Args:
      config: a :class:`ProjectorConfig`.
      rngs: ``nnx.Rngs``.

    Call:
      ``windows [M, kh·kw, D]`` (the merged windows' member features, e.g. a packed
      buffer gathered with :func:`merge_gather_index`) → ``[M, D_lm]``.

    Example:
      >>> proj = Projector(ProjectorConfig(32, 64), rngs=nnx.Rngs(0))
      >>> proj(jnp.ones((5, 4, 32))).shape
      (5, 64)

    Paper: Kimi Team 2025, "Kimi-VL Technical Report" (``KimiVLMultiModalProjector``).
    """

    def __init__(self, config: ProjectorConfig, *, rngs: nnx.Rngs):
        if not isinstance(config, ProjectorConfig):
            raise ValueError(f"config must be a ProjectorConfig, got {type(config).__name__}")
        self.config = config
        D, M = config.vision_dim, config.merged_dim
        self.pre_norm = nnx.LayerNorm(D, epsilon=config.norm_eps, rngs=rngs)
        self.linear_1 = nnx.Linear(M, M, rngs=rngs)
        self.linear_2 = nnx.Linear(M, config.text_dim, rngs=rngs)

    def __call__(self, windows: jax.Array) -> jax.Array:
        c = self.config
        K = c.kernel[0] * c.kernel[1]
        check_rank(windows, "windows", 3, f"[M, {K}, {c.vision_dim}]")
        if windows.shape[1:] != (K, c.vision_dim):
            raise ValueError(f"windows must have shape [M, {K}, {c.vision_dim}], got shape "
                             f"{shape_str(windows.shape)}")
        h = self.pre_norm(windows).reshape(windows.shape[0], K * c.vision_dim)  # [M, 4D]
        return self.linear_2(jax.nn.gelu(self.linear_1(h), approximate=False))
