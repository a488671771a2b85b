"""Stochastic approximation: incremental means, Robbins–Monro, and SGD on mean estimation.

* :func:`incremental_mean`: ``w_{k+1} = w_k − α_k (w_k − x_k)``. With
  ``α_k = 1/k`` the iterate ``w_{k+1}`` is exactly the mean of ``x_1 … x_k``; a
  constant ``α`` gives an exponentially weighted mean.
* :func:`robbins_monro`: find a root of ``g(w) = 0`` from noisy observations
  ``g̃(w, η) = g(w) + η``: ``w_{k+1} = w_k − a_k g̃(w_k, η_k)``. Converges when ``g``
  is increasing with bounded slope, ``Σ a_k = ∞`` and ``Σ a_k² < ∞`` (e.g.
  ``a_k = 1/k``), and the noise has zero mean and bounded variance.
* :func:`sgd_mean`, :func:`mbgd_mean`, :func:`bgd_mean`: gradient descent on
  ``J(w) = E[½ ‖w − X‖²]``, whose minimiser is ``E[X]``: the gradient
  ``w − x`` is estimated from one random sample (SGD), ``m`` random samples
  (mini-batch GD) or the whole data set (batch GD).

Every routine is one ``lax.scan`` over iterations returning the whole trajectory,
so it jit-compiles and vmaps over keys, step sizes and initial guesses.

Example:
    >>> x = jax.random.normal(jax.random.key(0), (1000,))
    >>> means = incremental_mean(x)                      # == jnp.cumsum(x) / k
    >>> g = lambda w, key: jnp.tanh(w - 1.0)             # root at w = 1
    >>> robbins_monro(g, 3.0, 200)[-1]                   # ≈ 1

Reference: H. Robbins & S. Monro, "A Stochastic Approximation Method", *Annals of
Mathematical Statistics* 22 (1951); S. Zhao, *Mathematical Foundations of
Reinforcement Learning* (2025), chapter 6.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from common.checks import check_int

StepSize = float | Callable[[jax.Array], jax.Array] | None


def _step_sizes(step_size: StepSize, num_steps: int, dtype) -> jax.Array:
    """``[num_steps]`` step sizes ``α_1 … α_n`` (default ``α_k = 1/k``)."""
    k = jnp.arange(1, num_steps + 1, dtype=dtype)
    if step_size is None:
        return 1.0 / k
    if callable(step_size):
        alphas = jnp.broadcast_to(jnp.asarray(step_size(k), dtype), (num_steps,))
        return alphas
    if isinstance(step_size, (int, float, np.number)) and not step_size > 0:
        raise ValueError(f"step_size must be > 0, got {step_size}")
    return jnp.full((num_steps,), step_size, dtype)


def incremental_mean(x, step_size: StepSize = None, w1=None) -> jax.Array:
    """Incremental mean estimation ``w_{k+1} = w_k − α_k (w_k − x_k)``.

    Args:
      x: ``[N, ...]`` samples ``x_1 … x_N``.
      step_size: ``None`` for ``α_k = 1/k`` (then ``w_{k+1} = (1/k) Σ_{i≤k} x_i``), a
        constant ``α > 0``, or a function ``k -> α_k`` of the 1-based ``[N]`` counts.
      w1: ``[...]`` initial estimate (default zeros; irrelevant when ``α_1 = 1``).

    Returns:
      ``[N, ...]`` the estimates ``w_2 … w_{N+1}`` after each sample.

    Example:
        >>> incremental_mean(jnp.array([1.0, 3.0, 5.0]))
        Array([1., 2., 3.], dtype=float32)

    Reference: Zhao (2025), §6.1.
    """
    x = jnp.asarray(x)
    if x.ndim < 1:
        raise ValueError(f"x must have shape [N, ...], got {x.shape}")
    dtype = jnp.result_type(x.dtype, float)
    x = x.astype(dtype)
    alphas = _step_sizes(step_size, x.shape[0], dtype)
    w1 = jnp.zeros(x.shape[1:], dtype) if w1 is None else jnp.asarray(w1, dtype)
    if w1.shape != x.shape[1:]:
        raise ValueError(f"w1 must have shape {x.shape[1:]} (one sample of x), got {w1.shape}")

    return _incremental_mean(x, alphas, w1)


@jax.jit
def _incremental_mean(x, alphas, w1):
    def step(w, inputs):
        alpha, xk = inputs
        w = w - alpha * (w - xk)
        return w, w

    _, trajectory = jax.lax.scan(step, w1, (alphas, x))
    return trajectory


def robbins_monro(g: Callable, w1, num_steps: int, step_size: StepSize = lambda k: 1.0 / k,
                  key=None) -> jax.Array:
    """The Robbins–Monro iteration ``w_{k+1} = w_k − a_k g̃(w_k, η_k)``.

    Args:
      g: ``g(w, key) -> [...]`` a (possibly noisy) observation of ``g`` at ``w``;
        step ``k`` receives ``fold_in(key, k)``. Deterministic ``g`` ignores the key.
      w1: ``[...]`` initial guess.
      num_steps: ``n`` iterations (static).
      step_size: ``k -> a_k`` of the 1-based ``[n]`` counts (default ``1/k``), or a
        constant.
      key: PRNG key for the noise (default ``jax.random.key(0)``).

    Returns:
      ``[n + 1, ...]`` the iterates ``w_1 … w_{n+1}``.

    Example:
        >>> noisy = lambda w, key: w**3 - 5.0 + jax.random.normal(key)
        >>> robbins_monro(noisy, 0.0, 1000, lambda k: 0.1 / k, jax.random.key(0))[-1]

    Reference: Robbins & Monro (1951); Zhao (2025), §6.2.
    """
    num_steps = check_int(num_steps, "num_steps", 0)
    w1 = jnp.asarray(w1, jnp.result_type(jnp.asarray(w1).dtype, float))
    alphas = _step_sizes(step_size, num_steps, w1.dtype)
    key = jax.random.key(0) if key is None else key
    return _robbins_monro(g, w1, alphas, key)


@functools.partial(jax.jit, static_argnums=0)
def _robbins_monro(g, w1, alphas, key):
    def step(w, inputs):
        k, alpha = inputs
        observation = jnp.asarray(g(w, jax.random.fold_in(key, k)))
        if observation.shape != w.shape:
            raise ValueError(f"g(w, key) must return the shape of w1 {w.shape}, "
                             f"got {observation.shape}")
        w = w - alpha * observation.astype(w.dtype)
        return w, w

    steps = jnp.arange(1, alphas.shape[0] + 1)
    _, trajectory = jax.lax.scan(step, w1, (steps, alphas))
    return jnp.concatenate([w1[None], trajectory], axis=0)


def _check_data(x, w1):
    x = jnp.asarray(x)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"x must have shape [N, D] with N >= 1, got {x.shape}")
    dtype = jnp.result_type(x.dtype, float)
    w1 = jnp.asarray(w1, dtype)
    if w1.shape != x.shape[1:]:
        raise ValueError(f"w1 must have shape [D] = ({x.shape[1]},), got {w1.shape}")
    return x.astype(dtype), w1


def _gd_mean(x, w1, num_steps, batch_size, step_size, key):
    """Shared scan: ``w_{k+1} = w_k − α_k (w_k − mean of the k-th batch)``."""
    return _gd_mean_scan(x, w1, _step_sizes(step_size, num_steps, x.dtype), key, batch_size)


@functools.partial(jax.jit, static_argnums=4)
def _gd_mean_scan(x, w1, alphas, key, batch_size):
    N = x.shape[0]

    def step(w, inputs):
        k, alpha = inputs
        if batch_size is None:
            batch_mean = jnp.mean(x, axis=0)  # [D], the whole data set
        else:
            bits = jax.random.bits(jax.random.fold_in(key, k), (batch_size,), jnp.uint32)
            idx = (bits % N).astype(jnp.int32)  # uniform indices, modulo bias < N / 2³²
            batch_mean = jnp.mean(x[idx], axis=0)  # [D]
        w = w - alpha * (w - batch_mean)
        return w, w

    _, trajectory = jax.lax.scan(step, w1, (jnp.arange(alphas.shape[0]), alphas))
    return jnp.concatenate([w1[None], trajectory], axis=0)


def mbgd_mean(x, w1, num_steps: int, batch_size: int, key, step_size: StepSize = None
              ) -> jax.Array:
    """Mini-batch gradient descent on ``J(w) = E[½ ‖w − X‖²]`` over the samples ``x``.

    ``w_{k+1} = w_k − α_k (w_k − x̄_k)`` where ``x̄_k`` is the mean of ``m`` samples
    drawn uniformly with replacement from ``x``. (With ``m = N`` this is still
    random, unlike :func:`bgd_mean`.) With ``α_k = 1/k``, ``w_{k+1}`` is the mean
    of all ``k m`` samples drawn so far.

    Args:
      x: ``[N, D]`` data.
      w1: ``[D]`` initial guess.
      num_steps: iterations (static).
      batch_size: ``m`` >= 1 (static).
      key: PRNG key for the batches.
      step_size: ``None`` (``α_k = 1/k``), a constant, or ``k -> α_k``.

    Returns:
      ``[num_steps + 1, D]`` the iterates ``w_1 … w_{n+1}``.

    Example:
        >>> x = jax.random.uniform(jax.random.key(0), (100, 2), minval=-10, maxval=10)
        >>> mbgd_mean(x, jnp.array([50.0, 50.0]), 30, 5, jax.random.key(1))[-1]

    Reference: Zhao (2025), §6.4.
    """
    num_steps = check_int(num_steps, "num_steps", 0)
    batch_size = check_int(batch_size, "batch_size")
    x, w1 = _check_data(x, w1)
    return _gd_mean(x, w1, num_steps, batch_size, step_size, key)


def sgd_mean(x, w1, num_steps: int, key, step_size: StepSize = None) -> jax.Array:
    """Stochastic gradient descent on ``J(w) = E[½ ‖w − X‖²]``: one random sample per step.

    ``w_{k+1} = w_k − α_k (w_k − x_{i_k})`` with ``i_k`` uniform over the data: the
    mini-batch rule with ``m = 1``. See :func:`mbgd_mean` for Args and Returns.

    Example:
        >>> sgd_mean(x, jnp.array([50.0, 50.0]), 30, jax.random.key(1))[-1]

    Reference: Robbins & Monro (1951); Zhao (2025), §6.4.
    """
    return mbgd_mean(x, w1, num_steps, 1, key, step_size)


def bgd_mean(x, w1, num_steps: int, step_size: StepSize = None) -> jax.Array:
    """Batch gradient descent on the empirical ``J(w) = (1/N) Σ_i ½ ‖w − x_i‖²``.

    ``w_{k+1} = w_k − α_k (w_k − x̄)`` with ``x̄`` the mean of all ``N`` samples;
    deterministic (with ``α_1 = 1`` it lands on ``x̄`` after one step).

    Args:
      x: ``[N, D]`` data.
      w1: ``[D]`` initial guess.
      num_steps: iterations (static).
      step_size: ``None`` (``α_k = 1/k``), a constant, or ``k -> α_k``.

    Returns:
      ``[num_steps + 1, D]`` the iterates ``w_1 … w_{n+1}``.

    Example:
        >>> bgd_mean(x, jnp.array([50.0, 50.0]), 30, step_size=0.1)[-1]

    Reference: Zhao (2025), §6.4.
    """
    num_steps = check_int(num_steps, "num_steps", 0)
    x, w1 = _check_data(x, w1)
    return _gd_mean(x, w1, num_steps, None, step_size, None)
