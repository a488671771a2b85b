"""Fixed (non-learned) positional encodings: 1D sinusoids and DETR's 2D sine encoding.

Paper: Vaswani et al. 2017, "Attention Is All You Need", section 3.5; Carion et al.
2020, "End-to-End Object Detection with Transformers" (DETR), appendix A.4.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from common.checks import shape_str

__all__ = ["sine_position_encoding_2d", "sinusoidal_position_encoding"]


def sinusoidal_position_encoding(
    positions: int | jax.Array, dim: int, *, base: float = 10000.0, dtype=jnp.float32
) -> jax.Array:
    """Sinusoidal position encoding with interleaved sin/cos channels.

    ``PE[p, 2i] = sin(p / base^{2i/d})``, ``PE[p, 2i+1] = cos(p / base^{2i/d})``.

    Args:
      positions: an ``int`` length ``T`` (positions ``0 .. T-1``), or position ids of
        shape ``[T]`` or ``[B, T]`` (integer or float).
      dim: encoding size ``d`` (must be even).
      base: base wavelength (10000 in the paper).
      dtype: floating dtype of the result.

    Returns:
      ``[T, dim]`` (int or ``[T]`` positions) or ``[B, T, dim]`` encodings.

    Example:
      >>> sinusoidal_position_encoding(4, 8).shape
      (4, 8)

    Paper: Vaswani et al. 2017, section 3.5.
    """
    if dim <= 0 or dim % 2 != 0:
        raise ValueError(f"dim must be a positive even number, got {dim}")
    if isinstance(positions, int):
        if positions < 0:
            raise ValueError(f"positions (a length) must be >= 0, got {positions}")
        positions = jnp.arange(positions)
    positions = jnp.asarray(positions)
    if positions.ndim not in (1, 2):
        raise ValueError(
            f"positions must be an int or have shape [T] or [B, T], got shape "
            f"{shape_str(positions.shape)}"
        )
    compute = jnp.promote_types(dtype, jnp.float32)
    inv_freq = jnp.asarray(base, compute) ** -(jnp.arange(0, dim, 2, dtype=compute) / dim)
    inv_freq = inv_freq.reshape((1,) * positions.ndim + (dim // 2,))
    angles = positions.astype(compute)[..., None] * inv_freq  # [..., T, d/2]
    # Interleave: channel 2i is sin, channel 2i+1 is cos of the same frequency.
    pe = jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1)  # [..., T, d/2, 2]
    return pe.reshape(*positions.shape, dim).astype(dtype)


def sine_position_encoding_2d(
    mask: jax.Array | tuple[int, int],
    num_pos_feats: int = 128,
    temperature: float = 10000.0,
    normalize: bool = True,
    scale: float = 2 * math.pi,
    *,
    eps: float = 1e-6,
    dtype=jnp.float32,
) -> jax.Array:
    """DETR's 2D sine positional encoding of a (padded) feature map.

    With ``y = cumsum_rows(valid)``, ``x = cumsum_cols(valid)`` (1-based pixel
    coordinates that skip padding), optionally normalised as
    ``y ← y / (y_last + eps) · scale`` (``y_last`` the count of valid rows in that
    column, likewise ``x``), and ``τ_k = temperature^{2⌊k/2⌋ / F}`` for
    ``k < F = num_pos_feats``::

        PE_y[..., k] = sin(y / τ_k) for even k, cos(y / τ_k) for odd k
        PE_x[..., k] = sin(x / τ_k) for even k, cos(x / τ_k) for odd k
        PE = concat(PE_y, PE_x)  # y first, then x

    Args:
      mask: ``[B, H, W]`` boolean, ``True`` for valid (non-padded) pixels, the
        library's mask convention (DETR's code passes the opposite, ``True`` = pad);
        or a ``(H, W)`` tuple meaning one fully valid map.
      num_pos_feats: ``F``, channels per axis (even).
      temperature: base wavelength.
      normalize: scale coordinates to ``(0, scale]`` per image.
      scale: range of normalised coordinates (``2π`` in DETR).
      eps: stabiliser of the normalisation.
      dtype: floating dtype of the result.

    Returns:
      ``[B, H, W, 2 * num_pos_feats]`` encodings, channels last (``B = 1`` for a tuple).

    Example:
      >>> sine_position_encoding_2d((4, 6), num_pos_feats=16).shape
      (1, 4, 6, 32)

    Paper: Carion et al. 2020, "End-to-End Object Detection with Transformers",
    appendix A.4 (following Parmar et al. 2018, "Image Transformer").
    """
    if num_pos_feats <= 0 or num_pos_feats % 2 != 0:
        raise ValueError(f"num_pos_feats must be a positive even number, got {num_pos_feats}")
    if isinstance(mask, tuple):
        if len(mask) != 2 or not all(isinstance(s, int) and s >= 0 for s in mask):
            raise ValueError(f"mask given as a shape must be (H, W) of ints >= 0, got {mask}")
        mask = jnp.ones((1, *mask), dtype=bool)
    mask = jnp.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"mask must have shape [B, H, W], got shape {shape_str(mask.shape)}")
    if mask.dtype != jnp.bool_:
        raise ValueError(f"mask must be boolean (True = valid pixel), got dtype {mask.dtype}")

    compute = jnp.promote_types(dtype, jnp.float32)
    valid = mask.astype(compute)
    y_embed = jnp.cumsum(valid, axis=1)  # [B, H, W]
    x_embed = jnp.cumsum(valid, axis=2)
    if normalize:
        y_embed = y_embed / (y_embed[:, -1:, :] + eps) * scale
        x_embed = x_embed / (x_embed[:, :, -1:] + eps) * scale

    k = jnp.arange(num_pos_feats)
    dim_t = jnp.asarray(temperature, compute) ** (2 * (k // 2) / num_pos_feats).astype(compute)
    dim_t = dim_t[None, None, None, :]  # [1, 1, 1, F]
    even = (k % 2 == 0)[None, None, None, :]

    def encode(coord):  # [B, H, W] -> [B, H, W, F]
        arg = coord[..., None] / dim_t
        return jnp.where(even, jnp.sin(arg), jnp.cos(arg))

    return jnp.concatenate([encode(y_embed), encode(x_embed)], axis=-1).astype(dtype)
