"""2-D convolution (NHWC): one function, one layer, two implementations.

``impl="im2col"`` and ``impl="xla"`` compute the same convolution; they differ only in
how the gradients are formed.

* ``"xla"`` calls ``lax.conv_general_dilated`` and lets JAX differentiate it.
* ``"im2col"`` gathers the ``k_h·k_w`` shifted (strided) views of the padded input,
  concatenates them along channels (``[B, H', W', k_h·k_w·C_in]``) and multiplies by
  the kernel reshaped to ``[k_h·k_w·C_in, C_out]``. Forward and backward passes are
  then pads, slices and one matmul.
* ``"auto"`` (the default) is ``"im2col"`` on CPU and ``"xla"`` on other backends,
  chosen when the function is traced.

Why two: XLA:CPU runs convolution *gradients* inside a ``while`` loop (every scanned
training chunk of ``common.train``) 6–18× slower than the same ops outside a loop
(jax-ml/jax#12868; on this project's 2-core CPU with jax 0.10 a scanned gradient step
of a chain of 3×3 convolutions took 0.5–5.5 s with ``"xla"``, 0.03–0.25 s without its
convolution gradients). Matmuls are not affected. GPUs and TPUs have fast native
convolution gradients, so there ``"xla"`` stays the default.

Which CPU path: the project had two. (a) A ``jax.custom_vjp`` keeping XLA's forward
convolution and writing the input gradient as a stride-1 convolution of the dilated
output gradient with the flipped kernel (DETR's backbone); (b) im2col (the score
U-Net). Measured with scanned gradient steps on the 2-core CPU: on convolution-only
chains (a) was 1.3–1.6× faster; on whole models the two were equal within noise
(U-Net 28×28, batch 32: 3.7 s vs 3.4 s for (b); DETR's ResNet at 64×64, batch 16:
0.50 s vs 0.45 s for (b)). im2col is kept because it is an ordinary composition of
differentiable ops: forward mode (``jax.jvp``, which the probability-flow likelihood
and sliced score matching apply to the U-Net), ``vmap`` and higher derivatives all
work, whereas a ``custom_vjp`` function refuses ``jax.jvp``. Its cost is memory: the
patch matrix holds ``k_h·k_w`` copies of the input and is kept for the backward pass.

Padding (one rule, XLA's and TensorFlow's ``"SAME"``): the output has
``H' = ⌈H/s⌉`` rows and the input gets ``P = max((H' − 1)·s + k − H, 0)`` zero rows,
``⌊P/2⌋`` before and ``⌈P/2⌉`` after (likewise for columns). For an odd ``H`` with
``k = 3, s = 2`` that is one row on each side; for an even ``H`` it is 0 before and 1
after, so output row ``o`` is centred on input row ``2o + 1`` (PyTorch's
``padding=1`` centres it on ``2o`` and ignores the last row). A ``7×7`` stride-2 stem
on an even size pads 2 before and 3 after. ``"VALID"`` (no padding) and explicit
``((lo_h, hi_h), (lo_w, hi_w))`` are accepted too.

Paper: Chellapilla, Puri & Simard 2006, "High Performance Convolutional Neural
Networks for Document Processing" (convolution as a matmul of unrolled patches).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.nnx.nn.dtypes import promote_dtype

from common.checks import check_int, shape_of, shape_str

__all__ = ["IMPLEMENTATIONS", "Conv2D", "conv2d", "conv_output_size", "resolve_padding"]

#: Accepted values of ``impl``.
IMPLEMENTATIONS = ("auto", "im2col", "xla")

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")

Padding = str | Sequence[Sequence[int]]


def _is_count(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0


def _same_pads(size: int, k: int, stride: int) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


def resolve_padding(padding: Padding, size: tuple[int, int], kernel: tuple[int, int],
                    stride: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Explicit ``((lo_h, hi_h), (lo_w, hi_w))`` zero padding for ``padding``.

    ``"SAME"``: ``P = max((⌈n/s⌉ − 1)·s + k − n, 0)``, ``⌊P/2⌋`` before, the rest after;
    ``"VALID"``: none; explicit pairs are checked (non-negative integers) and returned.

    Args:
      padding: ``"SAME"``, ``"VALID"`` or ``((lo_h, hi_h), (lo_w, hi_w))``.
      size: input ``(H, W)``.
      kernel: ``(k_h, k_w)``.
      stride: ``s``.

    Returns:
      ``((lo_h, hi_h), (lo_w, hi_w))``.

    Example:
      >>> resolve_padding("SAME", (8, 7), (3, 3), 2)
      ((0, 1), (1, 1))
    """
    if isinstance(padding, str):
        mode = padding.upper()
        if mode == "SAME":
            return _same_pads(size[0], kernel[0], stride), _same_pads(size[1], kernel[1], stride)
        if mode == "VALID":
            return (0, 0), (0, 0)
        raise ValueError(f"padding must be 'SAME', 'VALID' or ((lo_h, hi_h), (lo_w, hi_w)), "
                         f"got {padding!r}")
    pads = None
    if isinstance(padding, Sequence) and len(padding) == 2:
        pairs = [tuple(p) if isinstance(p, Sequence) else () for p in padding]
        if all(len(p) == 2 and all(_is_count(v) for v in p) for p in pairs):
            pads = tuple((int(p[0]), int(p[1])) for p in pairs)
    if pads is None:
        raise ValueError(f"padding must be 'SAME', 'VALID' or ((lo_h, hi_h), (lo_w, hi_w)) "
                         f"of integers >= 0, got {padding!r}")
    return pads


def conv_output_size(size: int, k: int, stride: int, pads: tuple[int, int]) -> int:
    """Output length ``⌊(n + lo + hi − k) / s⌋ + 1`` of a strided convolution."""
    return (size + pads[0] + pads[1] - k) // stride + 1


def _im2col(x, kernel, stride, pads, out_hw):
    kh, kw, cin, cout = kernel.shape
    Ho, Wo = out_hw
    if kh == kw == 1 and pads == ((0, 0), (0, 0)):
        patches = x[:, : stride * (Ho - 1) + 1 : stride, : stride * (Wo - 1) + 1 : stride]
        return patches @ kernel.reshape(cin, cout)
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    views = [xp[:, i : i + stride * (Ho - 1) + 1 : stride, j : j + stride * (Wo - 1) + 1 : stride]
             for i in range(kh) for j in range(kw)]
    patches = jnp.concatenate(views, axis=-1)  # [B, Ho, Wo, kh·kw·C_in], (i, j, c) order
    return patches @ kernel.reshape(kh * kw * cin, cout)


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, padding: Padding = "SAME",
           impl: str = "auto") -> jax.Array:
    """2-D cross-correlation (deep learning's "convolution"), NHWC input, HWIO kernel.

    ``y[b, o, p, c'] = Σ_{i, j, c} x̃[b, s·o + i, s·p + j, c] · K[i, j, c, c']`` with ``x̃``
    the zero-padded input (see the module docstring for the padding rule).

    Args:
      x: ``[B, H, W, C_in]`` floating input.
      kernel: ``[k_h, k_w, C_in, C_out]``, the dtype of ``x``.
      stride: spatial stride ``s >= 1`` (both axes).
      padding: ``"SAME"`` (default), ``"VALID"`` or ``((lo_h, hi_h), (lo_w, hi_w))``.
      impl: ``"auto"`` (``"im2col"`` on CPU, ``"xla"`` elsewhere), ``"im2col"`` or
        ``"xla"`` (``lax.conv_general_dilated``). Values and gradients agree to rounding.

    Returns:
      ``[B, H', W', C_out]``; with ``"SAME"``, ``H' = ⌈H/s⌉`` and ``W' = ⌈W/s⌉``.

    Example:
      >>> conv2d(jnp.ones((1, 8, 8, 3)), jnp.ones((3, 3, 3, 4)), 2).shape
      (1, 4, 4, 4)

    Paper: Chellapilla et al. 2006 (im2col); He et al. 2016, "Deep Residual Learning".
    """
    if jnp.ndim(kernel) != 4:
        raise ValueError(f"kernel must have shape [k_h, k_w, C_in, C_out], got shape "
                         f"{shape_str(shape_of(kernel))}")
    kh, kw, cin, _ = jnp.shape(kernel)
    if jnp.ndim(x) != 4 or jnp.shape(x)[-1] != cin:
        raise ValueError(f"x must have shape [B, H, W, C_in] = [B, H, W, {cin}] (C_in from "
                         f"kernel), got shape {shape_str(shape_of(x))}")
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise ValueError(f"x must be floating point, got dtype {jnp.result_type(x)}")
    if jnp.result_type(kernel) != jnp.result_type(x):
        raise ValueError(f"kernel must have the dtype of x ({jnp.result_type(x)}), got "
                         f"{jnp.result_type(kernel)}")
    stride = check_int(stride, "stride", minimum=1)
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"impl must be one of {IMPLEMENTATIONS}, got {impl!r}")
    _, H, W, _ = jnp.shape(x)
    pads = resolve_padding(padding, (H, W), (kh, kw), stride)
    Ho = conv_output_size(H, kh, stride, pads[0])
    Wo = conv_output_size(W, kw, stride, pads[1])
    if kh < 1 or kw < 1 or Ho < 1 or Wo < 1:
        raise ValueError(f"kernel of shape {shape_str((kh, kw))} does not fit the padded "
                         f"input of x with shape {shape_str(shape_of(x))} (padding {pads})")
    if impl == "auto":
        impl = "im2col" if jax.default_backend() == "cpu" else "xla"
    if impl == "xla":
        return jax.lax.conv_general_dilated(x, kernel, (stride, stride), pads,
                                            dimension_numbers=_DIMENSION_NUMBERS)
    return _im2col(x, kernel, stride, pads, (Ho, Wo))


class Conv2D(nnx.Module):
    """Convolution layer over :func:`conv2d`: ``y = conv2d(x, K) + b``.

    Parameters use ``nnx.Conv``'s layout: ``kernel [k_h, k_w, C_in, C_out]`` and
    ``bias [C_out]``.

    Args:
      in_features: input channels ``C_in``.
      out_features: output channels ``C_out``.
      kernel_size: ``k`` or ``(k_h, k_w)``.
      stride: spatial stride ``s``.
      padding: see :func:`conv2d` (``"SAME"`` by default).
      use_bias: add a learned bias (off before a normalisation layer).
      kernel_init: kernel initialiser (default LeCun normal, as ``nnx.Conv``).
      bias_init: bias initialiser (default zeros).
      impl: ``"auto"``, ``"im2col"`` or ``"xla"``; ``"auto"`` is resolved at trace
        time, so a model built on one backend runs well on another.
      dtype: computation dtype (``None``: promoted from the input and parameters).
      param_dtype: parameter dtype.
      rngs: ``nnx.Rngs`` (stream ``params``).

    Call:
      ``x [B, H, W, C_in]`` → ``[B, H', W', C_out]`` (``H' = ⌈H/s⌉`` with ``"SAME"``).

    Example:
      >>> Conv2D(3, 8, 3, stride=2, rngs=nnx.Rngs(0))(jnp.ones((1, 8, 8, 3))).shape
      (1, 4, 4, 8)
    """

    def __init__(self, in_features: int, out_features: int,
                 kernel_size: int | tuple[int, int] = 3, stride: int = 1, *,
                 padding: Padding = "SAME", use_bias: bool = True,
                 kernel_init: Callable | None = None,
                 bias_init: Callable = nnx.initializers.zeros, impl: str = "auto",
                 dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        check_int(in_features, "in_features")
        check_int(out_features, "out_features")
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        check_int(kh, "kernel_size")
        check_int(kw, "kernel_size")
        self.stride = check_int(stride, "stride")
        if impl not in IMPLEMENTATIONS:
            raise ValueError(f"impl must be one of {IMPLEMENTATIONS}, got {impl!r}")
        pads = resolve_padding(padding, (kh, kw), (kh, kw), 1)  # validates padding
        self.padding = padding.upper() if isinstance(padding, str) else pads
        self.impl = impl
        self.dtype = dtype
        self.in_features = in_features
        init = kernel_init or nnx.initializers.lecun_normal()
        self.kernel = nnx.Param(init(rngs.params(), (kh, kw, in_features, out_features),
                                     param_dtype))
        self.bias = (nnx.Param(bias_init(rngs.params(), (out_features,), param_dtype))
                     if use_bias else nnx.data(None))

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.kernel[...]
        bias = None if self.bias is None else self.bias[...]
        x, kernel, bias = promote_dtype((x, kernel, bias), dtype=self.dtype)
        y = conv2d(x, kernel, self.stride, self.padding, self.impl)
        return y if bias is None else y + bias.reshape(1, 1, 1, -1)
