"""Verification and identification against insightface's LFW loop ported to numpy,
scikit-learn's ROC and KFold, and brute-force threshold searches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import roc_curve as sk_roc_curve
from sklearn.model_selection import KFold
from sklearn.preprocessing import normalize as sk_normalize

from tests.tolerances import assert_close
from vision.face.verify import (
    dir_at_far,
    fuse_flip,
    identify,
    kfold_indices,
    rank1_accuracy,
    roc_curve,
    tar_at_far,
    verify_kfold,
)


def insightface_lfw(emb1, emb2, same, num_folds=10):
    """insightface's ``calculate_roc`` (verification.py) as loops, in float64."""
    thresholds = np.arange(0, 4, 0.01)
    e1, e2 = sk_normalize(emb1), sk_normalize(emb2)
    dist = np.sum(np.square(e1 - e2), 1)

    def accuracy(threshold, d, actual):
        predict = np.less(d, threshold)
        tp = np.sum(predict & actual)
        fp = np.sum(predict & ~actual)
        tn = np.sum(~predict & ~actual)
        fn = np.sum(~predict & actual)
        tpr = 0.0 if tp + fn == 0 else tp / (tp + fn)
        fpr = 0.0 if fp + tn == 0 else fp / (fp + tn)
        return tpr, fpr, (tp + tn) / d.size

    accs, best, tprs, fprs = [], [], [], []
    for train, test in KFold(n_splits=num_folds, shuffle=False).split(np.arange(len(same))):
        acc_train = [accuracy(t, dist[train], same[train])[2] for t in thresholds]
        i = int(np.argmax(acc_train))
        best.append(thresholds[i])
        accs.append(accuracy(thresholds[i], dist[test], same[test])[2])
        rates = [accuracy(t, dist[test], same[test]) for t in thresholds]
        tprs.append([r[0] for r in rates])
        fprs.append([r[1] for r in rates])
    return (np.array(accs), np.array(best), np.mean(tprs, 0), np.mean(fprs, 0))


@pytest.fixture(scope="module")
def pairs():
    rng = np.random.default_rng(0)
    p = 123                                            # folds of 13 and 12 pairs
    same = rng.uniform(size=p) < 0.5
    e1 = rng.normal(size=(p, 16))
    noise = np.where(same, 0.9, 2.5)[:, None] * rng.normal(size=(p, 16))
    return e1, e1 + noise, same


def test_verify_kfold_equals_insightface(x64, pairs):
    e1, e2, same = pairs
    accs, best, tpr, fpr = insightface_lfw(e1, e2, same)
    got = verify_kfold(e1, e2, same)
    assert_close(got["accuracies"], accs, dict(rtol=1e-12, atol=1e-12))
    assert_close(got["thresholds"], best, dict(rtol=1e-12, atol=1e-12))
    assert_close(got["accuracy_mean"], accs.mean(), dict(rtol=1e-12, atol=1e-12))
    assert_close(got["accuracy_std"], accs.std(), dict(rtol=1e-9, atol=1e-12))
    assert_close(got["tpr"], tpr, dict(rtol=1e-12, atol=1e-12))
    assert_close(got["fpr"], fpr, dict(rtol=1e-12, atol=1e-12))
    assert 0.6 < float(got["accuracy_mean"]) < 1.0
    # five folds, and jitted
    accs5, best5, _, _ = insightface_lfw(e1, e2, same, 5)
    jitted = jax.jit(verify_kfold, static_argnums=3)(e1, e2, same, 5)
    assert_close(jitted["accuracies"], accs5, dict(rtol=1e-12, atol=1e-12))
    assert_close(jitted["thresholds"], best5, dict(rtol=1e-12, atol=1e-12))


def test_kfold_indices_are_sklearn_kfold():
    for n, k in [(123, 10), (20, 10), (7, 3)]:
        want = np.zeros(n, int)
        for fold, (_, test) in enumerate(KFold(n_splits=k, shuffle=False).split(np.arange(n))):
            want[test] = fold
        np.testing.assert_array_equal(kfold_indices(n, k), want)


def test_roc_and_tar_at_far_equal_sklearn():
    rng = np.random.default_rng(1)
    scores = np.round(rng.normal(size=300), 1)          # many ties
    same = rng.uniform(size=300) < 0.3
    scores[same] += 1.0
    fpr, tpr, thr = roc_curve(scores, same)
    sk_fpr, sk_tpr, sk_thr = sk_roc_curve(same, scores, drop_intermediate=False)
    assert_close(fpr, sk_fpr, dict(rtol=1e-12, atol=1e-12))
    assert_close(tpr, sk_tpr, dict(rtol=1e-12, atol=1e-12))
    assert_close(thr[1:], sk_thr[1:], dict(rtol=1e-12, atol=1e-12))
    tar = jax.jit(tar_at_far)
    for far in (0.0, 1e-3, 0.01, 0.1, 0.5, 1.0):
        want = sk_tpr[sk_fpr <= far].max()
        assert_close(tar(jnp.asarray(scores, jnp.float32), same, far), want,
                     dict(rtol=1e-6, atol=1e-7))


def test_identification_equals_brute_force():
    rng = np.random.default_rng(2)
    gallery_labels = np.arange(20) + 100
    centres = rng.normal(size=(20, 8))
    gallery = centres + 0.3 * rng.normal(size=(20, 8))
    probe_labels = np.r_[gallery_labels[rng.integers(0, 20, 40)], np.arange(25) + 500]
    probes = np.r_[centres[probe_labels[:40] - 100], rng.normal(size=(25, 8))]
    probes = probes + 0.6 * rng.normal(size=probes.shape)
    sim = sk_normalize(probes) @ sk_normalize(gallery).T
    top = sim.argmax(1)
    predicted, scores = identify(gallery, gallery_labels, probes)
    np.testing.assert_array_equal(np.asarray(predicted), gallery_labels[top])
    assert_close(scores, sim.max(1), dict(rtol=1e-5, atol=1e-6))
    mated = np.isin(probe_labels, gallery_labels)
    hit = gallery_labels[top] == probe_labels
    assert_close(rank1_accuracy(gallery, gallery_labels, probes[:40], probe_labels[:40]),
                 hit[:40].mean(), dict(rtol=1e-6, atol=0))
    best = sim.max(1)
    dir_jit = jax.jit(dir_at_far)
    for far in (0.0, 0.04, 0.2, 1.0):
        rates = [0.0]
        for t in np.r_[best, np.inf]:                   # every threshold, brute force
            if np.mean(best[~mated] >= t) <= far:
                rates.append(np.mean(hit[mated] & (best[mated] >= t)))
        assert_close(dir_jit(gallery, gallery_labels, probes, probe_labels, far),
                     max(rates), dict(rtol=1e-6, atol=1e-7))
    assert 0.0 < float(dir_at_far(gallery, gallery_labels, probes, probe_labels, 0.04)) < 1.0


def test_fuse_flip_is_insightface_sum_then_normalize():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    assert_close(fuse_flip(a.astype(np.float32), b.astype(np.float32)), sk_normalize(a + b),
                 dict(rtol=1e-5, atol=1e-6))


def test_bad_input_named_and_traced():
    e = jnp.ones((10, 4))
    same = jnp.ones(10, bool)
    with pytest.raises(ValueError, match=r"emb1 must have shape \[P, D\]"):
        verify_kfold(jnp.ones(10), e, same)
    with pytest.raises(ValueError, match="emb2 must be finite"):
        verify_kfold(e, e.at[3, 1].set(jnp.nan), same)
    with pytest.raises(ValueError, match=r"same must have shape \[P\] = \(10\)"):
        verify_kfold(e, e, jnp.ones(9, bool))
    with pytest.raises(ValueError, match="num_folds must be <= the number of pairs"):
        verify_kfold(e, e, same, num_folds=11)
    with pytest.raises(ValueError, match="same must hold both genuine"):
        roc_curve(jnp.arange(10.0), same)
    with pytest.raises(ValueError, match=r"far must lie in \[0, 1\]"):
        tar_at_far(jnp.arange(10.0), same, far=1.5)
    with pytest.raises(ValueError, match=r"probes must have shape \[Q, D\] with D = 4"):
        rank1_accuracy(e, jnp.arange(10), jnp.ones((3, 5)), jnp.arange(3))
    with pytest.raises(ValueError, match=r"probe_labels must have shape \[Q\] = \(3\)"):
        dir_at_far(e, jnp.arange(10), jnp.ones((3, 4)), jnp.arange(4))
    with pytest.raises(ValueError, match="emb_flipped must be finite"):
        fuse_flip(e, e.at[0, 0].set(jnp.inf))
    # traced non-finite embeddings: NaN, never a plausible accuracy
    out = jax.jit(verify_kfold)(e.at[3, 1].set(jnp.nan), e, same)
    assert np.isnan(float(out["accuracy_mean"]))
    assert np.isnan(float(jax.jit(rank1_accuracy)(e.at[0, 0].set(jnp.nan), jnp.arange(10),
                                                  e, jnp.arange(10))))
