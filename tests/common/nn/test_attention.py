"""Attention against a float64 numpy reference with explicit loops and masks."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common.nn import (
    MultiHeadAttention,
    causal_mask,
    combine_masks,
    dot_product_attention,
    padding_mask,
    segment_mask,
)
from tests.common.nn.references import (
    bernoulli,
    jit_call,
    make,
    normal,
    random_qkv,
    ref_attention,
    ref_mha,
    rngs,
)
from tests.tolerances import F32, F64, assert_close

# One jitted entry point: a jit compiles each configuration once, while eager calls
# compile every primitive separately, which dominates the runtime of small tests.
attn = jax.jit(dot_product_attention,
               static_argnames=("scale", "dropout_rate", "implementation"))

# ----------------------------------------------------------------------------- masks


def test_mask_builders_match_explicit_tables():
    assert_close(causal_mask(3)[0, 0], np.tril(np.ones((3, 3), bool)))
    assert causal_mask(2, 4).shape == (1, 1, 2, 4)
    # offset = S - T: queries are the last T of S positions.
    assert_close(causal_mask(2, 4, offset=2)[0, 0], np.array([[1, 1, 1, 0], [1, 1, 1, 1]], bool))
    valid = jnp.array([[True, False, True], [False, False, False]])
    pm = padding_mask(valid)
    assert pm.shape == (2, 1, 1, 3)
    assert_close(pm[:, 0, 0], valid)
    ids = jnp.array([[0, 0, 1, 1, 1]])
    expected = np.array([[a == b for b in ids[0]] for a in ids[0]])
    assert_close(segment_mask(ids)[0, 0], expected)
    kv_ids = jnp.array([[1, 0]])
    assert_close(segment_mask(ids, kv_ids)[0, 0],
                 np.array([[a == b for b in kv_ids[0]] for a in ids[0]]))


def test_combine_masks():
    assert combine_masks() is None
    assert combine_masks(None, None) is None
    c = causal_mask(3)
    assert combine_masks(None, c) is c
    pm = padding_mask(jnp.array([[True, True, False], [True, False, False]]))
    m = combine_masks(c, None, pm)
    assert m.shape == (2, 1, 3, 3)
    assert_close(m, np.logical_and(np.asarray(c), np.asarray(pm)))


def test_mask_bad_input():
    with pytest.raises(ValueError, match=re.escape("kv_valid must have shape [B, S]")):
        padding_mask(jnp.ones((3,), bool))
    with pytest.raises(ValueError, match="kv_valid must be a boolean"):
        padding_mask(jnp.ones((1, 3), jnp.int32))
    with pytest.raises(ValueError, match=re.escape("q_segment_ids must have shape [B, T]")):
        segment_mask(jnp.zeros((3,), jnp.int32))
    with pytest.raises(ValueError, match="kv_segment_ids must have shape"):
        segment_mask(jnp.zeros((2, 3), jnp.int32), jnp.zeros((1, 3), jnp.int32))
    with pytest.raises(ValueError, match=re.escape("masks[1] must have shape")):
        combine_masks(causal_mask(2), jnp.ones((2, 2), bool))
    with pytest.raises(ValueError, match=re.escape("masks[0] must be a boolean")):
        combine_masks(jnp.ones((1, 1, 2, 2)))
    with pytest.raises(ValueError, match=re.escape("masks must broadcast together")):
        combine_masks(causal_mask(3), causal_mask(2))
    with pytest.raises(ValueError, match="causal_mask needs"):
        causal_mask(-1)


# ----------------------------------------------------------------------------- attention


def _random_mask(seed, B, H, T, S):
    mask = bernoulli(seed, 0.6, (B, H, T, S))
    return mask.at[0, 1, 2].set(False)  # one fully masked row


@pytest.mark.parametrize("implementation", ["xla", "einsum"])
@pytest.mark.parametrize("jit", [False, True])
def test_matches_reference_with_mask_and_bias(implementation, jit):
    q, k, v = random_qkv(0)
    mask = _random_mask(1, 2, 4, 5, 7)
    bias = normal(2, (1, 4, 5, 7))
    fn = lambda q, k, v, m, b: dot_product_attention(q, k, v, mask=m, bias=b, scale=0.3,
                                                     implementation=implementation)
    fn = jax.jit(fn) if jit else fn
    out = fn(q, k, v, mask, bias)
    assert out.shape == (2, 5, 4, 8) and out.dtype == jnp.float32
    assert_close(out, ref_attention(q, k, v, mask, bias, scale=0.3), F32)
    np.testing.assert_array_equal(np.asarray(out[0, 2, 1]), 0.0)


def test_float64_uses_full_precision(x64):
    q, k, v = random_qkv(1, dtype=jnp.float64)
    mask = _random_mask(2, 2, 1, 5, 7)
    out = attn(q, k, v, mask=mask)
    assert out.dtype == jnp.float64
    assert_close(out, ref_attention(q, k, v, mask), F64)


def test_backends_agree():
    q, k, v = random_qkv(3, H=6, K=3)
    mask = causal_mask(5, 7, offset=2)
    a = attn(q, k, v, mask=mask, implementation="xla")
    b = attn(q, k, v, mask=mask, implementation="einsum")
    assert_close(a, b, F32)


def test_no_mask_and_broadcast_masks():
    q, k, v = random_qkv(4)
    assert_close(attn(q, k, v), ref_attention(q, k, v), F32)
    # Mask with singleton batch and head dims, and a per-head mask.
    m1 = causal_mask(5, 7)
    assert_close(attn(q, k, v, mask=m1), ref_attention(q, k, v, m1), F32)
    m2 = bernoulli(5, 0.7, (1, 4, 1, 7))
    assert_close(attn(q, k, v, mask=m2), ref_attention(q, k, v, m2), F32)


def test_padding_equals_truncated_keys():
    q, k, v = random_qkv(6, B=1, S=7)
    valid = jnp.arange(7)[None] < 4
    out = attn(q, k, v, mask=padding_mask(valid))
    short = attn(q, k[:, :4], v[:, :4])
    assert_close(out, short, F32)


def test_causal_equals_prefix_attention():
    q, k, v = random_qkv(7, T=7, S=7)
    out = attn(q, k, v, mask=causal_mask(7))
    for t in range(7):
        prefix = ref_attention(q[:, t : t + 1], k[:, : t + 1], v[:, : t + 1])
        assert_close(out[:, t : t + 1], prefix, F32)


def test_packed_segments_equal_separate_sequences():
    # Two sequences of lengths 3 and 4 packed into one row of 7, each causal.
    q, k, v = random_qkv(8, B=1, T=7, S=7)
    ids = jnp.array([[0, 0, 0, 1, 1, 1, 1]])
    mask = combine_masks(segment_mask(ids), causal_mask(7))
    packed = attn(q, k, v, mask=mask)
    first = attn(q[:, :3], k[:, :3], v[:, :3], mask=causal_mask(3))
    second = attn(q[:, 3:], k[:, 3:], v[:, 3:], mask=causal_mask(4))
    assert_close(packed, jnp.concatenate([first, second], axis=1), F32)


@pytest.mark.parametrize("implementation", ["xla", "einsum"])
def test_gqa_equals_mha_with_repeated_kv_heads(implementation):
    q, k, v = random_qkv(9, H=6, K=2)
    mask = causal_mask(5, 7)
    gqa = attn(q, k, v, mask=mask, implementation=implementation)
    k_rep, v_rep = jnp.repeat(k, 3, axis=2), jnp.repeat(v, 3, axis=2)  # head h -> kv h // 3
    mha = attn(q, k_rep, v_rep, mask=mask, implementation=implementation)
    assert_close(gqa, mha, F32)
    # Multi-query attention (one kv head) too.
    mqa = attn(q, k[:, :, :1], v[:, :, :1], implementation=implementation)
    assert_close(mqa, ref_attention(q, k[:, :, :1], v[:, :, :1]), F32)


@pytest.mark.parametrize("implementation", ["xla", "einsum"])
def test_fully_masked_rows_are_zero_with_finite_gradients(implementation):
    q, k, v = random_qkv(10, B=1, T=3, S=4)
    valid = jnp.zeros((1, 4), bool)  # every key padded
    mask = padding_mask(valid)

    def loss(q, k, v):
        out = attn(q, k, v, mask=mask, implementation=implementation)
        return jnp.sum(out**2), out

    value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
    (value, out), grads = value_and_grad(q, k, v)
    np.testing.assert_array_equal(np.asarray(out), 0.0)
    assert float(value) == 0.0
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g)))
    # Also a single fully masked row among valid ones: only that row is zero.
    row_mask = jnp.ones((1, 1, 3, 4), bool).at[0, 0, 1].set(False)
    out = attn(q, k, v, mask=row_mask, implementation=implementation)
    np.testing.assert_array_equal(np.asarray(out[:, 1]), 0.0)
    assert np.all(np.abs(np.asarray(out[:, 0])) > 0)


@pytest.mark.parametrize("implementation", ["xla", "einsum"])
def test_empty_queries_or_keys(implementation):
    q, k, v = random_qkv(15, T=0, S=7)
    assert attn(q, k, v, implementation=implementation).shape == (2, 0, 4, 8)
    q, k, v = random_qkv(15, T=5, S=0)
    out = attn(q, k, v, mask=causal_mask(5, 0), implementation=implementation)
    np.testing.assert_array_equal(np.asarray(out), np.zeros((2, 5, 4, 8)))  # nothing to attend


def test_single_query_and_single_key():
    q, k, v = random_qkv(11, T=1, S=1)
    out = attn(q, k, v)
    assert_close(out, jnp.repeat(v, 2, axis=2), F32)  # softmax over one key is 1


def test_attention_dropout():
    # With v = identity over keys, the output rows are the (dropped) attention weights.
    B, T, S, H = 1, 4, 8, 2
    q = normal(12, (B, T, H, S))
    k = normal(13, (B, S, H, S))
    v = jnp.broadcast_to(jnp.eye(S)[None, :, None, :], (B, S, H, S))
    rate = 0.5
    probs = attn(q, k, v)
    key = lambda seed: jax.random.key(seed, impl="rbg")  # compiles faster than threefry
    dropped = attn(q, k, v, dropout_rate=rate, dropout_key=key(0))
    again = attn(q, k, v, dropout_rate=rate, dropout_key=key(0))
    other = attn(q, k, v, dropout_rate=rate, dropout_key=key(1))
    np.testing.assert_array_equal(np.asarray(dropped), np.asarray(again))
    assert not np.allclose(np.asarray(dropped), np.asarray(other))
    kept = np.asarray(dropped) != 0
    assert 0.2 < kept.mean() < 0.8
    assert_close(np.asarray(dropped)[kept], np.asarray(probs)[kept] / (1 - rate), F32)


def test_attention_bad_input():
    q, k, v = random_qkv(14)
    with pytest.raises(ValueError, match=re.escape("q must have shape [B, T, H, D]")):
        dot_product_attention(q[0], k, v)
    with pytest.raises(ValueError, match=re.escape("k must have shape [B, S, H_kv, D]")):
        dot_product_attention(q, k[..., :4], v)
    with pytest.raises(ValueError, match=re.escape("k must have shape [B, S, H_kv, D]")):
        dot_product_attention(q, k[0], v)
    with pytest.raises(ValueError, match=re.escape("v must have shape [B, S, H_kv, D]")):
        dot_product_attention(q, k, v[:, :3])
    with pytest.raises(ValueError, match="must be divisible by the number of key/value heads"):
        dot_product_attention(q[:, :, :3], k, v)
    with pytest.raises(ValueError, match="q, k and v must share one dtype"):
        dot_product_attention(q.astype(jnp.bfloat16), k, v)
    with pytest.raises(ValueError, match="mask must be a boolean"):
        dot_product_attention(q, k, v, mask=jnp.ones((1, 1, 5, 7)))
    with pytest.raises(ValueError, match=re.escape("mask must be broadcastable to [B, H, T, S]")):
        dot_product_attention(q, k, v, mask=jnp.ones((1, 1, 5, 6), bool))
    with pytest.raises(ValueError, match=re.escape("mask must have shape [B, H, T, S]")):
        dot_product_attention(q, k, v, mask=jnp.ones((5, 7), bool))
    with pytest.raises(ValueError, match=re.escape("bias must be broadcastable")):
        dot_product_attention(q, k, v, bias=jnp.ones((3, 1, 5, 7)))
    with pytest.raises(ValueError, match="dropout_key is required"):
        dot_product_attention(q, k, v, dropout_rate=0.1)
    with pytest.raises(ValueError, match="has no attention dropout"):
        dot_product_attention(q, k, v, dropout_rate=0.1, dropout_key=jax.random.key(0),
                              implementation="xla")
    with pytest.raises(ValueError, match="implementation must be"):
        dot_product_attention(q, k, v, implementation="flash")
    with pytest.raises(ValueError, match="dropout_rate must be in"):
        dot_product_attention(q, k, v, dropout_rate=1.0, dropout_key=jax.random.key(0))
    # Checks happen at trace time under jit as well.
    with pytest.raises(ValueError, match=re.escape("q must have shape [B, T, H, D]")):
        attn(q[0], k, v)


# ----------------------------------------------------------------------------- module


@pytest.mark.parametrize("rope", [None, "1d"])
def test_mha_self_attention_matches_reference(rope):
    mha = make(MultiHeadAttention, 16, 4, num_kv_heads=2, head_dim=6, rope=rope, seed=1)
    x = normal(1, (2, 5, 16))
    positions = jnp.array([[3, 4, 5, 6, 7], [0, 2, 4, 6, 8]])
    mask = combine_masks(causal_mask(5), padding_mask(jnp.array([[1, 1, 1, 1, 0]] * 2, bool)))
    out = jit_call(mha, x, mask=mask, q_positions=positions)
    assert out.shape == (2, 5, 16)
    assert_close(out, ref_mha(mha, x, mask=mask, q_positions=positions), F32)


def test_mha_cross_attention_with_separate_values_matches_reference():
    mha = make(MultiHeadAttention, 12, 3, kv_features=10, out_features=5, qkv_bias=False,
               seed=2)
    x_q = normal(3, (2, 4, 12))
    x_kv = normal(4, (2, 6, 10))
    x_v = normal(5, (2, 6, 10))
    mask = padding_mask(jnp.arange(6)[None].repeat(2, 0) < jnp.array([[6], [2]]))
    out = jit_call(mha, x_q, x_kv, x_v=x_v, mask=mask)
    assert out.shape == (2, 4, 5)
    assert_close(out, ref_mha(mha, x_q, x_kv, x_v, mask=mask), F32)


def test_mha_float64_and_jit_through_split_merge(x64):
    mha = make(MultiHeadAttention, 8, 2, rope="1d", param_dtype=jnp.float64, seed=3)
    x = normal(6, (1, 5, 8), jnp.float64)
    graphdef, state = nnx.split(mha)

    @jax.jit
    def apply(state, x):
        return nnx.merge(graphdef, state)(x, mask=causal_mask(5))

    out = apply(state, x)
    assert out.dtype == jnp.float64
    assert_close(out, ref_mha(mha, x, mask=causal_mask(5)), F64)


def test_mha_packed_rope_segments_equal_separate_runs():
    # Packed sequences with rope positions restarting per segment.
    mha = make(MultiHeadAttention, 16, 4, num_kv_heads=1, rope="1d", seed=7)
    x = normal(8, (1, 7, 16))
    ids = jnp.array([[0, 0, 0, 1, 1, 1, 1]])
    positions = jnp.array([[0, 1, 2, 0, 1, 2, 3]])
    mask = combine_masks(segment_mask(ids), causal_mask(7))
    packed = jit_call(mha, x, mask=mask, q_positions=positions)
    first = jit_call(mha, x[:, :3], mask=causal_mask(3))
    second = jit_call(mha, x[:, 3:], mask=causal_mask(4))
    assert_close(packed, jnp.concatenate([first, second], axis=1), F32)


def test_mha_2d_rope_is_translation_invariant():
    mha = MultiHeadAttention(16, 2, rope="2d", rngs=rngs(9))  # default initialisation
    x = normal(10, (1, 6, 16))
    grid = jnp.array([[r, c] for r in range(2) for c in range(3)])
    a = jit_call(mha, x, q_positions=grid)
    b = jit_call(mha, x, q_positions=grid + jnp.array([[5, 11]]))
    c = jit_call(mha, x, q_positions=grid[::-1])  # a different geometry changes the result
    assert_close(a, b, F32)
    assert not np.allclose(np.asarray(a), np.asarray(c), atol=1e-4)


def test_mha_dropout():
    mha = make(MultiHeadAttention, 8, 2, attention_dropout_rate=0.5)
    x = normal(11, (2, 6, 8))
    det = jit_call(mha, x)
    assert_close(det, ref_mha(mha, x), F32)  # deterministic by default
    train = nnx.jit(lambda m, x, r: m(x, deterministic=False, rngs=r))
    a = train(mha, x, rngs(0, dropout=1))
    b = train(mha, x, rngs(0, dropout=1))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(a), np.asarray(det))
    # Without a call-time rngs the module's own dropout stream is used and advances.
    own = nnx.jit(lambda m, x: m(x, deterministic=False))
    c, d = own(mha, x), own(mha, x)
    assert not np.allclose(np.asarray(c), np.asarray(det))
    assert not np.allclose(np.asarray(c), np.asarray(d))


def test_mha_bad_input():
    with pytest.raises(ValueError, match="num_heads=6 must be divisible by num_kv_heads=4"):
        MultiHeadAttention(12, 6, num_kv_heads=4, rngs=rngs(0))
    with pytest.raises(ValueError, match="in_features=10 must be divisible by num_heads=4"):
        MultiHeadAttention(10, 4, rngs=rngs(0))
    with pytest.raises(ValueError, match="head_dim must be even for 1D rope"):
        MultiHeadAttention(12, 4, rope="1d", rngs=rngs(0))
    with pytest.raises(ValueError, match="head_dim must be divisible by 4 for 2D rope"):
        MultiHeadAttention(12, 2, rope="2d", rngs=rngs(0))
    with pytest.raises(ValueError, match="rope must be"):
        MultiHeadAttention(12, 2, rope="3d", rngs=rngs(0))
    mha = make(MultiHeadAttention, 8, 2, rope="1d")
    x = jnp.ones((2, 5, 8))
    with pytest.raises(ValueError, match=re.escape("x_q must have shape [B, T, 8]")):
        mha(jnp.ones((2, 5, 7)))
    with pytest.raises(ValueError, match=re.escape("x_q must have shape [B, T, 8]")):
        mha(jnp.ones((5, 8)))
    with pytest.raises(ValueError, match=re.escape("x_kv must have shape [2, S, 8]")):
        mha(x, jnp.ones((3, 4, 8)))
    with pytest.raises(ValueError, match="x_v must have the shape of x_kv"):
        mha(x, jnp.ones((2, 4, 8)), x_v=jnp.ones((2, 3, 8)))
    with pytest.raises(ValueError, match=re.escape("q_positions must have shape [B, 5] or [5]")):
        mha(x, q_positions=jnp.arange(4))
    mha2d = make(MultiHeadAttention, 8, 2, rope="2d")
    with pytest.raises(ValueError, match="q_positions .* are required for 2D rope"):
        mha2d(x)
    with pytest.raises(ValueError, match=re.escape("q_positions must have shape [B, 5, 2]")):
        mha2d(x, q_positions=jnp.zeros((5, 3), jnp.int32))
