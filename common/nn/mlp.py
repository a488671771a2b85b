"""Feed-forward blocks: a plain multi-layer perceptron and a gated (GLU-family) MLP.

Paper: Shazeer 2020, "GLU Variants Improve Transformer" (SwiGLU, GEGLU).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from common.checks import shape_of, shape_str

__all__ = ["ACTIVATIONS", "MLP", "GatedMLP", "SwiGLU", "get_activation"]

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    # Exact (erf) GELU, as in Hendrycks & Gimpel 2016 and PyTorch's default.
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "elu": jax.nn.elu,
    "leaky_relu": jax.nn.leaky_relu,
    "softplus": jax.nn.softplus,
    "identity": lambda x: x,
}


def get_activation(activation: str | Callable[[jax.Array], jax.Array]) -> Callable:
    """Resolve an activation given by name (see ``ACTIVATIONS``) or as a callable.

    Args:
      activation: a name such as ``"relu"``, ``"gelu"`` (exact), ``"gelu_tanh"``,
        ``"silu"``, or any elementwise callable.

    Returns:
      The elementwise function.

    Example:
      >>> get_activation("relu")(jnp.array([-1.0, 2.0])).tolist()
      [0.0, 2.0]
    """
    if callable(activation):
        return activation
    try:
        return ACTIVATIONS[activation]
    except KeyError:
        raise ValueError(
            f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)} "
            "or pass a callable"
        ) from None


def _check_features(x: jax.Array, n: int, name: str = "x") -> None:
    if jnp.ndim(x) < 1 or x.shape[-1] != n:
        raise ValueError(f"{name} must have shape [..., {n}], got shape {shape_str(shape_of(x))}")


class MLP(nnx.Module):
    """Multi-layer perceptron ``features[0] → features[1] → … → features[-1]``.

    ``h_0 = x``, ``h_{l} = dropout(σ(h_{l-1} W_l + b_l))`` for hidden layers and
    ``y = h_{L-1} W_L + b_L`` (followed by ``σ`` and dropout if ``activate_final``).

    Args:
      features: layer sizes including input and output, length ``>= 2``.
      activation: hidden activation, a name (see ``ACTIVATIONS``) or a callable.
      dropout_rate: dropout after each activation when not deterministic.
      activate_final: also apply the activation (and dropout) after the last layer.
      use_bias: whether the linear layers have biases.
      kernel_init: kernel initializer (default: ``nnx.Linear``'s LeCun normal).
      dtype: computation dtype.
      param_dtype: parameter dtype.
      rngs: ``nnx.Rngs`` for initialisation and dropout.

    Call:
      ``x [..., features[0]]`` → ``[..., features[-1]]``; keyword ``deterministic``
      (default ``True``) and optional ``rngs`` for dropout.

    Example:
      >>> mlp = MLP([4, 16, 2], activation="gelu", rngs=nnx.Rngs(0))
      >>> mlp(jnp.ones((3, 4))).shape
      (3, 2)
    """

    def __init__(
        self,
        features: Sequence[int],
        *,
        activation: str | Callable = "relu",
        dropout_rate: float = 0.0,
        activate_final: bool = False,
        use_bias: bool = True,
        kernel_init: Callable | None = None,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        features = tuple(int(f) for f in features)
        if len(features) < 2 or any(f <= 0 for f in features):
            raise ValueError(
                f"features must list at least 2 positive sizes (input and output), got {features}"
            )
        if not 0.0 <= dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate}")
        self.features = features
        self.activation = get_activation(activation)
        self.activate_final = activate_final
        kwargs = dict(use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        if kernel_init is not None:
            kwargs["kernel_init"] = kernel_init
        self.layers = nnx.List(
            [nnx.Linear(a, b, **kwargs) for a, b in itertools.pairwise(features)]
        )
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)

    def __call__(
        self, x: jax.Array, *, deterministic: bool = True, rngs: nnx.Rngs | None = None
    ) -> jax.Array:
        _check_features(x, self.features[0])
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last or self.activate_final:
                x = self.activation(x)
                x = self.dropout(x, deterministic=deterministic, rngs=rngs)
        return x


class GatedMLP(nnx.Module):
    """Gated feed-forward block (GLU family); SwiGLU with the default ``silu``.

    ``y = (σ(x W_gate) ⊙ (x W_up)) W_down`` — SwiGLU for ``σ = silu`` (LLaMA),
    GEGLU for ``σ = gelu``; dropout on the gated hidden units when not deterministic.

    Args:
      in_features: input size ``D``.
      hidden_features: gated hidden size ``F``.
      out_features: output size; defaults to ``in_features``.
      activation: gate activation, a name or a callable (default ``"silu"``).
      use_bias: whether the projections have biases (``False`` in LLaMA).
      dropout_rate: dropout on the hidden units.
      kernel_init: kernel initializer.
      dtype: computation dtype.
      param_dtype: parameter dtype.
      rngs: ``nnx.Rngs`` for initialisation and dropout.

    Call:
      ``x [..., D]`` → ``[..., out_features]``; keyword ``deterministic`` and ``rngs``.

    Example:
      >>> ffn = SwiGLU(8, 32, rngs=nnx.Rngs(0))
      >>> ffn(jnp.ones((2, 5, 8))).shape
      (2, 5, 8)

    Paper: Shazeer 2020, "GLU Variants Improve Transformer", eq. (6).
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        out_features: int | None = None,
        *,
        activation: str | Callable = "silu",
        use_bias: bool = False,
        dropout_rate: float = 0.0,
        kernel_init: Callable | None = None,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        out_features = in_features if out_features is None else out_features
        if min(in_features, hidden_features, out_features) <= 0:
            raise ValueError(
                "in_features, hidden_features and out_features must be positive, got "
                f"{in_features}, {hidden_features}, {out_features}"
            )
        if not 0.0 <= dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate}")
        self.in_features = in_features
        self.activation = get_activation(activation)
        kwargs = dict(use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        if kernel_init is not None:
            kwargs["kernel_init"] = kernel_init
        self.gate_proj = nnx.Linear(in_features, hidden_features, **kwargs)
        self.up_proj = nnx.Linear(in_features, hidden_features, **kwargs)
        self.down_proj = nnx.Linear(hidden_features, out_features, **kwargs)
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)

    def __call__(
        self, x: jax.Array, *, deterministic: bool = True, rngs: nnx.Rngs | None = None
    ) -> jax.Array:
        _check_features(x, self.in_features)
        hidden = self.activation(self.gate_proj(x)) * self.up_proj(x)
        hidden = self.dropout(hidden, deterministic=deterministic, rngs=rngs)
        return self.down_proj(hidden)


#: SwiGLU feed-forward block (``GatedMLP`` with its default ``silu`` gate).
SwiGLU = GatedMLP
