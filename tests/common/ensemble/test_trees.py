"""CART trees: best split vs brute force, predictions vs scikit-learn, histogram mode,
inert nodes, and bad arguments."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common.ensemble.trees import (
    apply_tree,
    class_stats,
    fit_tree,
    make_bins,
    predict_tree,
    regression_stats,
)
from tests.tolerances import F64, assert_close


def _brute_force_stump(X, y, w, criterion, num_classes=None):
    """Best (feature, threshold) by trying every midpoint: weighted child impurity."""
    best = (np.inf, None, None)
    for d in range(X.shape[1]):
        values = np.unique(X[:, d])
        for lo, hi in itertools.pairwise(values):
            t = (lo + hi) / 2
            cost = 0.0
            for side in (X[:, d] <= t, X[:, d] > t):
                ws, ys = w[side], y[side]
                if criterion == "gini":
                    p = np.array([ws[ys == k].sum() for k in range(num_classes)]) / ws.sum()
                    imp = 1.0 - np.sum(p**2)
                else:
                    mean = np.sum(ws * ys) / ws.sum()
                    imp = np.sum(ws * (ys - mean) ** 2) / ws.sum()
                cost += ws.sum() * imp
            if cost < best[0] - 1e-12:
                best = (cost, d, t)
    return best[1], best[2]


@pytest.mark.parametrize("criterion", ["gini", "squared_error"])
def test_best_split_matches_brute_force(x64, criterion):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 3))
    w = rng.uniform(0.5, 2.0, size=40)
    if criterion == "gini":
        y = rng.integers(0, 3, size=40)
        stats, count = class_stats(jnp.asarray(y), jnp.asarray(w), 3)
    else:
        y = X[:, 1] + 0.3 * rng.normal(size=40)
        stats, count = regression_stats(jnp.asarray(y), jnp.asarray(w))
    tree = fit_tree(jax.random.key(0), jnp.asarray(X), stats, count, criterion=criterion,
                    max_depth=1)
    feature, threshold = _brute_force_stump(X, y, w, criterion, 3)
    assert int(tree.feature[0]) == feature
    assert_close(tree.threshold[0], threshold, F64)


def _tie_free_data(rng, n=200):
    X = rng.normal(size=(n, 4))
    return X, rng.normal(size=(300, 4))


@pytest.mark.parametrize("criterion", ["gini", pytest.param("entropy", marks=pytest.mark.slow)])
def test_classifier_matches_sklearn(x64, criterion):
    from sklearn.tree import DecisionTreeClassifier

    rng = np.random.default_rng(0)
    X, X_test = _tie_free_data(rng)
    y = ((X[:, 0] + X[:, 1] ** 2 + 0.4 * rng.normal(size=len(X))) > 0.7).astype(int)
    y = y + (X[:, 2] > 1.0)
    # continuous weights: no two candidate splits of a node share a proxy value (with
    # unit weights, small nodes tie whenever two partitions have equal class counts)
    w = rng.uniform(0.5, 1.5, size=len(X))
    stats, count = class_stats(jnp.asarray(y), jnp.asarray(w), 3)
    tree = fit_tree(jax.random.key(0), jnp.asarray(X), stats, count, criterion=criterion,
                    max_depth=4, min_samples_leaf=3)
    ref = DecisionTreeClassifier(criterion=criterion, max_depth=4, min_samples_leaf=3,
                                 random_state=0).fit(X, y, sample_weight=w)
    assert_close(predict_tree(tree, jnp.asarray(X_test)), ref.predict_proba(X_test), F64)


def test_regressor_matches_sklearn(x64):
    from sklearn.tree import DecisionTreeRegressor

    rng = np.random.default_rng(2)
    X, X_test = _tie_free_data(rng)
    y = X[:, 0] + np.sin(2 * X[:, 1]) + 0.1 * rng.normal(size=len(X))
    w = rng.uniform(0.5, 1.5, size=len(X))
    stats, count = regression_stats(jnp.asarray(y), jnp.asarray(w))
    tree = fit_tree(jax.random.key(0), jnp.asarray(X), stats, count,
                    criterion="squared_error", max_depth=4, min_samples_leaf=3)
    ref = DecisionTreeRegressor(max_depth=4, min_samples_leaf=3, random_state=0).fit(
        X, y, sample_weight=w)
    assert_close(predict_tree(tree, jnp.asarray(X_test))[:, 0], ref.predict(X_test), F64)
    # the leaf index is a function of the path: equal leaves, equal values
    leaves = np.asarray(apply_tree(tree, jnp.asarray(X_test)))
    assert leaves.min() >= 0 and leaves.max() < 16


@pytest.mark.slow
def test_hist_is_exact_with_few_distinct_values(x64):
    """With <= max_bins distinct values per feature, histogram thresholds are the exact
    midpoints, so the tree equals scikit-learn's exact tree."""
    from sklearn.tree import DecisionTreeClassifier

    rng = np.random.default_rng(3)
    X = rng.integers(0, 9, size=(150, 3)).astype(float) + rng.normal(size=3) * 0.01
    y = ((X[:, 0] + 2 * X[:, 1] + rng.integers(0, 4, size=150)) > 12).astype(int)
    binned, thresholds = make_bins(jnp.asarray(X), 16)
    for d in range(3):
        u = np.unique(X[:, d])
        assert_close(thresholds[d, : len(u) - 1], (u[1:] + u[:-1]) / 2, F64)
        assert np.all(np.isinf(np.asarray(thresholds[d, len(u) - 1:])))
        assert np.array_equal(np.asarray(binned[:, d]), np.searchsorted(u, X[:, d]))
    stats, count = class_stats(jnp.asarray(y), jnp.ones(150), 2)
    tree = fit_tree(jax.random.key(0), jnp.asarray(X), stats, count, criterion="gini",
                    max_depth=3, min_samples_leaf=5, splitter="hist", max_bins=16)
    ref = DecisionTreeClassifier(max_depth=3, min_samples_leaf=5, random_state=0).fit(X, y)
    assert np.array_equal(np.asarray(predict_tree(tree, jnp.asarray(X))).argmax(1),
                          ref.predict(X))


def test_pure_node_is_inert_and_zero_weight_rows_take_no_part():
    X = jnp.asarray([[0.0], [1.0], [2.0], [3.0], [10.0]])
    y = jnp.asarray([0, 0, 1, 1, 0])
    w = jnp.asarray([1.0, 1.0, 1.0, 1.0, 0.0])                # the last row is masked out
    stats, count = class_stats(y, w, 2)
    tree = fit_tree(jax.random.key(0), X, stats, count, criterion="gini", max_depth=3)
    assert float(tree.threshold[0]) == 1.5                      # between 1 and 2, not 10
    assert np.all(np.isinf(np.asarray(tree.threshold[1:])))    # both children are pure
    assert_close(predict_tree(tree, X)[:, 1], [0, 0, 1, 1, 1])


@pytest.mark.slow
def test_fit_vmaps_over_members():
    splitter = "best"
    rng = np.random.default_rng(4)
    X = jnp.asarray(rng.normal(size=(60, 3)), jnp.float32)
    y = jnp.asarray((rng.normal(size=60) > 0).astype(int))
    stats, count = class_stats(y, jnp.ones(60), 2)

    def fit(k):
        return fit_tree(k, X, stats, count, criterion="gini", max_depth=3,
                        max_features=2, splitter=splitter, max_bins=16)

    keys = jax.random.split(jax.random.key(0), 3)
    trees = jax.jit(jax.vmap(fit))(keys)
    assert trees.feature.shape == (3, 7) and trees.value.shape == (3, 8, 2)
    one = fit(keys[1])
    assert np.array_equal(np.asarray(trees.feature[1]), np.asarray(one.feature))


def test_fit_tree_rejects_bad_arguments():
    X = jnp.zeros((4, 2))
    stats, count = class_stats(jnp.zeros(4, jnp.int32), jnp.ones(4), 2)
    with pytest.raises(ValueError, match="criterion"):
        fit_tree(jax.random.key(0), X, stats, count, criterion="mae", max_depth=2)
    with pytest.raises(ValueError, match="splitter"):
        fit_tree(jax.random.key(0), X, stats, count, criterion="gini", max_depth=2,
                 splitter="worst")
