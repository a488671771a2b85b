"""Generic combinators and deep ensembles: calibration measures vs numpy, boosting a
tree learner vs the gradient-boosting estimator, a deep ensemble trained in one vmap vs
its members trained alone, and bad arguments."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common.ensemble import bag, boost, make, stack
from common.ensemble.combinators import bootstrap_counts, fold_ids
from common.ensemble.deep import (
    MLPConfig,
    expected_calibration_error,
    fit_deep_ensemble,
    mlp_learner,
    nll,
    reliability_bins,
)
from common.ensemble.trees import fit_tree, predict_tree, regression_stats
from tests.tolerances import F32, assert_close


def test_calibration_measures_match_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 4)) * 2
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, 4, size=200)
    conf, pred = proba.max(1), proba.argmax(1)
    edges = np.linspace(0, 1, 11)
    ece, rows = 0.0, []
    for lo, hi in itertools.pairwise(edges):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            acc, c = np.mean(pred[inside] == labels[inside]), conf[inside].mean()
            ece += inside.mean() * abs(acc - c)
            rows.append((c, acc, inside.sum()))
        else:
            rows.append((0.0, 0.0, 0))
    b_conf, b_acc, b_count = reliability_bins(jnp.asarray(proba), jnp.asarray(labels), 10)
    assert_close(np.stack([b_conf, b_acc, b_count], 1), np.asarray(rows), F32)
    assert_close(expected_calibration_error(jnp.asarray(proba), jnp.asarray(labels), 10),
                 ece, F32)
    assert_close(nll(jnp.asarray(proba), jnp.asarray(labels)),
                 -np.mean(np.log(proba[np.arange(200), labels])), F32)
    with pytest.raises(ValueError, match="labels must have shape"):
        nll(jnp.asarray(proba), jnp.asarray(labels[:5]))
    with pytest.raises(ValueError, match="n_bins"):
        reliability_bins(jnp.asarray(proba), jnp.asarray(labels), 0)


def test_bootstrap_and_folds_skip_zero_weight_rows():
    w = jnp.asarray([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    counts = np.asarray(bootstrap_counts(jax.random.key(0), w))
    assert counts.sum() == 4 and counts[1] == 0 and counts[4] == 0
    assert np.asarray(fold_ids(w, 2)).tolist() == [0, -1, 0, 1, -1, 1]


def _stump_learner():
    def fit(key, X, y, w):
        stats, count = regression_stats(y, w)
        return fit_tree(key, X, stats, count, criterion="squared_error", max_depth=1)

    return fit, lambda tree, X: predict_tree(tree, X)[:, 0]


def test_boost_of_a_tree_learner_equals_gradient_boosting_regression():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(50, 3)).astype(np.float32)
    y = (X[:, 0] - X[:, 1] ** 2).astype(np.float32)
    fit_b, predict_b = boost(*_stump_learner(), n_stages=4, learning_rate=0.5)
    params = jax.jit(fit_b)(jax.random.key(0), jnp.asarray(X), jnp.asarray(y), jnp.ones(50))
    est = make("gradient_boosting", task="regression", n_estimators=4, max_depth=1,
               learning_rate=0.5)
    ref = est.predict(est.fit(jax.random.key(0), X, y), X)
    assert_close(predict_b(params, jnp.asarray(X)), ref, F32)


def test_combinators_reject_bad_arguments():
    with pytest.raises(ValueError, match="n_members"):
        bag(*_stump_learner(), n_members=0)
    with pytest.raises(ValueError, match="max_samples"):
        bag(*_stump_learner(), n_members=2, max_samples=1.5)
    with pytest.raises(ValueError, match="loss"):
        boost(*_stump_learner(), n_stages=2, loss="hinge")
    with pytest.raises(ValueError, match="n_folds"):
        stack([_stump_learner()], _stump_learner(), n_folds=1)
    with pytest.raises(ValueError, match="learners"):
        stack([], _stump_learner())


@pytest.mark.slow
def test_bag_and_stack_of_a_tree_learner():
    rng = np.random.default_rng(2)
    X = jnp.asarray(rng.normal(size=(40, 2)), jnp.float32)
    y = X[:, 0] * 3.0
    fit_b, predict_b = bag(*_stump_learner(), n_members=4)
    params = jax.jit(fit_b)(jax.random.key(0), X, y, jnp.ones(40))
    assert params["counts"].shape == (4, 40)
    members = jax.vmap(lambda t: predict_tree(t, X)[:, 0])(params["members"])
    assert_close(predict_b(params, X), jnp.mean(members, 0), F32)
    fit_s, predict_s = stack([_stump_learner()], _stump_learner(), n_folds=2)
    params = jax.jit(fit_s)(jax.random.key(0), X, y, jnp.ones(40))
    assert params["oof"].shape == (40, 1) and predict_s(params, X).shape == (40,)


def test_deep_ensemble_rejects_bad_arguments():
    X = np.zeros((8, 3), np.float32)
    y = np.zeros(8, np.int32)
    with pytest.raises(ValueError, match="members"):
        fit_deep_ensemble(jax.random.key(0), X, y, num_classes=2, members=0)
    with pytest.raises(ValueError, match="y must have shape"):
        fit_deep_ensemble(jax.random.key(0), X, y[:3], num_classes=2)
    with pytest.raises(ValueError, match="X must have shape"):
        fit_deep_ensemble(jax.random.key(0), X[0], y, num_classes=2)
    with pytest.raises(ValueError, match="num_outputs"):
        mlp_learner(3, 0)


@pytest.mark.slow
def test_deep_ensemble_members_equal_members_trained_alone():
    """One vmapped jit trains the same members as separate runs of the pure learner."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(64, 5)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int32)
    cfg = MLPConfig(hidden=(8,), steps=20, batch_size=16)
    model = fit_deep_ensemble(jax.random.key(0), X, y, num_classes=2, members=2, cfg=cfg,
                              chunk_size=20)
    fit, predict = mlp_learner(5, 2, cfg)
    keys = jax.random.split(jax.random.key(0), 2)
    alone = jax.jit(fit)(keys[1], jnp.asarray(X), jnp.asarray(y), jnp.ones(64))
    assert_close(model.member_proba(jnp.asarray(X))[1], predict(alone, jnp.asarray(X)),
                 dict(rtol=1e-4, atol=1e-5))
    proba = model.predict_proba(jnp.asarray(X))
    assert proba.shape == (64, 2)
    assert_close(jnp.sum(proba, 1), np.ones(64), F32)
