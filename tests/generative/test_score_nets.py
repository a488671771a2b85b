"""The shared suite every registered score network runs.

Parametrised over ``SCORE_NETS.names()`` (collected when this module is imported). A
network's constructor arguments are model-specific, so each entry needs a small
configuration in :data:`SMALL_CONFIGS` (constructor kwargs and an input shape); an
entry registered without one fails with a message saying so, instead of going
untested. :func:`check_score_net` is a plain function ``check(net, x_shape)`` that
other tests can call on a network they build themselves.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from generative.models import SCORE_NETS, init_score_net
from tests.tolerances import F32_LOOSE, assert_close

#: name -> (constructor kwargs without ``rngs``, input shape ``[B, ...]``), kept tiny.
SMALL_CONFIGS = {
    "mlp": (dict(dim=3, hidden=16, depth=1, embed_dim=8), (4, 3)),
    "unet": (dict(image_size=4, channels=8, channel_mult=(1,), heads=2, groups=4),
             (2, 4, 4, 1)),
}


def check_score_net(net, x_shape):
    """``(x [B, ...], t [B]) -> [B, ...]``: output of x's shape and dtype, finite, jitted =
    eager, each sample processed independently, and a bad ``t`` refused by name."""
    x = jax.random.normal(jax.random.key(1), x_shape)
    t = jnp.linspace(0.1, 0.9, x_shape[0])
    graphdef, params, rest = nnx.split(net, nnx.Param, ...)
    apply = jax.jit(lambda p, x, t: nnx.merge(graphdef, p, rest)(x, t))
    out = apply(params, x, t)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert np.all(np.isfinite(np.asarray(out)))
    assert_close(net(x, t), out, F32_LOOSE)
    # sample 0's output ignores the other samples (same program: no batch statistics)
    others = x.at[1:].set(jax.random.normal(jax.random.key(2), x[1:].shape))
    assert_close(apply(params, others, t.at[1:].set(0.5))[:1], out[:1], F32_LOOSE)
    with pytest.raises(ValueError, match="t must have shape"):
        net(x, t[:-1] if x_shape[0] > 1 else jnp.ones(2))


@pytest.mark.parametrize("name", SCORE_NETS.names())
def test_shared_score_net_suite(name):
    if name not in SMALL_CONFIGS:
        pytest.fail(f"score net {name!r} is registered without a small configuration in "
                    "tests/generative/test_score_nets.py::SMALL_CONFIGS")
    kwargs, x_shape = SMALL_CONFIGS[name]
    check_score_net(init_score_net(name, jax.random.key(0), **kwargs), x_shape)
