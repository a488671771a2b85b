"""Exploration noise for deterministic policies, as pure (state, key) → (noise, state).

Registered in ``NOISES`` by name; a config picks one with ``exploration="ou"``.
Noise is in units of the half action range and is added to ``μ(s)`` before
clipping to the bounds: ``a = clip(μ(s) + n ⊙ (high − low)/2, low, high)``.

* ``gaussian``: ``n_t ~ N(0, σ² I)`` independently each step (TD3; Fujimoto et al.
  2018 found it as good as OU).
* ``ou`` (Ornstein–Uhlenbeck, Euler–Maruyama): ``x_{t+1} = x_t + θ (0 − x_t) dt +
  σ √dt ε_t``, ``n_t = x_{t+1}``, reset to 0 at episode starts (Lillicrap et al.
  2016, after Uhlenbeck & Ornstein 1930). Its stationary standard deviation is
  ``σ √(dt / (1 − (1 − θ dt)²)) ≈ σ / √(2θ)``.

Example:
    >>> proc = NOISES.get("ou")(std=0.3)
    >>> state = proc.init(1)                           # [A]
    >>> n, state = proc.sample(state, jax.random.key(0), jnp.array(False))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from common.registry import Registry

__all__ = ["NOISES", "NoiseProcess", "gaussian_noise", "ou_noise"]


class NoiseProcess(NamedTuple):
    """A noise process: ``init(action_dim) -> state [A]``;
    ``sample(state, key, reset) -> (noise [A], state)``, where ``reset`` (bool scalar)
    restarts the process first (a new episode)."""

    init: Callable[[int], jax.Array]
    sample: Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


NOISES: Registry[Callable[..., NoiseProcess]] = Registry("exploration noise")


def _check_std(std: float) -> float:
    std = float(std)
    if not std >= 0.0:
        raise ValueError(f"exploration std must be >= 0, got {std}")
    return std


@NOISES.register("gaussian")
def gaussian_noise(std: float = 0.1, **_unused) -> NoiseProcess:
    """Independent Gaussian noise ``N(0, std²)`` per action dimension and step."""
    std = _check_std(std)

    def init(action_dim: int) -> jax.Array:
        return jnp.zeros((action_dim,), jnp.float32)

    def sample(state, key, reset):
        del reset
        return std * jax.random.normal(key, state.shape, state.dtype), state

    return NoiseProcess(init, sample)


@NOISES.register("ou")
def ou_noise(std: float = 0.2, theta: float = 0.15, dt: float = 1e-2,
             **_unused) -> NoiseProcess:
    """Ornstein–Uhlenbeck noise ``x ← x − θ x dt + σ √dt ε`` (mean 0), reset per episode.

    Args:
      std: ``σ``, the diffusion scale.
      theta: ``θ > 0``, the mean-reversion rate.
      dt: ``dt > 0``, the time step; ``θ dt <= 1``.
    """
    std = _check_std(std)
    if not (theta > 0 and dt > 0 and theta * dt <= 1):
        raise ValueError(f"OU noise needs theta > 0, dt > 0 and theta * dt <= 1, got "
                         f"theta={theta}, dt={dt}")

    def init(action_dim: int) -> jax.Array:
        return jnp.zeros((action_dim,), jnp.float32)

    def sample(state, key, reset):
        x = jnp.where(reset, jnp.zeros_like(state), state)
        eps = jax.random.normal(key, state.shape, state.dtype)
        x = x - theta * x * dt + std * jnp.sqrt(dt) * eps
        return x, x

    return NoiseProcess(init, sample)
