"""MLP and gated MLP against numpy forward passes using the modules' own weights."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common.nn import ACTIVATIONS, MLP, GatedMLP, SwiGLU, get_activation
from tests.common.nn.references import (
    NP_ACTIVATIONS,
    jit_call,
    make,
    normal,
    ref_gated,
    ref_linear,
    ref_mlp,
    rngs,
)
from tests.tolerances import F32, F64, assert_close


@pytest.mark.parametrize("name", sorted(NP_ACTIVATIONS))
def test_activations_match_numpy(name):
    x = np.linspace(-4.0, 4.0, 17)
    assert_close(get_activation(name)(jnp.asarray(x)), NP_ACTIVATIONS[name](x), F32)


def test_mlp_matches_reference(x64):
    mlp = make(MLP, [5, 7, 6, 3], activation="gelu", param_dtype=jnp.float64)
    x = normal(1, (2, 4, 5), jnp.float64)
    out = jit_call(mlp, x)
    assert out.shape == (2, 4, 3) and out.dtype == jnp.float64
    assert_close(out, ref_mlp(mlp, x, NP_ACTIVATIONS["gelu"]), F64)


@pytest.mark.parametrize("jit", [False, True])
def test_mlp_final_activation_and_callable(jit):
    mlp = make(MLP, [4, 8, 3], activation=jnp.tanh, activate_final=True, use_bias=False, seed=2)
    assert mlp.layers[0].bias is None
    x = normal(3, (6, 4))
    out = jit_call(mlp, x) if jit else mlp(x)
    assert_close(out, ref_mlp(mlp, x, np.tanh, activate_final=True), F32)
    assert np.all(np.abs(np.asarray(out)) <= 1.0)


def test_mlp_single_layer_is_linear():
    mlp = MLP([3, 2], activation="relu", rngs=rngs(4))  # default initialisation
    x = normal(5, (4, 3))
    assert_close(mlp(x), ref_linear(x, mlp.layers[0]), F32)  # no activation on the output


def test_mlp_dropout():
    mlp = make(MLP, [4, 64, 4], dropout_rate=0.5, seed=6)
    x = normal(7, (3, 4))
    det = jit_call(mlp, x)
    assert_close(det, ref_mlp(mlp, x, NP_ACTIVATIONS["relu"]), F32)
    train = nnx.jit(lambda m, x, r: m(x, deterministic=False, rngs=r))
    a = train(mlp, x, rngs(0, dropout=1))
    b = train(mlp, x, rngs(0, dropout=1))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(a), np.asarray(det))
    own = nnx.jit(lambda m, x: m(x, deterministic=False))  # the module's own stream
    assert not np.allclose(np.asarray(own(mlp, x)), np.asarray(det))


@pytest.mark.parametrize("activation", ["silu", "gelu"])
def test_gated_mlp_matches_reference(x64, activation):
    ffn = make(GatedMLP, 6, 10, 4, activation=activation, use_bias=True,
               param_dtype=jnp.float64, seed=8)
    x = normal(9, (2, 3, 6), jnp.float64)
    out = jit_call(ffn, x)
    assert out.shape == (2, 3, 4)
    assert_close(out, ref_gated(ffn, x, NP_ACTIVATIONS[activation]), F64)


def test_swiglu_defaults():
    ffn = SwiGLU(6, 12, rngs=rngs(10))  # default initialisation
    assert isinstance(ffn, GatedMLP)
    assert ffn.gate_proj.bias is None  # LLaMA-style: no biases
    x = normal(11, (3, 6))
    assert_close(ffn(x), ref_gated(ffn, x, NP_ACTIVATIONS["silu"]), F32)


def test_split_merge_jit_matches_eager():
    mlp = make(MLP, [4, 8, 2], activation="silu", seed=12)
    graphdef, state = nnx.split(mlp)
    x = normal(13, (5, 4))
    out = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, x)
    assert_close(out, mlp(x), F32)


def test_bad_input():
    with pytest.raises(ValueError, match="unknown activation 'relu6'"):
        get_activation("relu6")
    assert "gelu" in ACTIVATIONS
    with pytest.raises(ValueError, match="features must list at least 2"):
        MLP([4], rngs=rngs(0))
    with pytest.raises(ValueError, match="features must list at least 2"):
        MLP([4, 0, 2], rngs=rngs(0))
    with pytest.raises(ValueError, match="dropout_rate must be in"):
        MLP([4, 2], dropout_rate=1.5, rngs=rngs(0))
    with pytest.raises(ValueError, match="must be positive"):
        GatedMLP(4, 0, rngs=rngs(0))
    mlp = make(MLP, [4, 2])
    with pytest.raises(ValueError, match=re.escape("x must have shape [..., 4]")):
        mlp(jnp.ones((3, 5)))
    with pytest.raises(ValueError, match=re.escape("x must have shape [..., 6]")):
        make(SwiGLU, 6, 8)(jnp.ones((3, 5)))
