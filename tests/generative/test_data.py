"""Toy data, Gaussian mixtures with exact scores, and the image loaders."""

import gzip
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import multivariate_normal

from common.registry import UnknownNameError
from generative.data import (
    TOY_DATASETS,
    GaussianMixture,
    checkerboard_log_prob,
    eight_gaussians,
    load_digits_images,
    load_fashion_mnist,
    mixture_score_fn,
    ncsn_mixture,
    read_idx,
    sample_toy,
)
from generative.sde import VPSDE
from tests.tolerances import F64, assert_close


def test_mixture_log_prob_matches_scipy(x64):
    mix = GaussianMixture((0.3, 0.7), ((0.0, 1.0), (2.0, -1.0)), 0.8)
    y = jnp.asarray(np.random.default_rng(0).normal(size=(5, 2)))
    # y = m x + s z: components N(m μ_k, (m² τ² + s²) I)
    m, s = 0.6, 0.5
    var = m**2 * 0.64 + s**2
    ref = np.log(0.3 * multivariate_normal([0.0, m], var * np.eye(2)).pdf(np.asarray(y))
                 + 0.7 * multivariate_normal([2 * m, -m], var * np.eye(2)).pdf(np.asarray(y)))
    assert_close(mix.log_prob(y, m, s), ref, F64)


def test_mixture_score_is_the_gradient_of_log_prob(x64):
    mix = eight_gaussians()
    y = jnp.asarray(np.random.default_rng(1).normal(size=(6, 2)) * 2)
    m = jnp.linspace(0.2, 1.0, 6)
    s = jnp.linspace(0.1, 2.0, 6)
    grad = jax.jit(jax.vmap(jax.grad(lambda yi, mi, si: mix.log_prob(yi[None], mi, si)[0])))(
        y, m, s)
    assert_close(mix.score(y, m, s), grad, F64)
    sde = VPSDE()
    t = jnp.linspace(0.1, 0.9, 6)
    mt, st = sde.marginal_prob(jnp.ones((6, 1)), t)
    assert_close(mixture_score_fn(mix, sde)(y, t), mix.score(y, mt[:, 0], st), F64)


@pytest.mark.parametrize("name", ["swiss_roll", "eight_gaussians", "checkerboard",
                                  "ncsn_mixture"])
def test_toys_are_deterministic_2d(name):
    sample = jax.jit(TOY_DATASETS.get(name), static_argnums=1)
    a = sample(jax.random.key(0), 500)
    assert a.shape == (500, 2) and bool(jnp.all(jnp.isfinite(a)))
    assert_close(a, sample(jax.random.key(0), 500))
    assert not np.allclose(a, sample(jax.random.key(1), 500))


def test_toy_supports():
    x = jax.jit(lambda k: checkerboard_log_prob(sample_toy("checkerboard", k, 4000)))(
        jax.random.key(1))
    assert bool(jnp.all(jnp.isfinite(x)))
    assert float(checkerboard_log_prob(jnp.asarray([[0.5, 0.5]]))[0]) == pytest.approx(
        -math.log(32))
    assert float(checkerboard_log_prob(jnp.asarray([[-1.0, 1.0]]))[0]) == -np.inf
    w = jax.jit(lambda k: jnp.mean(sample_toy("ncsn_mixture", k, 8000).sum(-1) > 0))(
        jax.random.key(2))
    assert abs(float(w) - 0.8) < 0.025
    with pytest.raises(UnknownNameError, match="unknown toy dataset 'moons'"):
        sample_toy("moons", jax.random.key(0), 3)


def test_mixture_bad_input():
    with pytest.raises(ValueError, match="same K"):
        GaussianMixture((1.0,), ((0.0,), (1.0,)))
    with pytest.raises(ValueError, match="must be > 0"):
        GaussianMixture((1.0, -1.0), ((0.0,), (1.0,)))
    with pytest.raises(ValueError, match=r"y must have shape \[B, 2\]"):
        ncsn_mixture().score(jnp.ones((3, 3)))


def _write_idx(path, array, code=0x08, compress=False):
    header = bytes([0, 0, code, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    (gzip.open if compress else open)(path, "wb").write(data)


def test_read_idx_and_fashion_loader(tmp_path, monkeypatch):
    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    labels = np.array([3, 7], np.uint8)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", images, compress=True)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", images[:1])
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels[:1], compress=True)
    data = load_fashion_mnist(tmp_path)
    assert data["x_train"].shape == (2, 28, 28, 1) and data["x_train"].dtype == np.uint8
    np.testing.assert_array_equal(data["x_train"][..., 0], images)
    np.testing.assert_array_equal(data["y_test"], [3])
    assert data["n_bins"] == 256
    ints = np.array([[1, -2], [3, 40000]], np.int32)
    _write_idx(tmp_path / "ints", ints, code=0x0C)
    np.testing.assert_array_equal(read_idx(tmp_path / "ints"), ints)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    monkeypatch.delenv("JAXATLAS_FASHION_MNIST", raising=False)
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path / "missing")


def test_digits_images():
    data = load_digits_images()
    assert data["x_train"].shape[1:] == (8, 8, 1) and data["n_bins"] == 17
    assert data["x_train"].min() == 0 and data["x_train"].max() == 16
    assert len(data["x_train"]) + len(data["x_test"]) == 1797
