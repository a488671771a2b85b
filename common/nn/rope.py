"""Rotary position embeddings (RoPE): 1D for token sequences, axial 2D for image patches.

Convention: "rotate half" (GPT-NeoX / LLaMA). For head size ``D`` the channel pairs
are ``(i, i + D/2)`` for ``i < D/2``, and pair ``i`` is rotated by the angle
``m · θ_i`` at position ``m``, with ``θ_i = base^{-2i/D}``. Equivalently, with
``z_i = x_i + j·x_{i+D/2}``, RoPE multiplies ``z_i`` by ``exp(j·m·θ_i)``, so the
score ``⟨rope(q, m), rope(k, n)⟩ = Re Σ_i q̃_i conj(k̃_i) e^{j(m-n)θ_i}`` depends only
on ``m - n``.

Paper: Su et al. 2021, "RoFormer: Enhanced Transformer with Rotary Position
Embedding"; 2D: Heo et al. 2024, "Rotary Position Embedding for Vision Transformer"
(axial RoPE), as used by the MoonViT encoder of Kimi-VL (Kimi Team 2025).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from common.checks import shape_of, shape_str

__all__ = ["apply_rope", "apply_rope_2d", "grid_positions", "rope_frequencies"]


def rope_frequencies(head_dim: int, base: float = 10000.0, dtype=jnp.float32) -> jax.Array:
    """Rotary inverse frequencies ``θ_i = base^{-2i/D}`` for ``i = 0 .. D/2 - 1``.

    Args:
      head_dim: rotated size ``D`` (must be even).
      base: base wavelength (10000 in RoFormer and LLaMA).
      dtype: floating dtype of the result.

    Returns:
      ``[D/2]`` frequencies, decreasing from 1.

    Example:
      >>> rope_frequencies(8).shape
      (4,)

    Paper: Su et al. 2021, eq. (15).
    """
    if head_dim <= 0 or head_dim % 2 != 0:
        raise ValueError(f"head_dim must be a positive even number for rope, got {head_dim}")
    exponents = jnp.arange(0, head_dim, 2, dtype=dtype) / head_dim
    return jnp.asarray(base, dtype) ** -exponents


def _check_positions(positions, x_shape, name: str) -> jax.Array:
    """Return positions as ``[B|1, T]`` after checking they match ``x [B, T, H, D]``."""
    positions = jnp.asarray(positions)
    B, T = x_shape[0], x_shape[1]
    if positions.ndim == 1:
        positions = positions[None]
    if positions.ndim != 2 or positions.shape[1] != T or positions.shape[0] not in (1, B):
        raise ValueError(
            f"{name} must have shape [B, T] = ({B}, {T}) or [T] = ({T},), "
            f"got shape {shape_str(shape_of(positions))}"
        )
    return positions


def _rotate(x: jax.Array, positions: jax.Array, base: float) -> jax.Array:
    """Half-split rotation of ``x [B, T, H, D]`` by ``positions [B|1, T]``."""
    D = x.shape[-1]
    compute = jnp.promote_types(x.dtype, jnp.float32)
    freqs = rope_frequencies(D, base, compute)  # [D/2]
    angles = positions.astype(compute)[:, :, None] * freqs[None, None, :]  # [B|1, T, D/2]
    cos = jnp.cos(angles)[:, :, None, :]  # [B|1, T, 1, D/2]
    sin = jnp.sin(angles)[:, :, None, :]
    x1 = x[..., : D // 2].astype(compute)
    x2 = x[..., D // 2 :].astype(compute)
    out = jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
    return out.astype(x.dtype)


def apply_rope(x: jax.Array, positions: jax.Array, base: float = 10000.0) -> jax.Array:
    """Rotate queries or keys by their 1D positions (rotate-half convention).

    ``y[..., i] = x_i cos(m θ_i) - x_{i+D/2} sin(m θ_i)``,
    ``y[..., i+D/2] = x_i sin(m θ_i) + x_{i+D/2} cos(m θ_i)``, ``θ_i = base^{-2i/D}``.

    Args:
      x: ``[B, T, H, D]`` queries or keys, ``D`` even.
      positions: ``[B, T]`` or ``[T]`` position ids ``m`` (integer or float).
      base: base wavelength.

    Returns:
      ``[B, T, H, D]`` rotated array, same dtype as ``x`` (angles are computed in at
      least float32).

    Example:
      >>> q = jnp.ones((1, 3, 2, 8))
      >>> apply_rope(q, jnp.arange(3)).shape
      (1, 3, 2, 8)

    Paper: Su et al. 2021, "RoFormer", eq. (34); rotate-half layout of GPT-NeoX.
    """
    if jnp.ndim(x) != 4:
        raise ValueError(f"x must have shape [B, T, H, D], got shape {shape_str(shape_of(x))}")
    if x.shape[-1] % 2 != 0:
        raise ValueError(f"x head dim D must be even for rope, got D={x.shape[-1]}")
    positions = _check_positions(positions, x.shape, "positions")
    return _rotate(x, positions, base)


def apply_rope_2d(
    x: jax.Array, rows: jax.Array, cols: jax.Array, base: float = 10000.0
) -> jax.Array:
    """Axial 2D rotary embedding: first half of ``D`` rotates with the row, second with the column.

    ``y = concat(rope_1d(x[..., :D/2], rows), rope_1d(x[..., D/2:], cols))``, each half
    using the rotate-half layout with frequencies ``base^{-2i/(D/2)}``. The score
    ``⟨y(q; r, c), y(k; r', c')⟩`` then depends only on ``(r - r', c - c')``.

    Note: layouts that rotate adjacent channel pairs or interleave the row and column
    frequencies (complex-pair implementations such as MoonViT's) differ from this one
    only by a fixed permutation of the head channels; port their weights by permuting
    the q/k projection columns accordingly.

    Args:
      x: ``[B, T, H, D]`` queries or keys over ``T`` patches, ``D`` divisible by 4.
      rows: ``[B, T]`` or ``[T]`` row index of each patch.
      cols: ``[B, T]`` or ``[T]`` column index of each patch.
      base: base wavelength.

    Returns:
      ``[B, T, H, D]`` rotated array, same dtype as ``x``.

    Example:
      >>> rows, cols = grid_positions(2, 3)
      >>> apply_rope_2d(jnp.ones((1, 6, 2, 8)), rows, cols).shape
      (1, 6, 2, 8)

    Paper: Heo et al. 2024, "Rotary Position Embedding for Vision Transformer"
    (RoPE-Axial); Kimi Team 2025, "Kimi-VL Technical Report" (MoonViT).
    """
    if jnp.ndim(x) != 4:
        raise ValueError(f"x must have shape [B, T, H, D], got shape {shape_str(shape_of(x))}")
    D = x.shape[-1]
    if D % 4 != 0:
        raise ValueError(f"x head dim D must be divisible by 4 for 2D rope, got D={D}")
    rows = _check_positions(rows, x.shape, "rows")
    cols = _check_positions(cols, x.shape, "cols")
    half = D // 2
    return jnp.concatenate(
        [_rotate(x[..., :half], rows, base), _rotate(x[..., half:], cols, base)], axis=-1
    )


def grid_positions(height: int, width: int) -> tuple[jax.Array, jax.Array]:
    """Row and column ids of a ``height × width`` patch grid flattened row-major.

    ``rows[p] = p // width``, ``cols[p] = p % width``.

    Args:
      height: number of patch rows.
      width: number of patch columns.

    Returns:
      ``(rows, cols)``, each ``[height * width]`` int32.

    Example:
      >>> [r.tolist() for r in grid_positions(2, 2)]
      [[0, 0, 1, 1], [0, 1, 0, 1]]
    """
    if height < 0 or width < 0:
        raise ValueError(f"height and width must be >= 0, got {height}, {width}")
    rows, cols = jnp.meshgrid(jnp.arange(height), jnp.arange(width), indexing="ij")
    return rows.reshape(-1), cols.reshape(-1)
