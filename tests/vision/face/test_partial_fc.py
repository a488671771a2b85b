"""Partial FC: the sample's properties, the loss against numpy, and sharded (8 simulated
CPU devices, centres split along ``model``) = single device, loss and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from common.sharding import make_mesh
from tests.tolerances import assert_close
from vision.face.partial_fc import (
    make_sharded_partial_fc_loss,
    partial_fc_loss,
    sample_centers,
    samples_per_shard,
)

C, D, B = 256, 8, 8
LABELS = np.array([0, 5, 5, 100, 200, 255, 31, 32])


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(B, D)).astype(np.float32),
            rng.normal(size=(C, D)).astype(np.float32), LABELS, jax.random.key(3))


def test_sample_holds_positives_and_random_negatives():
    sample = jax.jit(sample_centers, static_argnums=(2, 3, 4))
    seen = np.zeros(C, int)
    for seed in range(30):
        s = sample(jax.random.key(seed), jnp.asarray(LABELS), C, 0.25, 4)
        idx = np.asarray(s.indices)
        assert idx.shape == (4 * samples_per_shard(C, 0.25, 4),) == (64,)
        assert np.all(np.diff(idx) > 0)                                   # sorted, distinct
        assert np.all(np.bincount(idx // 64, minlength=4) == 16)          # 16 per block
        np.testing.assert_array_equal(idx[np.asarray(s.labels)], LABELS)  # remapped labels
        assert bool(s.valid)
        seen[idx] += 1
    negatives = np.setdiff1d(np.arange(C), LABELS)
    assert np.all(seen[np.unique(LABELS)] == 30)
    # negatives drawn uniformly: 30 draws at rate ≈ (16 − positives in block) / 64
    assert 0.15 < seen[negatives].mean() / 30 < 0.26 and seen[negatives].min() >= 1


def _np_arcface_ce(x, w, y, s=64.0, m=0.5):
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    wn = w / np.linalg.norm(w, axis=1, keepdims=True)
    cos = np.clip(xn @ wn.T, -1, 1)
    rows = np.arange(len(y))
    c = cos[rows, y]
    phi = np.where(c > np.cos(np.pi - m), np.cos(np.arccos(c) + m), c - np.sin(np.pi - m) * m)
    logits = s * cos
    logits[rows, y] = s * phi
    shifted = logits - logits.max(1, keepdims=True)
    return np.mean(np.log(np.exp(shifted).sum(1)) - shifted[rows, y])


def test_loss_equals_numpy_on_the_sample(problem):
    x, w, y, key = problem
    s = sample_centers(key, y, C, 0.1)
    idx = np.asarray(s.indices)
    want = _np_arcface_ce(x.astype(np.float64), w[idx].astype(np.float64), np.asarray(s.labels))
    assert_close(partial_fc_loss(x, w, y, key, sample_rate=0.1), want, dict(rtol=1e-5, atol=1e-5))
    # sample_rate = 1: the full classifier
    assert_close(partial_fc_loss(x, w, y, key, sample_rate=1.0),
                 _np_arcface_ce(x.astype(np.float64), w.astype(np.float64), y),
                 dict(rtol=1e-5, atol=1e-5))


@pytest.mark.parametrize("data, model, margin", [
    (2, 4, "arcface"), pytest.param(1, 8, "sphereface", marks=pytest.mark.slow)])
def test_sharded_equals_single_device(problem, data, model, margin):
    assert jax.device_count() >= 8, "tests/conftest.py provides 8 simulated CPU devices"
    x, w, y, key = problem
    mesh = make_mesh(data=data, model=model)
    sharded = make_sharded_partial_fc_loss(mesh, C, margin=margin, sample_rate=0.5)
    w_sharded = jax.device_put(w, NamedSharding(mesh, P("model", None)))
    loss, (gx, gw) = jax.jit(jax.value_and_grad(sharded, argnums=(0, 1)))(x, w_sharded, y, key)
    ref_loss, (rx, rw) = jax.jit(jax.value_and_grad(
        lambda a, b: partial_fc_loss(a, b, y, key, margin=margin, sample_rate=0.5,
                                     num_shards=model), argnums=(0, 1)))(x, w)
    tol = dict(rtol=1e-5, atol=1e-5)
    assert_close(loss, ref_loss, tol)
    assert_close(gx, rx, tol)
    assert_close(gw, rw, tol)
    assert gw.sharding.spec == P("model")                   # gradients stay sharded
    sampled = np.asarray(sample_centers(key, y, C, 0.5, model).indices)
    untouched = np.setdiff1d(np.arange(C), sampled)
    assert np.all(np.asarray(gw)[untouched] == 0) and np.any(np.asarray(gw)[sampled] != 0)


def test_bad_input_named(problem):
    x, w, y, key = problem
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 256\)"):
        partial_fc_loss(x, w, np.r_[y[:-1], 256], key)
    with pytest.raises(ValueError, match=r"embeddings must have shape \[B, D\]"):
        partial_fc_loss(x[0], w, y, key)
    with pytest.raises(ValueError, match="embeddings must be finite"):
        partial_fc_loss(np.where(np.eye(B, D) > 0, np.nan, x), w, y, key)
    with pytest.raises(ValueError, match="sample_rate must be a number in"):
        partial_fc_loss(x, w, y, key, sample_rate=0.0)
    with pytest.raises(ValueError, match="sample_rate keeps fewer centres per shard"):
        partial_fc_loss(x, w, y, key, sample_rate=0.04, num_shards=8)    # 1 per shard < 3
    with pytest.raises(ValueError, match="num_classes = 256 must be divisible by num_shards"):
        sample_centers(key, y, C, 0.5, 3)
    mesh = make_mesh(data=8, model=1)
    sharded = make_sharded_partial_fc_loss(mesh, C, sample_rate=0.5)
    with pytest.raises(ValueError, match="batch size divisible by the data axis size 8"):
        sharded(x[:4], w, y[:4], key)
    # traced: a label no shard holds makes the loss NaN
    bad = jax.jit(lambda lab: partial_fc_loss(x, w, lab, key, sample_rate=0.5))
    assert np.isnan(float(bad(jnp.asarray(np.r_[y[:-1], 999]))))
