"""Score networks, registered by name in ``SCORE_NETS``.

Every network maps ``(x [B, ...], t [B]) -> [B, ...]`` with ``t`` a scalar
conditioning per sample (a diffusion time in ``[0, 1]``, or ``log σ`` for NCSN);
turn its output into a score with :func:`generative.sde.make_score_fn` (the output is
read as the predicted noise ``ε``).

* ``"mlp"`` — :class:`ScoreMLP`, residual MLP with a time embedding, for 2-D toys.
* ``"unet"`` — :class:`ScoreUNet`, a small DDPM-style U-Net (residual blocks, group
  norm, self-attention at low resolution, sinusoidal or Fourier time embedding).

Example:
    >>> net = build_score_net("mlp", dim=2, rngs=nnx.Rngs(0))
    >>> net(jnp.zeros((8, 2)), jnp.full((8,), 0.5)).shape
    (8, 2)
"""

from generative.models.embedding import (
    GaussianFourierEmbedding,
    TimeEmbedding,
    sinusoidal_embedding,
)
from generative.models.mlp import ScoreMLP
from generative.models.registry import SCORE_NETS, build_score_net, init_score_net
from generative.models.unet import ScoreUNet

__all__ = [
    "SCORE_NETS",
    "GaussianFourierEmbedding",
    "ScoreMLP",
    "ScoreUNet",
    "TimeEmbedding",
    "build_score_net",
    "init_score_net",
    "sinusoidal_embedding",
]
