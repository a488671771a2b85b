"""conv2d / Conv2D: every implementation against lax.conv_general_dilated (values,
reverse- and forward-mode derivatives), the padding rule, and bad input."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common.nn import Conv2D, conv2d
from common.nn.conv import resolve_padding
from tests.common.nn.references import rngs
from tests.tolerances import F32, F64, assert_close

_DN = ("NHWC", "HWIO", "NHWC")


def reference(x, k, stride, padding="SAME"):
    return jax.lax.conv_general_dilated(x, k, (stride, stride), padding, dimension_numbers=_DN)


# One input of odd height and even width covers both parities at once.
@pytest.mark.parametrize("kernel", [1, 3, 7])
@pytest.mark.parametrize("stride", [1, 2])
def test_values_and_derivatives_equal_xla(x64, kernel, stride):
    kx, kk, kp, kt = jax.random.split(jax.random.key(kernel * 10 + stride), 4)
    x = jax.random.normal(kx, (2, 9, 8, 3), jnp.float64)
    k = jax.random.normal(kk, (kernel, kernel, 3, 4), jnp.float64)
    probe = jax.random.normal(kp, reference(x, k, stride).shape, jnp.float64)
    tangent = jax.random.normal(kt, x.shape, jnp.float64)

    def derivatives(conv):
        loss = lambda x, k: jnp.sum(jnp.tanh(conv(x, k)) * probe)
        value, grads = jax.value_and_grad(loss, (0, 1))(x, k)
        _, jvp = jax.jvp(lambda x: conv(x, k), (x,), (tangent,))
        return conv(x, k), value, grads, jvp

    @jax.jit
    def run():
        ref = derivatives(lambda x, k: reference(x, k, stride))
        ours = {impl: derivatives(lambda x, k, impl=impl: conv2d(x, k, stride, impl=impl))
                for impl in ("auto", "im2col", "xla")}
        return ref, ours

    ref, ours = run()
    assert ref[0].shape == (2, -(-9 // stride), -(-8 // stride), 4)
    for impl, got in ours.items():
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref), strict=True):
            assert_close(a, b, F64, err_msg=impl)


def test_padding_rule_and_explicit_padding():
    # "SAME": P = max((ceil(n/s) - 1) s + k - n, 0), floor(P/2) before, the rest after.
    assert resolve_padding("SAME", (8, 7), (3, 3), 2) == ((0, 1), (1, 1))
    assert resolve_padding("same", (64, 63), (7, 7), 2) == ((2, 3), (3, 3))
    assert resolve_padding("SAME", (8, 8), (1, 1), 2) == ((0, 0), (0, 0))
    assert resolve_padding("VALID", (8, 8), (3, 3), 1) == ((0, 0), (0, 0))
    x = jax.random.normal(jax.random.key(0), (1, 8, 7, 2))
    k = jax.random.normal(jax.random.key(1), (3, 2, 2, 3))  # non-square kernel
    for padding in ("VALID", ((1, 2), (0, 1))):
        want = reference(x, k, 2, padding)
        for impl in ("im2col", "xla"):
            assert_close(conv2d(x, k, 2, padding, impl), want, F32)
    # Even size, stride 2: output row o is centred on input row 2o + 1.
    x = jnp.arange(8.0).reshape(1, 8, 1, 1)
    centre = jnp.zeros((3, 1, 1, 1)).at[1].set(1.0)
    np.testing.assert_array_equal(np.asarray(conv2d(x, centre, 2))[0, :, 0, 0], [1, 3, 5, 7])


def test_layer_is_conv_plus_bias():
    layer = Conv2D(3, 5, (3, 1), stride=2, rngs=rngs(0))
    nnx.update(layer, nnx.State({"bias": jnp.arange(5.0)}))
    x = jax.random.normal(jax.random.key(2), (2, 6, 5, 3))
    want = reference(x, layer.kernel[...], 2) + jnp.arange(5.0).reshape(1, 1, 1, 5)
    assert_close(layer(x), want, F32)
    assert layer.kernel.shape == (3, 1, 3, 5)
    plain = Conv2D(3, 5, 1, use_bias=False, impl="xla", rngs=rngs(0))
    assert plain.bias is None and len(jax.tree.leaves(nnx.state(plain, nnx.Param))) == 1
    half = Conv2D(3, 5, 3, dtype=jnp.bfloat16, rngs=rngs(0))
    assert half(x).dtype == jnp.bfloat16 and half.kernel[...].dtype == jnp.float32


def test_bad_input_names_the_argument():
    x, k = jnp.ones((1, 8, 8, 3)), jnp.ones((3, 3, 3, 4))
    with pytest.raises(ValueError, match=re.escape("x must have shape [B, H, W, C_in]")):
        conv2d(jnp.ones((8, 8, 3)), k)
    with pytest.raises(ValueError, match=re.escape("[B, H, W, 3] (C_in from kernel), got "
                                                   "shape (1, 8, 8, 4)")):
        conv2d(jnp.ones((1, 8, 8, 4)), k)
    with pytest.raises(ValueError, match=re.escape("kernel must have shape [k_h, k_w, C_in")):
        conv2d(x, jnp.ones((3, 3, 3)))
    with pytest.raises(ValueError, match="x must be floating point"):
        conv2d(jnp.ones((1, 8, 8, 3), jnp.int32), k.astype(jnp.int32))
    with pytest.raises(ValueError, match="kernel must have the dtype of x"):
        conv2d(x, k.astype(jnp.bfloat16))
    with pytest.raises(ValueError, match="stride must be an integer >= 1"):
        conv2d(x, k, 0)
    with pytest.raises(ValueError, match="padding must be 'SAME', 'VALID'"):
        conv2d(x, k, padding="FULL")
    with pytest.raises(ValueError, match="padding must be 'SAME', 'VALID'"):
        conv2d(x, k, padding=((1, -1), (0, 0)))
    with pytest.raises(ValueError, match="impl must be one of"):
        conv2d(x, k, impl="fft")
    with pytest.raises(ValueError, match="does not fit"):
        conv2d(jnp.ones((1, 2, 2, 3)), k, padding="VALID")
    with pytest.raises(ValueError, match="impl must be one of"):
        Conv2D(3, 4, impl="cudnn", rngs=rngs(0))
    with pytest.raises(ValueError, match="kernel_size must be an integer >= 1"):
        Conv2D(3, 4, 0, rngs=rngs(0))
