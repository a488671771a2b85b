"""Residual MLP score network with a time embedding, for low-dimensional data."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from common.checks import shape_str
from common.nn import get_activation
from generative.models.embedding import TimeEmbedding
from generative.models.registry import SCORE_NETS
from generative.models.unet import default_init

__all__ = ["ScoreMLP"]


class _ResidualBlock(nnx.Module):
    """``h + W₂ σ(W₁ σ(h) + W_t e)``: pre-activation residual block with the embedding."""

    def __init__(self, hidden: int, embed_dim: int, activation, rngs: nnx.Rngs):
        self.activation = activation
        self.lin1 = nnx.Linear(hidden, hidden, kernel_init=default_init, rngs=rngs)
        self.temb = nnx.Linear(embed_dim, hidden, kernel_init=default_init, rngs=rngs)
        self.lin2 = nnx.Linear(hidden, hidden, kernel_init=default_init, rngs=rngs)

    def __call__(self, h, emb):
        u = self.lin1(self.activation(h)) + self.temb(emb)
        return h + self.lin2(self.activation(u))


@SCORE_NETS.register("mlp")
class ScoreMLP(nnx.Module):
    """Time-conditioned residual MLP ``(x [B, D], t [B]) -> [B, D]``.

    ``e = MLP(emb(t))``, ``h₀ = W_in x``, ``h_{k+1} = h_k + W₂ σ(W₁ σ(h_k) + W_t e)``,
    output ``W_out σ(h_K)``. Read the output as the predicted noise and convert it
    with :func:`generative.sde.make_score_fn`.

    Args:
      dim: data dimension ``D``.
      hidden: hidden width.
      depth: number of residual blocks.
      embed_dim: time-embedding width.
      embedding: ``"fourier"`` (default; smooth in ``t``) or ``"sinusoidal"``.
      embedding_scale: Fourier frequency std or sinusoidal ``t`` multiplier.
      activation: hidden activation name (``common.nn.ACTIVATIONS``).
      rngs: ``nnx.Rngs``.

    Example:
        >>> net = ScoreMLP(2, rngs=nnx.Rngs(0))
        >>> net(jnp.zeros((4, 2)), jnp.ones(4)).shape
        (4, 2)

    Paper: the toy-data score networks of Song et al. 2021 and Song & Ermon 2019.
    """

    def __init__(self, dim: int, *, hidden: int = 128, depth: int = 3, embed_dim: int = 64,
                 embedding: str = "fourier", embedding_scale: float | None = None,
                 activation: str = "silu", rngs: nnx.Rngs):
        if min(dim, hidden, embed_dim) <= 0 or depth < 0:
            raise ValueError(f"dim, hidden, embed_dim must be > 0 and depth >= 0, got "
                             f"{dim}, {hidden}, {embed_dim}, {depth}")
        self.dim = dim
        self.activation = get_activation(activation)
        self.embed = TimeEmbedding(embed_dim, embed_dim, kind=embedding, scale=embedding_scale,
                                   kernel_init=default_init, rngs=rngs)
        self.inp = nnx.Linear(dim, hidden, kernel_init=default_init, rngs=rngs)
        self.blocks = nnx.List([_ResidualBlock(hidden, embed_dim, self.activation, rngs)
                                for _ in range(depth)])
        self.out = nnx.Linear(hidden, dim, kernel_init=default_init, rngs=rngs)

    def __call__(self, x: jax.Array, t: jax.Array, *, deterministic: bool = True,
                 rngs: nnx.Rngs | None = None) -> jax.Array:
        """``x [B, D]``, ``t [B]`` -> ``[B, D]`` (``deterministic``/``rngs`` are accepted for a
        uniform interface with the U-Net; the MLP has no dropout)."""
        if jnp.ndim(x) != 2 or x.shape[-1] != self.dim:
            raise ValueError(f"x must have shape [B, {self.dim}], got {shape_str(jnp.shape(x))}")
        if jnp.ndim(t) != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(f"t must have shape [B] = ({x.shape[0]},) like x's batch, got "
                             f"{shape_str(jnp.shape(t))}")
        emb = self.embed(t)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(self.activation(h))
