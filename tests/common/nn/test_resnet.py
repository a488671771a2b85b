"""ResNet: pyramid shapes and strides, the three norms against their formulas, a hand
parameter count, and bad input."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common.nn import (
    FrozenBatchNorm,
    FrozenStat,
    ResNet,
    ResNetConfig,
    apply_conv_norm,
    group_count,
    make_conv_norm,
)
from tests.common.nn.references import rngs
from tests.tolerances import F32, assert_close

SMALL = dict(stem_channels=4, stem_kernel=3, stem_pool=False, channels=(4, 8), blocks=(1, 1),
             strides=(1, 2))


def _count(module, kind):
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(nnx.state(module, kind)))


def test_pyramid_shapes_and_strides():
    cfg = ResNetConfig(stem_channels=4, channels=(4, 8, 8), blocks=(1, 2, 1), strides=(1, 2, 2),
                       norm="groupnorm", norm_groups=2)
    assert cfg.stage_strides == (4, 8, 16) and cfg.stride == 16
    out = jax.eval_shape(lambda x: ResNet(cfg, rngs=nnx.Rngs(0))(x), jnp.zeros((2, 33, 30, 3)))
    assert [f.shape for f in out] == [(2, 9, 8, 4), (2, 5, 4, 8), (2, 3, 2, 8)]
    # The default is ResNet-18: strides 4, 8, 16, 32 and widths 64 ... 512.
    out = jax.eval_shape(lambda x: ResNet(ResNetConfig(), rngs=nnx.Rngs(0))(x),
                         jnp.zeros((1, 64, 64, 3)))
    assert [f.shape for f in out] == [(1, 16, 16, 64), (1, 8, 8, 128), (1, 4, 4, 256),
                                      (1, 2, 2, 512)]


@pytest.mark.parametrize("norm,params,stats", [("groupnorm", 1364, 0), ("batchnorm", 1364, 72),
                                               ("frozen_bn", 1292, 144)])
def test_parameter_count_by_hand(norm, params, stats):
    """Convolutions: stem 3·3·3·4 = 108; block 1 (4→4): 2·(3·3·4·4) = 288; block 2
    (4→8, stride 2): 3·3·4·8 + 3·3·8·8 + 1·1·4·8 = 896; 1292 in all. Norms cover
    4 + (4 + 4) + (8 + 8 + 8) = 36 channels: 72 scale/bias parameters (group and
    batch norm), 72 running statistics (batch norm) or 144 frozen values."""
    model = nnx.eval_shape(lambda: ResNet(ResNetConfig(**SMALL, norm=norm, norm_groups=2),
                                          rngs=nnx.Rngs(0)))
    assert _count(model, nnx.Param) == params
    assert _count(model, nnx.BatchStat) + _count(model, FrozenStat) == stats


def test_frozen_bn_is_not_a_parameter_and_matches_the_formula():
    model = nnx.eval_shape(lambda: ResNet(ResNetConfig(**SMALL, norm="frozen_bn"),
                                          rngs=nnx.Rngs(0)))
    names = [jax.tree_util.keystr(p) for p, _ in
             jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))]
    assert names and all("kernel" in n for n in names)
    assert isinstance(model.stem_norm, FrozenBatchNorm)
    norm = FrozenBatchNorm(3, eps=1e-3)
    rng = np.random.default_rng(0)
    mean, var, scale, bias = rng.normal(size=3), rng.uniform(0.5, 2, 3), *rng.normal(size=(2, 3))
    nnx.update(norm, nnx.State({"mean": jnp.asarray(mean, jnp.float32),
                                "var": jnp.asarray(var, jnp.float32),
                                "scale": jnp.asarray(scale, jnp.float32),
                                "bias": jnp.asarray(bias, jnp.float32)}))
    x = rng.normal(size=(2, 4, 5, 3))
    assert_close(norm(jnp.asarray(x, jnp.float32)),
                 (x - mean) / np.sqrt(var + 1e-3) * scale + bias, F32)


def test_batchnorm_train_and_eval_modes():
    norm = make_conv_norm("batchnorm", 3, momentum=0.9, eps=1e-5, rngs=nnx.Rngs(0))
    x = np.random.default_rng(1).normal(2.0, 3.0, size=(4, 5, 6, 3))
    mu, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
    train = apply_conv_norm(norm, jnp.asarray(x, jnp.float32), deterministic=False)
    assert_close(train, (x - mu) / np.sqrt(var + 1e-5), F32)
    assert_close(norm.mean[...], 0.1 * mu, F32)  # 0.9 · 0 + 0.1 · batch mean
    assert_close(norm.var[...], 0.9 + 0.1 * var, F32)
    evaluated = apply_conv_norm(norm, jnp.asarray(x, jnp.float32), deterministic=True)
    assert_close(evaluated, (x - 0.1 * mu) / np.sqrt(0.9 + 0.1 * var + 1e-5), F32)
    # A whole network: in eval mode each sample is processed alone; in train mode the
    # batch statistics mix samples and the running averages move.
    model = ResNet(ResNetConfig(**SMALL, norm="batchnorm"), rngs=rngs(0))
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)

    @functools.partial(jax.jit, static_argnums=2)
    def run(stats, x, deterministic):
        m = nnx.merge(graphdef, params, stats)
        out = m(x, deterministic=deterministic)[-1]
        return out, nnx.state(m, nnx.BatchStat)

    x = jax.random.normal(jax.random.key(3), (3, 8, 8, 3))
    full, same = run(stats, x, True)
    assert_close(run(stats, x[:1], True)[0], full[:1], F32)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(same),
                                                    jax.tree.leaves(stats), strict=True))
    trained, moved = run(stats, x, False)
    assert not np.allclose(np.asarray(run(stats, x[:1], False)[0]), np.asarray(trained[:1]))
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(moved),
                                                        jax.tree.leaves(stats), strict=True))


def test_group_count_rule():
    assert [group_count(c, 32) for c in (64, 48, 12, 1)] == [32, 16, 4, 1]
    assert make_conv_norm("groupnorm", 12, groups=8, rngs=nnx.Rngs(0)).num_groups == 4


def test_bad_input():
    model = ResNet(ResNetConfig(**SMALL, norm="frozen_bn"), rngs=rngs(0))
    with pytest.raises(ValueError, match=re.escape("x must have shape [B, H, W, 3]")):
        model(jnp.ones((2, 8, 8)))
    with pytest.raises(ValueError, match=re.escape("x must have shape [B, H, W, 3], got shape "
                                                   "(2, 8, 8, 1)")):
        model(jnp.ones((2, 8, 8, 1)))
    with pytest.raises(ValueError, match="norm must be one of"):
        ResNetConfig(norm="layernorm")
    with pytest.raises(ValueError, match="channels, blocks and strides must be non-empty"):
        ResNetConfig(channels=(8, 16), blocks=(1,), strides=(1, 2))
    with pytest.raises(ValueError, match=re.escape("strides[1] must be an integer >= 1")):
        ResNetConfig(channels=(8, 16), blocks=(1, 1), strides=(1, 0))
    with pytest.raises(ValueError, match="conv_impl must be one of"):
        ResNetConfig(conv_impl="fft")
    with pytest.raises(ValueError, match="config must be a ResNetConfig"):
        ResNet(dict(SMALL), rngs=nnx.Rngs(0))
