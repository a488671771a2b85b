"""A 2-D convolution whose gradient stays fast inside ``lax.scan`` on CPU.

XLA:CPU runs convolution *gradients* inside while loops (every scanned training
chunk of ``common.train.fit``) several times slower than the same ops outside a loop
(measured ~6–10× on this project's 2-core CPU with jax 0.10), while matmuls are
unaffected. :class:`Conv2D` therefore offers an ``"im2col"`` implementation — the
``k × k`` shifted views of the padded input concatenated along channels, then one
matmul with the ``[k·k·C_in, C_out]`` kernel — whose forward and backward passes are
slices, pads and matmuls only. It is the default on CPU; ``"xla"``
(``lax.conv_general_dilated``) is the default elsewhere. Both use the same
parameters (``kernel [k, k, C_in, C_out]``, ``bias [C_out]``, the layout of
``nnx.Conv``) and the same symmetric ``k // 2`` padding, so they agree to rounding.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from generative._checks import shape_str

__all__ = ["Conv2D", "conv2d"]

IMPLEMENTATIONS = ("im2col", "xla")


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, *, impl: str = "im2col"):
    """``[B, H, W, C_in] ⊛ [k, k, C_in, C_out] -> [B, ⌈H/s⌉, ⌈W/s⌉, C_out]`` (pad ``k // 2``).

    Args:
      x: NHWC input.
      kernel: HWIO kernel with odd ``k``.
      stride: spatial stride ``s``.
      impl: ``"im2col"`` or ``"xla"``.

    Returns:
      NHWC output.

    Example:
        >>> conv2d(jnp.ones((1, 8, 8, 3)), jnp.ones((3, 3, 3, 4)), 2).shape
        (1, 4, 4, 4)
    """
    kh, kw, cin, cout = kernel.shape
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"kernel must have odd spatial size, got {shape_str(kernel.shape)}")
    if jnp.ndim(x) != 4 or x.shape[-1] != cin:
        raise ValueError(f"x must have shape [B, H, W, {cin}], got {shape_str(jnp.shape(x))}")
    pads = ((kh // 2, kh // 2), (kw // 2, kw // 2))
    if impl == "xla":
        return jax.lax.conv_general_dilated(x, kernel, (stride, stride), pads,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if impl != "im2col":
        raise ValueError(f"impl must be one of {IMPLEMENTATIONS}, got {impl!r}")
    _, H, W, _ = x.shape
    if kh == kw == 1 and stride == 1:
        return x @ kernel.reshape(cin, cout)
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    Ho, Wo = -(-H // stride), -(-W // stride)
    views = [xp[:, i:i + stride * (Ho - 1) + 1:stride, j:j + stride * (Wo - 1) + 1:stride, :]
             for i in range(kh) for j in range(kw)]
    patches = jnp.concatenate(views, axis=-1)  # [B, Ho, Wo, kh·kw·C_in]
    return patches @ kernel.reshape(kh * kw * cin, cout)


class Conv2D(nnx.Module):
    """Square convolution with bias, ``nnx.Conv``'s parameter layout, CPU-friendly grads.

    Args:
      in_features: ``C_in``.
      out_features: ``C_out``.
      kernel_size: odd ``k``.
      stride: spatial stride.
      kernel_init: kernel initialiser.
      impl: ``"im2col"``, ``"xla"`` or None (im2col on CPU, xla elsewhere).
      rngs: ``nnx.Rngs``.

    Call:
      ``x [B, H, W, C_in] -> [B, ⌈H/s⌉, ⌈W/s⌉, C_out]``.
    """

    def __init__(self, in_features: int, out_features: int, kernel_size: int = 3,
                 stride: int = 1, *, kernel_init: Callable | None = None,
                 impl: str | None = None, rngs: nnx.Rngs):
        if impl is None:
            impl = "im2col" if jax.default_backend() == "cpu" else "xla"
        if impl not in IMPLEMENTATIONS:
            raise ValueError(f"impl must be one of {IMPLEMENTATIONS}, got {impl!r}")
        init = kernel_init or nnx.initializers.lecun_normal()
        self.impl = impl
        self.stride = int(stride)
        self.kernel = nnx.Param(init(rngs.params(), (kernel_size, kernel_size, in_features,
                                                     out_features)))
        self.bias = nnx.Param(jnp.zeros((out_features,)))

    def __call__(self, x: jax.Array) -> jax.Array:
        y = conv2d(x, self.kernel[...], self.stride, impl=self.impl)
        return y + self.bias[...].reshape(1, 1, 1, -1)
