"""Rotary embeddings: complex-number reference, relative-position property, 2D reduction."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common.nn import apply_rope, apply_rope_2d, grid_positions, rope_frequencies
from tests.common.nn.references import normal, ref_rope
from tests.tolerances import F32, F64, assert_close

rope_jit = jax.jit(apply_rope, static_argnames="base")
rope_2d_jit = jax.jit(apply_rope_2d, static_argnames="base")


def test_frequencies_closed_form(x64):
    D = 10
    expected = [10000.0 ** (-2 * i / D) for i in range(D // 2)]
    assert_close(rope_frequencies(D, dtype=jnp.float64), expected, F64)
    assert_close(rope_frequencies(4, base=100.0, dtype=jnp.float64), [1.0, 0.1], F64)
    assert rope_frequencies(8).dtype == jnp.float32


@pytest.mark.parametrize("jit", [False, True])
def test_matches_complex_reference(x64, jit):
    x = normal(0, (2, 6, 3, 8), jnp.float64)
    positions = jnp.array([[0, 1, 2, 3, 4, 5], [7, 3, 100, 0, 2, 9]])
    fn = rope_jit if jit else apply_rope
    out = fn(x, positions, base=500.0)
    assert out.dtype == jnp.float64
    assert_close(out, ref_rope(x, positions, base=500.0), F64)


def test_float32_and_shared_positions():
    x = normal(1, (2, 5, 2, 4))
    out = rope_jit(x, jnp.arange(5))  # [T] positions shared by the batch
    assert out.dtype == jnp.float32
    assert_close(out, ref_rope(x, np.arange(5)), F32)
    assert_close(out, rope_jit(x, jnp.tile(jnp.arange(5)[None], (2, 1))), F32)
    # Float positions are allowed (e.g. interpolated positions).
    assert_close(rope_jit(x, jnp.arange(5) * 0.5), ref_rope(x, np.arange(5) * 0.5), F32)


def test_position_zero_is_identity_and_norm_is_preserved():
    x = normal(2, (1, 4, 2, 8))
    assert_close(apply_rope(x, jnp.zeros(4, jnp.int32)), x, F32)
    out = rope_jit(x, jnp.array([3, 50, 999, 12345]))
    assert_close(jnp.linalg.norm(out, axis=-1), jnp.linalg.norm(x, axis=-1), F32)


def test_scores_depend_only_on_relative_position(x64):
    # The same q and k at every position: the score matrix must be Toeplitz.
    D, T = 8, 7
    q = jnp.broadcast_to(normal(3, (D,), jnp.float64), (1, T, 1, D))
    k = jnp.broadcast_to(normal(4, (D,), jnp.float64), (1, T, 1, D))
    pos = jnp.arange(T)
    scores = np.einsum("td,sd->ts", rope_jit(q, pos)[0, :, 0], rope_jit(k, pos)[0, :, 0])
    for m in range(T):
        for n in range(T):
            assert_close(scores[m, n], scores[m - n if m >= n else 0, 0 if m >= n else n - m], F64)
    # A common shift of both positions leaves the scores unchanged.
    shifted = np.einsum("td,sd->ts", rope_jit(q, pos + 37)[0, :, 0],
                        rope_jit(k, pos + 37)[0, :, 0])
    assert_close(shifted, scores, F64)
    # ... and rope does change them (the property is not vacuous).
    plain = np.einsum("td,sd->ts", q[0, :, 0], k[0, :, 0])
    assert not np.allclose(plain, scores)


def test_2d_reduces_to_1d_on_each_half():
    x = normal(5, (2, 6, 2, 8))
    rows, cols = grid_positions(2, 3)
    out = rope_2d_jit(x, rows, cols)
    assert_close(out[..., :4], apply_rope(x[..., :4], rows), F32)
    assert_close(out[..., 4:], apply_rope(x[..., 4:], cols), F32)
    # Batched ids give the same result as shared ids.
    assert_close(apply_rope_2d(x, jnp.tile(rows[None], (2, 1)), cols), out, F32)


def test_2d_scores_depend_only_on_row_and_column_offsets(x64):
    D = 8
    q = normal(6, (D,), jnp.float64)
    k = normal(7, (D,), jnp.float64)

    def score(r, c, r2, c2):
        qr = apply_rope_2d(q.reshape(1, 1, 1, D), jnp.array([r]), jnp.array([c]))
        kr = apply_rope_2d(k.reshape(1, 1, 1, D), jnp.array([r2]), jnp.array([c2]))
        return float(jnp.sum(qr * kr))

    base = score(1, 2, 4, 0)
    assert_close(score(11, 7, 14, 5), base, F64)  # shift (10, 5) of both
    assert not np.isclose(score(1, 2, 4, 1), base)  # different column offset
    assert not np.isclose(score(2, 2, 4, 0), base)  # different row offset


def test_grid_positions():
    rows, cols = grid_positions(2, 3)
    assert rows.tolist() == [0, 0, 0, 1, 1, 1]
    assert cols.tolist() == [0, 1, 2, 0, 1, 2]
    assert grid_positions(0, 4)[0].shape == (0,)


def test_bad_input():
    x = jnp.ones((1, 3, 2, 6))
    with pytest.raises(ValueError, match="head_dim must be a positive even number"):
        rope_frequencies(5)
    with pytest.raises(ValueError, match="x head dim D must be even"):
        apply_rope(jnp.ones((1, 3, 2, 5)), jnp.arange(3))
    with pytest.raises(ValueError, match=re.escape("x must have shape [B, T, H, D]")):
        apply_rope(jnp.ones((3, 2, 6)), jnp.arange(3))
    with pytest.raises(ValueError, match=re.escape("positions must have shape [B, T] = (1, 3)")):
        apply_rope(x, jnp.arange(4))
    with pytest.raises(ValueError, match=re.escape("positions must have shape [B, T]")):
        apply_rope(x, jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="divisible by 4 for 2D rope"):
        apply_rope_2d(x, jnp.arange(3), jnp.arange(3))
    with pytest.raises(ValueError, match=re.escape("cols must have shape [B, T]")):
        apply_rope_2d(jnp.ones((1, 3, 2, 8)), jnp.arange(3), jnp.arange(2))
    with pytest.raises(ValueError, match=re.escape("x must have shape [B, T, H, D]")):
        rope_jit(jnp.ones((3, 2, 6)), jnp.arange(3))
