"""Metric losses against brute-force numpy loops over pairs and triplets."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.tolerances import assert_close
from vision.face.metric_losses import (
    TRIPLET_MINING,
    center_loss,
    center_update,
    contrastive_loss,
    pairwise_distances,
    triplet_loss,
)

TOL = dict(rtol=1e-9, atol=1e-12)
jit_triplet = jax.jit(triplet_loss, static_argnames=("mining", "margin", "normalize", "squared"))


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 4))
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3, 4])      # ids 3 and 4 have no positive
    return x, y


def _np_dist(x, normalize=True, squared=True):
    if normalize:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    d = np.array([[np.sum((a - b) ** 2) for b in x] for a in x])
    return d if squared else np.sqrt(d)


def ref_batch_all(d, y, margin):
    losses = [max(d[a, p] - d[a, n] + margin, 0.0)
              for a, p, n in itertools.product(range(len(y)), repeat=3)
              if a != p and y[a] == y[p] and y[n] != y[a]]
    active = [v for v in losses if v > 0]
    return sum(active) / max(len(active), 1)


def ref_batch_hard(d, y, margin):
    out = []
    for a in range(len(y)):
        pos = [d[a, p] for p in range(len(y)) if p != a and y[p] == y[a]]
        neg = [d[a, n] for n in range(len(y)) if y[n] != y[a]]
        if pos and neg:
            out.append(max(max(pos) - min(neg) + margin, 0.0))
    return float(np.mean(out)) if out else 0.0


def ref_semi_hard(d, y, margin):
    out = []
    for a, p in itertools.product(range(len(y)), repeat=2):
        if a == p or y[a] != y[p]:
            continue
        neg = [d[a, n] for n in range(len(y)) if y[n] != y[a]]
        if not neg:
            continue
        farther = [v for v in neg if v > d[a, p]]
        chosen = min(farther) if farther else max(neg)
        out.append(max(d[a, p] - chosen + margin, 0.0))
    return float(np.mean(out)) if out else 0.0


REFS = {"batch_all": ref_batch_all, "batch_hard": ref_batch_hard, "semi_hard": ref_semi_hard}


@pytest.mark.parametrize("mining", sorted(REFS))
@pytest.mark.parametrize("normalize, squared, margin", [(True, True, 0.2), (False, False, 1.0)])
def test_triplet_losses_equal_brute_force(x64, batch, mining, normalize, squared, margin):
    x, y = batch
    got = jit_triplet(x, y, mining=mining, margin=margin, normalize=normalize, squared=squared)
    want = REFS[mining](_np_dist(x, normalize, squared), y, margin)
    assert want > 0
    assert_close(got, want, TOL)


def test_pairwise_distances_and_edge_cases(x64, batch):
    x, _ = batch
    assert_close(pairwise_distances(x, normalize=False, squared=False),
                 _np_dist(x, False, False), TOL)
    # no valid triplet (all one identity, or all distinct): zero loss
    for labels in (np.zeros(10, int), np.arange(10)):
        for mining in TRIPLET_MINING.names():
            assert float(jit_triplet(x, labels, mining=mining, margin=0.2, normalize=True,
                                     squared=True)) == 0.0
    # coincident embeddings: finite gradients through the square root, every mining
    same = np.repeat(x[:2], 2, axis=0)

    @jax.jit
    @jax.grad
    def grad_all(e):
        return sum(triplet_loss(e, jnp.array([0, 0, 1, 1]), mining=m, squared=False)
                   for m in TRIPLET_MINING.names())

    assert np.all(np.isfinite(np.asarray(grad_all(same))))


def test_contrastive_loss_equals_formula(x64):
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    b[0] = a[0]                                        # zero distance: finite gradient
    same = np.array([True, False, True, False, False, True])
    d = np.linalg.norm(a - b, axis=1)
    want = np.mean(0.5 * np.where(same, d**2, np.maximum(2.0 - d, 0.0) ** 2))
    assert_close(contrastive_loss(a, b, same, margin=2.0), want, TOL)
    g = jax.jit(jax.grad(lambda u: contrastive_loss(u, b, ~same, margin=2.0)))(a)
    assert np.all(np.isfinite(np.asarray(g)))


def test_center_loss_and_update_equal_formula(x64):
    rng = np.random.default_rng(2)
    x, c = rng.normal(size=(7, 3)), rng.normal(size=(4, 3))
    y = np.array([0, 1, 1, 3, 3, 3, 0])
    want = np.mean([0.5 * np.sum((x[i] - c[y[i]]) ** 2) for i in range(7)])
    assert_close(center_loss(x, c, y), want, TOL)
    updated = c.copy()
    for j in range(4):
        members = x[y == j]
        delta = np.sum(c[j] - members, axis=0) / (1 + len(members))
        updated[j] = c[j] - 0.3 * delta
    assert_close(center_update(c, x, y, alpha=0.3), updated, TOL)
    assert_close(center_update(c, x, y)[2], c[2], TOL)         # absent class: unchanged


def test_bad_input_named():
    x, y = jnp.ones((4, 3)), jnp.array([0, 0, 1, 1])
    with pytest.raises(ValueError, match=r"embeddings must have shape \[B, D\]"):
        triplet_loss(jnp.ones(4), y)
    with pytest.raises(ValueError, match=r"labels must have shape \[B\] = \(4\)"):
        triplet_loss(x, jnp.array([0, 1]))
    with pytest.raises(ValueError, match="embeddings must be finite"):
        triplet_loss(x.at[0, 0].set(jnp.nan), y)
    with pytest.raises(KeyError, match="unknown triplet mining 'hard'"):
        triplet_loss(x, y, mining="hard")
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        center_loss(x, jnp.ones((2, 3)), jnp.array([0, 1, 2, 0]))
    with pytest.raises(ValueError, match=r"centers must have shape \[C, D\] with D = 3"):
        center_update(jnp.ones((2, 2)), x, y)
    with pytest.raises(ValueError, match="emb2 must have the shape of emb1"):
        contrastive_loss(x, jnp.ones((3, 3)), jnp.ones(4, bool))
    with pytest.raises(ValueError, match=r"same must have shape \[P\] = \(4\)"):
        contrastive_loss(x, x, jnp.ones(3, bool))
    # traced: NaN, never a plausible number
    assert np.isnan(float(jax.jit(lambda e: triplet_loss(e, y))(x.at[0, 0].set(jnp.inf))))
    assert np.isnan(float(jax.jit(lambda lab: center_loss(x, jnp.ones((2, 3)), lab))(
        jnp.array([0, 1, 2, 0]))))
