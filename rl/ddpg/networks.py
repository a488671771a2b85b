"""Actor and critic networks for DDPG/TD3: ``flax.nnx`` MLPs from ``common.nn``.

* :class:`Actor`: ``μ(s) = low + (tanh(f(s)) + 1)(high − low)/2`` — an MLP
  ``O → hidden → A`` whose tanh output is mapped onto the action bounds.
* :class:`Critic`: ``Q(s, a) = g([s, a])`` — an MLP ``O + A → hidden → 1``.

Both check their inputs' trailing sizes at trace time, naming the argument.

Example:
    >>> actor = Actor(3, 1, low=(-2.0,), high=(2.0,), hidden=(64, 64), rngs=nnx.Rngs(0))
    >>> critic = Critic(3, 1, hidden=(64, 64), rngs=nnx.Rngs(1))
    >>> s = jnp.zeros((5, 3))
    >>> critic(s, actor(s)).shape
    (5,)

Reference: T. P. Lillicrap et al., "Continuous control with deep reinforcement
learning", ICLR 2016 (section 7: architecture).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from common.nn import MLP
from rl.ddpg.losses import scale_action

__all__ = ["Actor", "Critic"]


def _check_last(x, n: int, name: str) -> None:
    if jnp.ndim(x) < 1 or jnp.shape(x)[-1] != n:
        raise ValueError(f"{name} must have shape [..., {n}], got {tuple(jnp.shape(x))}")


class Actor(nnx.Module):
    """Deterministic policy ``μ: [..., O] → [..., A]`` inside ``[low, high]``.

    Args:
      obs_dim: ``O``.
      action_dim: ``A``.
      low, high: length-``A`` sequences of finite bounds, ``low < high``.
      hidden: hidden layer sizes.
      activation: hidden activation name (``common.nn.ACTIVATIONS``).
      rngs: ``nnx.Rngs`` for initialisation.
    """

    def __init__(self, obs_dim: int, action_dim: int, *, low: Sequence[float],
                 high: Sequence[float], hidden: Sequence[int] = (64, 64),
                 activation: str = "relu", rngs: nnx.Rngs):
        low = tuple(float(v) for v in low)
        high = tuple(float(v) for v in high)
        if len(low) != action_dim or len(high) != action_dim:
            raise ValueError(f"low and high must have length action_dim={action_dim}, got "
                             f"{len(low)} and {len(high)}")
        if not all(lo < hi for lo, hi in zip(low, high, strict=True)):
            raise ValueError(f"need low < high elementwise, got low={low}, high={high}")
        self.obs_dim = int(obs_dim)
        self.action_dim = int(action_dim)
        self.low, self.high = low, high
        self.mlp = MLP([obs_dim, *hidden, action_dim], activation=activation, rngs=rngs)

    def __call__(self, obs: jax.Array) -> jax.Array:
        _check_last(obs, self.obs_dim, "obs")
        return scale_action(jnp.tanh(self.mlp(obs)), self.low, self.high)  # [..., A]


class Critic(nnx.Module):
    """Action value ``Q: ([..., O], [..., A]) → [...]``.

    Args:
      obs_dim: ``O``.
      action_dim: ``A``.
      hidden: hidden layer sizes.
      activation: hidden activation name.
      rngs: ``nnx.Rngs`` for initialisation.
    """

    def __init__(self, obs_dim: int, action_dim: int, *, hidden: Sequence[int] = (64, 64),
                 activation: str = "relu", rngs: nnx.Rngs):
        self.obs_dim = int(obs_dim)
        self.action_dim = int(action_dim)
        self.mlp = MLP([obs_dim + action_dim, *hidden, 1], activation=activation, rngs=rngs)

    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        _check_last(obs, self.obs_dim, "obs")
        _check_last(action, self.action_dim, "action")
        if obs.shape[:-1] != action.shape[:-1]:
            raise ValueError(f"obs [..., O] and action [..., A] must share leading dims, got "
                             f"{obs.shape} and {action.shape}")
        return self.mlp(jnp.concatenate([obs, action], axis=-1))[..., 0]  # [...]
