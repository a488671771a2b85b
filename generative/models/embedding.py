"""Time / noise-level embeddings for score networks.

* :func:`sinusoidal_embedding` — Transformer sinusoids of ``scale · t`` (DDPM uses
  the step index, i.e. ``scale = 1000`` for ``t ∈ [0, 1]``).
* :class:`GaussianFourierEmbedding` — random Fourier features
  ``[sin 2π t W, cos 2π t W]`` with fixed ``W ~ N(0, s²)`` (NCSN++; Tancik et al. 2020).
* :class:`TimeEmbedding` — one of the two followed by an MLP (``common.nn.MLP``).

Papers: Vaswani et al. 2017, section 3.5; Ho et al. 2020, appendix B; Song et al.
2021, appendix H.2; Tancik et al. 2020, "Fourier Features Let Networks Learn High
Frequency Functions in Low Dimensional Domains".
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from common.checks import shape_str
from common.nn import MLP, sinusoidal_position_encoding

__all__ = ["FourierBasis", "GaussianFourierEmbedding", "TimeEmbedding", "sinusoidal_embedding"]


def _check_t(t, name="t"):
    if jnp.ndim(t) != 1:
        raise ValueError(f"{name} must have shape [B] (one conditioning value per sample), "
                         f"got shape {shape_str(jnp.shape(t))}")


def sinusoidal_embedding(t: jax.Array, dim: int, *, scale: float = 1000.0) -> jax.Array:
    """Sinusoidal embedding of ``scale · t`` (interleaved sin/cos, base 10000).

    Args:
      t: ``[B]`` conditioning values.
      dim: even embedding size.
      scale: multiplier turning ``t ∈ [0, 1]`` into a DDPM-like step index.

    Returns:
      ``[B, dim]``.

    Example:
        >>> sinusoidal_embedding(jnp.array([0.0, 0.5]), 16).shape
        (2, 16)
    """
    _check_t(t)
    return sinusoidal_position_encoding(jnp.asarray(t) * scale, dim)


class FourierBasis(nnx.Variable):
    """A fixed (non-trained) random Fourier basis; kept out of ``nnx.Param``."""


class GaussianFourierEmbedding(nnx.Module):
    """Random Fourier features ``[sin(2π t W), cos(2π t W)]``, ``W ~ N(0, scale²)`` fixed.

    Args:
      dim: even output size (``dim / 2`` frequencies).
      scale: standard deviation of the frequencies.
      rngs: ``nnx.Rngs`` (stream ``params``) drawing ``W``.

    Call:
      ``t [B] -> [B, dim]``.

    Example:
        >>> GaussianFourierEmbedding(16, rngs=nnx.Rngs(0))(jnp.ones(3)).shape
        (3, 16)

    Paper: Song et al. 2021, appendix H.2 (NCSN++); Tancik et al. 2020.
    """

    def __init__(self, dim: int, *, scale: float = 16.0, rngs: nnx.Rngs):
        if dim <= 0 or dim % 2:
            raise ValueError(f"dim must be a positive even number, got {dim}")
        self.dim = dim
        self.W = FourierBasis(scale * jax.random.normal(rngs.params(), (dim // 2,)))

    def __call__(self, t: jax.Array) -> jax.Array:
        _check_t(t)
        angles = 2.0 * math.pi * t[:, None] * self.W[...][None, :]  # [B, dim/2]
        return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class TimeEmbedding(nnx.Module):
    """``t [B] -> [B, out_dim]``: sinusoidal or Fourier features, then a 2-layer SiLU MLP.

    Args:
      dim: size of the raw features.
      out_dim: output size.
      kind: ``"sinusoidal"`` or ``"fourier"``.
      scale: ``t`` multiplier (sinusoidal) or frequency std (Fourier).
      kernel_init: initialiser of the MLP's kernels (None: ``nnx.Linear``'s default).
      rngs: ``nnx.Rngs``.
    """

    def __init__(self, dim: int, out_dim: int, *, kind: str = "sinusoidal",
                 scale: float | None = None, kernel_init=None, rngs: nnx.Rngs):
        if kind not in ("sinusoidal", "fourier"):
            raise ValueError(f"kind must be 'sinusoidal' or 'fourier', got {kind!r}")
        if dim <= 0 or dim % 2:
            raise ValueError(f"dim must be a positive even number, got {dim}")
        self.kind = kind
        self.dim = dim
        if kind == "fourier":
            self.scale = 16.0 if scale is None else float(scale)
            self.fourier = GaussianFourierEmbedding(dim, scale=self.scale, rngs=rngs)
        else:
            self.scale = 1000.0 if scale is None else float(scale)
            self.fourier = None
        self.mlp = MLP([dim, out_dim, out_dim], activation="silu", kernel_init=kernel_init,
                       rngs=rngs)

    def __call__(self, t: jax.Array) -> jax.Array:
        _check_t(t)
        if self.fourier is not None:
            feats = self.fourier(t)
        else:
            feats = sinusoidal_embedding(t, self.dim, scale=self.scale)
        return self.mlp(feats)
