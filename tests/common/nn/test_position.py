"""Positional encodings against their closed forms evaluated in plain numpy loops."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common.nn import sine_position_encoding_2d, sinusoidal_position_encoding
from tests.tolerances import F32, F64, assert_close


def ref_sinusoidal(positions, dim, base=10000.0):
    """PE[p, 2i] = sin(p / base^(2i/d)), PE[p, 2i+1] = cos(p / base^(2i/d))."""
    positions = np.asarray(positions, np.float64)
    out = np.zeros((*positions.shape, dim))
    for idx in np.ndindex(positions.shape):
        p = positions[idx]
        for i in range(dim // 2):
            angle = p / base ** (2 * i / dim)
            out[(*idx, 2 * i)] = math.sin(angle)
            out[(*idx, 2 * i + 1)] = math.cos(angle)
    return out


def ref_detr_2d(valid, F, temperature=10000.0, normalize=True, scale=2 * math.pi, eps=1e-6):
    """DETR's formula, pixel by pixel: y channels first, then x, sin/cos interleaved."""
    valid = np.asarray(valid, bool)
    B, H, W = valid.shape
    out = np.zeros((B, H, W, 2 * F))
    for b in range(B):
        for i in range(H):
            for j in range(W):
                y = valid[b, : i + 1, j].sum()
                x = valid[b, i, : j + 1].sum()
                if normalize:
                    y = y / (valid[b, :, j].sum() + eps) * scale
                    x = x / (valid[b, i, :].sum() + eps) * scale
                for c in range(F):
                    tau = temperature ** (2 * (c // 2) / F)
                    trig = math.sin if c % 2 == 0 else math.cos
                    out[b, i, j, c] = trig(y / tau)
                    out[b, i, j, F + c] = trig(x / tau)
    return out


def test_sinusoidal_matches_closed_form(x64):
    out = sinusoidal_position_encoding(6, 10, dtype=jnp.float64)
    assert out.shape == (6, 10) and out.dtype == jnp.float64
    assert_close(out, ref_sinusoidal(np.arange(6), 10), F64)
    # Batched and float positions, other base, jitted.
    positions = jnp.array([[0.0, 2.5, 7.0], [100.0, 1.0, 3.0]])
    fn = jax.jit(sinusoidal_position_encoding, static_argnames=("dim", "base", "dtype"))
    out = fn(positions, dim=4, base=100.0, dtype=jnp.float64)
    assert out.shape == (2, 3, 4)
    assert_close(out, ref_sinusoidal(positions, 4, base=100.0), F64)


def test_sinusoidal_float32_and_empty():
    assert_close(sinusoidal_position_encoding(5, 8), ref_sinusoidal(np.arange(5), 8), F32)
    assert sinusoidal_position_encoding(0, 8).shape == (0, 8)


@pytest.mark.parametrize("normalize", [True, False])
def test_detr_2d_matches_formula_with_padding(x64, normalize):
    valid = np.ones((2, 4, 5), bool)
    valid[0, 3:, :] = False  # image 0 is 3 rows high ...
    valid[0, :, 4:] = False  # ... and 4 columns wide
    valid[1, :, 2:] = False  # image 1 is 2 columns wide
    fn = jax.jit(sine_position_encoding_2d,
                 static_argnames=("num_pos_feats", "temperature", "normalize", "dtype"))
    out = fn(jnp.asarray(valid), num_pos_feats=6, temperature=20.0, normalize=normalize,
             dtype=jnp.float64)
    assert out.shape == (2, 4, 5, 12) and out.dtype == jnp.float64
    assert_close(out, ref_detr_2d(valid, 6, temperature=20.0, normalize=normalize), F64)


def test_detr_2d_shape_argument_and_channel_layout():
    out = jax.jit(sine_position_encoding_2d, static_argnums=(0, 1))((3, 4), 8)
    assert out.shape == (1, 3, 4, 16)
    from_mask = jax.jit(sine_position_encoding_2d, static_argnums=1)(jnp.ones((1, 3, 4), bool), 8)
    assert_close(out, from_mask, F32)
    assert_close(out, ref_detr_2d(np.ones((1, 3, 4), bool), 8), F32)
    # First half varies with the row only, second half with the column only.
    assert_close(out[:, :, :1, :8], jnp.broadcast_to(out[:, :, :1, :8], (1, 3, 1, 8)), F32)
    assert_close(out[..., :8], jnp.broadcast_to(out[:, :, :1, :8], (1, 3, 4, 8)), F32)
    assert_close(out[..., 8:], jnp.broadcast_to(out[:, :1, :, 8:], (1, 3, 4, 8)), F32)
    # Normalised: the last valid row/column sits at (almost) `scale`.
    assert_close(out[0, -1, 0, 0], math.sin(2 * math.pi * 3 / (3 + 1e-6)), F32)


def test_bad_input():
    with pytest.raises(ValueError, match="dim must be a positive even number"):
        sinusoidal_position_encoding(4, 7)
    with pytest.raises(ValueError, match=re.escape("positions must be an int or have shape [T]")):
        sinusoidal_position_encoding(jnp.zeros((1, 2, 3)), 8)
    with pytest.raises(ValueError, match="must be >= 0"):
        sinusoidal_position_encoding(-1, 8)
    with pytest.raises(ValueError, match="num_pos_feats must be a positive even number"):
        sine_position_encoding_2d((2, 2), num_pos_feats=5)
    with pytest.raises(ValueError, match=re.escape("mask must have shape [B, H, W]")):
        sine_position_encoding_2d(jnp.ones((2, 2), bool))
    with pytest.raises(ValueError, match="mask must be boolean"):
        sine_position_encoding_2d(jnp.ones((1, 2, 2)))
    with pytest.raises(ValueError, match=re.escape("must be (H, W)")):
        sine_position_encoding_2d((2, 2, 2))
