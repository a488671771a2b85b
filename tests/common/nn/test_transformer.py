"""Transformer layers against hand-written numpy layers that use the modules' weights."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common.nn import (
    Decoder,
    DecoderLayer,
    Encoder,
    EncoderLayer,
    GatedMLP,
    TransformerConfig,
    causal_mask,
    combine_masks,
    grid_positions,
    make_norm,
    padding_mask,
)
from tests.common.nn.references import (
    NP_ACTIVATIONS,
    jit_call,
    make,
    normal,
    ref_gated,
    ref_mha,
    ref_mlp,
    rngs,
)
from tests.tolerances import F32, F64, assert_close

# ----------------------------------------------------------------------------- references


def ref_norm(norm, x):
    x = np.asarray(x, np.float64)
    scale = np.asarray(norm.scale[...], np.float64)
    if isinstance(norm, nnx.LayerNorm):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + norm.epsilon) * scale + np.asarray(norm.bias[...])
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + norm.epsilon) * scale


def ref_ffn(layer, h, act):
    if isinstance(layer.ffn, GatedMLP):
        return ref_gated(layer.ffn, h, act)
    return ref_mlp(layer.ffn, h, act)


def _add(x, p):
    return np.asarray(x, np.float64) + (0.0 if p is None else np.asarray(p, np.float64))


def _sublayers(layer, x, sublayers):
    """Residual sub-layers in pre-norm or post-norm order."""
    x = np.asarray(x, np.float64)
    for norm, f in zip(layer.norms, sublayers, strict=True):
        x = x + f(ref_norm(norm, x)) if layer.norm_first else ref_norm(norm, x + f(x))
    return x


def ref_encoder_layer(layer, x, act, mask=None, pos=None, positions=None):
    def sa(h):
        qk = _add(h, pos)  # DETR: positions on queries and keys, not on values
        return ref_mha(layer.self_attn, qk, qk, h, mask=mask, q_positions=positions,
                       kv_positions=positions)

    return _sublayers(layer, x, [sa, lambda h: ref_ffn(layer, h, act)])


def ref_decoder_layer(layer, x, act, memory=None, self_mask=None, cross_mask=None,
                      query_pos=None, pos=None, positions=None):
    def sa(h):
        qk = _add(h, query_pos)
        return ref_mha(layer.self_attn, qk, qk, h, mask=self_mask, q_positions=positions,
                       kv_positions=positions)

    def ca(h):
        return ref_mha(layer.cross_attn, _add(h, query_pos), _add(memory, pos), memory,
                       mask=cross_mask)

    subs = [sa, ca] if layer.has_cross_attention else [sa]
    return _sublayers(layer, x, [*subs, lambda h: ref_ffn(layer, h, act)])


# ----------------------------------------------------------------------------- layers

D, H, F = 8, 2, 12


def config(**kwargs):
    return TransformerConfig(d_model=D, num_heads=H, mlp_dim=F, **kwargs)


def build(cls, seed=0, **kwargs):
    """``cls(config(**kwargs))`` with every parameter drawn at random (see ``make``)."""
    return make(lambda kernel_init, rngs: cls(config(kernel_init=kernel_init, **kwargs),
                                              rngs=rngs), seed=seed)


@pytest.mark.parametrize("norm_first,norm", [(False, "layernorm"), (True, "rmsnorm")])
def test_encoder_layer_matches_reference(x64, norm_first, norm):
    layer = build(EncoderLayer, norm_first=norm_first, norm=norm, param_dtype=jnp.float64,
                  seed=1)
    x = normal(2, (2, 5, D), jnp.float64)
    pos = normal(3, (1, 5, D), jnp.float64)
    mask = padding_mask(jnp.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool))
    out = jit_call(layer, x, mask=mask, pos=pos)
    assert out.shape == (2, 5, D) and out.dtype == jnp.float64
    expected = ref_encoder_layer(layer, x, NP_ACTIVATIONS["relu"], mask=mask, pos=pos)
    assert_close(out, expected, F64)
    # pos goes to queries and keys only: different from adding it to the input.
    assert not np.allclose(np.asarray(out), np.asarray(jit_call(layer, x + pos, mask=mask)))


DECODER_CONFIGS = {
    # DETR: post-norm, LayerNorm, ReLU MLP, cross-attention with positional encodings.
    "detr": dict(norm_first=False, norm="layernorm", activation="relu"),
    # Pre-norm with cross-attention into a memory of another width, GQA.
    "prenorm_cross": dict(norm_first=True, norm="layernorm", activation="gelu",
                          memory_features=6, num_kv_heads=1),
    # Causal LM block: pre-norm RMSNorm, SwiGLU, 1D RoPE, no cross-attention.
    "lm": dict(norm_first=True, norm="rmsnorm", mlp="swiglu", activation="silu",
               cross_attention=False, rope="1d", qkv_bias=False, mlp_bias=False),
}


@pytest.mark.parametrize("config", sorted(DECODER_CONFIGS))
def test_decoder_layer_matches_reference(x64, config):
    kwargs = DECODER_CONFIGS[config]
    layer = build(DecoderLayer, param_dtype=jnp.float64, seed=5, **kwargs)
    act = NP_ACTIVATIONS[kwargs["activation"]]
    B, T, S = 2, 4, 6
    x = normal(6, (B, T, D), jnp.float64)
    if kwargs.get("cross_attention", True):
        M = kwargs.get("memory_features", D)
        call = dict(
            memory=normal(7, (B, S, M), jnp.float64),
            query_pos=normal(8, (1, T, D), jnp.float64),
            pos=normal(9, (B, S, M), jnp.float64),
            cross_mask=padding_mask(jnp.arange(S)[None] < jnp.array([[S], [3]])),
        )
    else:
        call = dict(self_mask=causal_mask(T), positions=jnp.array([[0, 1, 2, 3], [5, 6, 7, 8]]))
    memory = call.pop("memory", None)
    out = jit_call(layer, x, memory, **call)
    assert out.shape == (B, T, D)
    assert_close(out, ref_decoder_layer(layer, x, act, memory=memory, **call), F64)


def test_eager_equals_jit_float32():
    layer = build(EncoderLayer, norm_first=True, seed=10)
    x, pos = normal(11, (2, 3, D)), normal(13, (2, 3, D))
    eager = layer(x, pos=pos)
    graphdef, state = nnx.split(layer)
    jitted = jax.jit(lambda s, x, p: nnx.merge(graphdef, s)(x, pos=p))(state, x, pos)
    assert_close(jitted, eager, F32)
    assert_close(eager, ref_encoder_layer(layer, x, NP_ACTIVATIONS["relu"], pos=pos), F32)


def test_layer_dropout():
    layer = build(EncoderLayer, dropout_rate=0.3, seed=14)
    x = normal(15, (2, 5, D))
    det = jit_call(layer, x)
    assert_close(det, ref_encoder_layer(layer, x, NP_ACTIVATIONS["relu"]), F32)
    train = nnx.jit(lambda m, x, r: m(x, deterministic=False, rngs=r))
    a = train(layer, x, rngs(0, dropout=1))
    b = train(layer, x, rngs(0, dropout=1))
    c = train(layer, x, rngs(0, dropout=2))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(a), np.asarray(det))
    assert not np.allclose(np.asarray(a), np.asarray(c))


# ----------------------------------------------------------------------------- stacks


def test_encoder_stack_equals_layers_then_final_norm(x64):
    enc = build(Encoder, num_layers=2, norm_first=True, rope="2d", param_dtype=jnp.float64,
                seed=17)
    assert enc.final_norm is not None  # default on for pre-norm
    rows, cols = grid_positions(2, 3)
    positions = jnp.stack([rows, cols], axis=-1)  # [6, 2]
    x = normal(18, (1, 6, D), jnp.float64)
    out = jit_call(enc, x, positions=positions)
    h = x
    for layer in enc.layers:
        h = ref_encoder_layer(layer, h, NP_ACTIVATIONS["relu"], positions=positions)
    assert_close(out, ref_norm(enc.final_norm, h), F64)
    assert Encoder(config(), rngs=rngs(0)).final_norm is None  # post-norm default
    assert Encoder(config(num_layers=0), rngs=rngs(0))(x) is x


def test_decoder_stack_intermediate_outputs(x64):
    # DETR: post-norm layers and a final norm applied to every intermediate output.
    dec = build(Decoder, num_layers=2, final_norm=True, param_dtype=jnp.float64, seed=20)
    x, memory = normal(21, (2, 4, D), jnp.float64), normal(22, (2, 6, D), jnp.float64)
    query_pos, pos = normal(23, (1, 4, D), jnp.float64), normal(24, (2, 6, D), jnp.float64)
    inter = jit_call(dec, x, memory, query_pos=query_pos, pos=pos, return_intermediate=True)
    assert inter.shape == (2, 2, 4, D)
    h = x
    for i, layer in enumerate(dec.layers):
        h = ref_decoder_layer(layer, h, NP_ACTIVATIONS["relu"], memory=memory,
                              query_pos=query_pos, pos=pos)
        assert_close(inter[i], ref_norm(dec.final_norm, h), F64)
    last = jit_call(dec, x, memory, query_pos=query_pos, pos=pos)
    assert_close(last, inter[-1], F64)


def test_causal_lm_decoder_does_not_look_ahead():
    lm = Decoder(config(num_layers=2, cross_attention=False, norm_first=True, norm="rmsnorm",
                        mlp="swiglu", activation="silu", rope="1d", num_kv_heads=1),
                 rngs=rngs(25))  # default initialisation
    x = normal(26, (1, 6, D))
    changed = x.at[:, 4:].set(normal(27, (1, 2, D)))
    run = nnx.jit(lambda m, x: m(x, self_mask=causal_mask(6)))
    a, b = run(lm, x), run(lm, changed)
    assert_close(a[:, :4], b[:, :4], F32)
    assert not np.allclose(np.asarray(a[:, 4:]), np.asarray(b[:, 4:]))


# ----------------------------------------------------------------------------- errors


def test_bad_input():
    with pytest.raises(ValueError, match="norm must be 'layernorm' or 'rmsnorm'"):
        make_norm("batchnorm", 4, rngs=rngs(0))
    with pytest.raises(ValueError, match="mlp must be 'mlp' or 'swiglu'"):
        config(mlp="moe")
    with pytest.raises(ValueError, match="norm must be 'layernorm' or 'rmsnorm'"):
        config(norm="batchnorm")
    with pytest.raises(ValueError, match="num_heads=2 must be divisible by num_kv_heads=3"):
        config(num_kv_heads=3)
    with pytest.raises(ValueError, match=re.escape("dropout_rate must lie in [0, 1)")):
        config(dropout_rate=-0.1)
    with pytest.raises(ValueError, match="num_layers must be an integer >= 0"):
        config(num_layers=-1)
    with pytest.raises(ValueError, match="d_model must be an integer"):
        TransformerConfig(d_model=8.0, num_heads=H, mlp_dim=F)
    with pytest.raises(ValueError, match="rope must be None, '1d' or '2d'"):
        config(rope="3d")
    with pytest.raises(ValueError, match="config must be a TransformerConfig"):
        EncoderLayer(dict(d_model=D), rngs=rngs(0))
    enc = build(EncoderLayer)
    x = jnp.ones((2, 5, D))
    with pytest.raises(ValueError, match=re.escape(f"x must have shape [B, T, {D}]")):
        enc(jnp.ones((2, 5, D + 1)))
    with pytest.raises(ValueError, match=re.escape(f"pos must have shape [B, T, D] = (2, 5, {D})")):
        enc(x, pos=jnp.ones((5, D)))
    dec = build(DecoderLayer)
    with pytest.raises(ValueError, match="memory .* is required"):
        dec(x)
    with pytest.raises(ValueError, match=re.escape(f"memory must have shape [B, S, {D}]")):
        dec(x, jnp.ones((3, 4, D)))
    with pytest.raises(ValueError, match=re.escape("query_pos must have shape [B, T, D]")):
        dec(x, jnp.ones((2, 4, D)), query_pos=jnp.ones((2, 4, D)))
    with pytest.raises(ValueError, match=re.escape("pos must have shape [B, T, D] = (2, 4,")):
        dec(x, jnp.ones((2, 4, D)), pos=jnp.ones((2, 5, D)))
    lm = build(DecoderLayer, cross_attention=False)
    with pytest.raises(ValueError, match="need cross_attention=True"):
        lm(x, jnp.ones((2, 4, D)))
    with pytest.raises(ValueError, match="return_intermediate needs num_layers >= 1"):
        Decoder(config(num_layers=0), rngs=rngs(0))(x, return_intermediate=True)
    mask = combine_masks(causal_mask(5), padding_mask(jnp.ones((3, 5), bool)))
    with pytest.raises(ValueError, match=re.escape("mask must be broadcastable to [B, H, T, S]")):
        enc(x, mask=mask)
