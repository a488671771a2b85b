"""Score networks: registry, shapes, time conditioning, fixed Fourier basis, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common.registry import UnknownNameError
from generative.models import (
    GaussianFourierEmbedding,
    ScoreMLP,
    ScoreUNet,
    build_score_net,
    init_score_net,
    sinusoidal_embedding,
)
from tests.tolerances import assert_close


def test_registry():
    net = nnx.eval_shape(lambda: build_score_net("mlp", dim=3, rngs=nnx.Rngs(0)))
    assert isinstance(net, ScoreMLP)
    with pytest.raises(UnknownNameError, match="unknown score net 'resnet'"):
        build_score_net("resnet")


@pytest.mark.parametrize("embedding", ["fourier"])
def test_mlp_shapes_and_time_dependence(embedding):
    net = init_score_net("mlp", jax.random.key(0), dim=3, hidden=32, depth=2, embed_dim=16,
                         embedding=embedding)
    assert isinstance(net, ScoreMLP)
    graphdef, params, rest = nnx.split(net, nnx.Param, ...)
    apply = jax.jit(lambda x, t: nnx.merge(graphdef, params, rest)(x, t))
    x = jax.random.normal(jax.random.key(0), (5, 3))
    a = apply(x, jnp.full((5,), 0.1))
    b = apply(x, jnp.full((5,), 0.9))
    assert a.shape == (5, 3)
    assert float(jnp.max(jnp.abs(a - b))) > 1e-4
    # samples are processed independently: one row alone gives the same output
    assert_close(apply(x[:1], jnp.full((1,), 0.1)), a[:1], dict(rtol=1e-5, atol=1e-5))


@pytest.mark.slow  # heavy: runs under pytest -m slow
def test_unet_shapes_odd_sizes_and_jit():
    """5 → 3 → 5: upsampling follows the skip connections' (odd) sizes."""
    net = init_score_net("unet", jax.random.key(0), image_size=5, channels=8,
                         channel_mult=(1, 2), heads=2, groups=4)
    graphdef, params, rest = nnx.split(net, nnx.Param, ...)
    apply = jax.jit(lambda p, x, t: nnx.merge(graphdef, p, rest)(x, t))
    x = jax.random.normal(jax.random.key(1), (2, 5, 5, 1))
    out = apply(params, x, jnp.asarray([0.2, 0.7]))
    assert out.shape == (2, 5, 5, 1)
    # zero-initialised output conv: the untrained net predicts zero noise
    assert_close(out, np.zeros(out.shape))
    # with every parameter perturbed away from its (partly zero) init, t matters
    params = jax.jit(lambda ps: jax.tree.map(
        lambda p: p + 0.05 * jnp.cos(jnp.arange(p.size).reshape(p.shape)), ps))(params)
    a = apply(params, x, jnp.asarray([0.2, 0.7]))
    b = apply(params, x, jnp.asarray([0.9, 0.1]))
    assert float(jnp.max(jnp.abs(a - b))) > 1e-4


def test_fourier_basis_is_not_a_parameter():
    emb = GaussianFourierEmbedding(8, scale=2.0, rngs=nnx.Rngs(0))
    params = nnx.state(emb, nnx.Param)
    assert len(jax.tree.leaves(params)) == 0
    t = jnp.asarray([0.0, 0.25])
    out = emb(t)
    W = np.asarray(emb.W[...])
    ref = np.concatenate([np.sin(2 * np.pi * np.asarray(t)[:, None] * W),
                          np.cos(2 * np.pi * np.asarray(t)[:, None] * W)], axis=-1)
    assert_close(out, ref)


def test_sinusoidal_embedding_by_hand():
    out = sinusoidal_embedding(jnp.asarray([0.5]), 4, scale=10.0)
    p = 5.0
    assert_close(out[0], [np.sin(p), np.cos(p), np.sin(p / 100), np.cos(p / 100)])


def test_bad_inputs():
    net = ScoreMLP(2, hidden=8, depth=1, embed_dim=8, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"x must have shape \[B, 2\]"):
        net(jnp.ones((4, 3)), jnp.ones(4))
    with pytest.raises(ValueError, match=r"t must have shape \[B\] = \(4,\)"):
        net(jnp.ones((4, 2)), jnp.ones(3))
    unet = nnx.eval_shape(lambda: ScoreUNet(1, image_size=8, channels=8, channel_mult=(1,),
                                            heads=2, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"x must have shape \[B, H, W, 1\]"):
        unet(jnp.ones((2, 8, 8)), jnp.ones(2))
    with pytest.raises(ValueError, match="dim must be a positive even number"):
        GaussianFourierEmbedding(7, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="t must have shape"):
        sinusoidal_embedding(jnp.ones((2, 1)), 4)
