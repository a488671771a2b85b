"""Sample metrics against scipy / direct formulas (the convolution is tested in
tests/common/nn/test_conv.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import wasserstein_distance

from generative.metrics import mmd_rbf, sliced_wasserstein
from tests.tolerances import F64, assert_close


def test_sliced_wasserstein_matches_scipy_per_direction(x64):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3))
    y = rng.normal(size=(50, 3)) * 1.5 + 0.3
    key = jax.random.key(1)
    sw1 = sliced_wasserstein(jnp.asarray(x), jnp.asarray(y), key, n_projections=16, p=1)
    theta = np.asarray(jax.random.normal(key, (3, 16), jnp.float64))
    theta = theta / np.linalg.norm(theta, axis=0, keepdims=True)
    ref = np.mean([wasserstein_distance(x @ theta[:, k], y @ theta[:, k]) for k in range(16)])
    assert_close(sw1, ref, F64)
    sw2 = sliced_wasserstein(jnp.asarray(x), jnp.asarray(y), key, n_projections=16, p=2)
    gaps = np.sort(x @ theta, 0) - np.sort(y @ theta, 0)
    assert_close(sw2, np.sqrt(np.mean(gaps**2)), F64)
    assert float(sliced_wasserstein(jnp.asarray(x), jnp.asarray(x), key)) == 0.0


def test_mmd_matches_direct_formula(x64):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(7, 2))
    y = rng.normal(size=(5, 2)) + 1.0
    widths = (0.5, 2.0)

    def k(a, b):
        d2 = ((a[:, None] - b[None]) ** 2).sum(-1)
        return sum(np.exp(-d2 / (2 * h * h)) for h in widths)

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    ref = ((kxx.sum() - np.trace(kxx)) / 42 + (kyy.sum() - np.trace(kyy)) / 20
           - 2 * kxy.mean())
    assert_close(mmd_rbf(jnp.asarray(x), jnp.asarray(y), bandwidths=widths), ref, F64)


def test_metric_bad_inputs():
    with pytest.raises(ValueError, match="same number N"):
        sliced_wasserstein(jnp.ones((3, 2)), jnp.ones((4, 2)), jax.random.key(0))
    with pytest.raises(ValueError, match="same point dimension"):
        mmd_rbf(jnp.ones((3, 2)), jnp.ones((3, 3)))
    with pytest.raises(ValueError, match="p must be 1 or 2"):
        sliced_wasserstein(jnp.ones((3, 2)), jnp.ones((3, 2)), jax.random.key(0), p=3)
    with pytest.raises(ValueError, match="bandwidths must be finite and > 0"):
        mmd_rbf(jnp.ones((3, 2)), jnp.ones((3, 2)), bandwidths=(0.0,))
