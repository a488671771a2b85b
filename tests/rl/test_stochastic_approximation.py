"""Stochastic approximation against hand-computed iterates and closed forms."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl import stochastic_approximation as sa
from tests.tolerances import F64, assert_close


def test_incremental_mean_is_the_prefix_mean(x64):
    x = np.asarray(jax.random.normal(jax.random.key(0), (500, 3)))
    k = np.arange(1, 501)[:, None]
    assert_close(sa.incremental_mean(x), np.cumsum(x, axis=0) / k, F64)
    # jitted, scalar samples, float32
    xs = jnp.arange(1.0, 7.0, dtype=jnp.float32)
    out = jax.jit(sa.incremental_mean)(xs)
    assert_close(out, jnp.cumsum(xs) / jnp.arange(1, 7))


def test_incremental_mean_constant_step(x64):
    x = np.asarray(jax.random.normal(jax.random.key(1), (50,)))
    alpha, w = 0.2, 3.0
    expected = []
    for xk in x:  # w_{k+1} = w_k - α (w_k - x_k), by hand
        w = w - alpha * (w - xk)
        expected.append(w)
    assert_close(sa.incremental_mean(x, alpha, w1=3.0), expected, F64)
    # closed form: (1-α)^N w1 + Σ_i α (1-α)^{N-i} x_i
    n = len(x)
    closed = (1 - alpha) ** n * 3.0 + sum(alpha * (1 - alpha) ** (n - 1 - i) * x[i]
                                          for i in range(n))
    assert abs(float(sa.incremental_mean(x, alpha, w1=3.0)[-1]) - closed) < 1e-12
    # a callable step size
    same = sa.incremental_mean(x, lambda k: jnp.full_like(k, alpha), w1=3.0)
    assert_close(same, expected, F64)


def test_robbins_monro_by_hand(x64):
    # noise-free tanh(w - 1) from w1 = 3, a_k = 1/k
    w, expected = 3.0, [3.0]
    for k in range(1, 8):
        w = w - (1.0 / k) * math.tanh(w - 1.0)
        expected.append(w)
    iterates = sa.robbins_monro(lambda w, key: jnp.tanh(w - 1.0), 3.0, 7)
    assert iterates.shape == (8,)
    assert_close(iterates, expected, F64)


def test_robbins_monro_noise_follows_the_key_protocol(x64):
    key = jax.random.key(5)
    g = lambda w, k: w**3 - 5.0 + jax.random.normal(k, w.shape, w.dtype)
    w, expected = 0.0, [0.0]
    for k in range(1, 6):  # step k receives fold_in(key, k); a_k = 0.1 / k
        w = w - 0.1 / k * float(g(jnp.asarray(w), jax.random.fold_in(key, k)))
        expected.append(w)
    assert_close(sa.robbins_monro(g, 0.0, 5, lambda k: 0.1 / k, key), expected, F64)


def test_robbins_monro_converges():
    clean = sa.robbins_monro(lambda w, key: jnp.tanh(w - 1.0), 3.0, 1000)
    assert abs(float(clean[-1]) - 1.0) < 1e-2
    noisy = lambda w, key: w**3 - 5.0 + jax.random.normal(key, w.shape, w.dtype)
    run = jax.jit(jax.vmap(lambda key: sa.robbins_monro(noisy, 0.0, 1000, lambda k: 0.1 / k,
                                                        key)))
    finals = run(jax.random.split(jax.random.key(0), 8))[:, -1]
    assert np.abs(np.asarray(finals) - 5.0 ** (1 / 3)).max() < 0.05
    # vector iterates: independent roots per coordinate
    vec = sa.robbins_monro(lambda w, key: w - jnp.array([1.0, -2.0]), jnp.zeros(2), 3)
    assert_close(vec[1], [1.0, -2.0])  # a_1 = 1 jumps straight to the root


def _data():
    return jax.random.uniform(jax.random.key(0), (100, 2), minval=-10.0, maxval=10.0)


def test_bgd_reaches_the_sample_mean_in_one_step():
    x = _data()
    w1 = jnp.array([50.0, 50.0])
    traj = sa.bgd_mean(x, w1, 5)
    assert traj.shape == (6, 2)
    assert_close(traj[0], w1)
    for k in range(1, 6):  # α_1 = 1 lands on x̄, and the gradient is zero there
        assert_close(traj[k], x.mean(0), dict(rtol=1e-5, atol=1e-5))
    constant = sa.bgd_mean(x, w1, 3, step_size=0.5)  # w_{k+1} - x̄ = (1/2)^k (w1 - x̄)
    assert_close(constant[3] - x.mean(0), (w1 - x.mean(0)) / 8, dict(rtol=1e-5, atol=1e-4))


def test_sgd_steps_onto_samples():
    x = np.asarray(_data())
    traj = np.asarray(sa.sgd_mean(x, jnp.array([50.0, 50.0]), 20, jax.random.key(1),
                                  step_size=1.0))
    # with α = 1 every iterate is (up to rounding) the sample drawn at that step
    for w in traj[1:]:
        assert np.min(np.abs(x - w).max(-1)) < 1e-5
    assert len({tuple(np.round(w, 3)) for w in traj[1:]}) > 10  # random draws


def test_mbgd_converges_to_the_mean():
    x = _data()
    w1 = jnp.array([50.0, 50.0])
    mean = np.asarray(x.mean(0))
    errors = {m: float(np.linalg.norm(np.asarray(sa.mbgd_mean(x, w1, 200, m,
                                                              jax.random.key(2))[-1]) - mean))
              for m in (1, 50)}
    # with α_k = 1/k the iterate is the mean of the k·m samples drawn so far
    assert errors[50] < 0.3 and errors[1] < 1.5
    runs = jax.vmap(lambda k: sa.mbgd_mean(x, w1, 30, 5, k))(jax.random.split(jax.random.key(3), 4))
    assert runs.shape == (4, 31, 2)


def test_bad_input():
    x = _data()
    with pytest.raises(ValueError, match=r"x must have shape \[N, D\]"):
        sa.bgd_mean(x[:, 0], jnp.zeros(2), 3)
    with pytest.raises(ValueError, match=r"w1 must have shape \[D\]"):
        sa.sgd_mean(x, jnp.zeros(3), 3, jax.random.key(0))
    with pytest.raises(ValueError, match="batch_size"):
        sa.mbgd_mean(x, jnp.zeros(2), 3, 0, jax.random.key(0))
    with pytest.raises(ValueError, match="num_steps"):
        sa.robbins_monro(lambda w, k: w, 0.0, -1)
    with pytest.raises(ValueError, match="step_size"):
        sa.incremental_mean(jnp.ones(3), step_size=0.0)
    with pytest.raises(ValueError, match="g"):
        sa.robbins_monro(lambda w, k: jnp.zeros(3), 0.0, 2)
    with pytest.raises(ValueError, match="w1"):
        sa.incremental_mean(jnp.ones((3, 2)), w1=jnp.zeros(3))
    with pytest.raises(ValueError, match=r"x must have shape \[N, \.\.\.\]"):
        sa.incremental_mean(jnp.float32(1.0))
