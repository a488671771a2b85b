"""The estimator interface: a shared suite over every registered estimator, and the
exactness checks against scikit-learn and closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common.ensemble import ESTIMATORS, make
from common.ensemble.trees import apply_tree
from tests.tolerances import F32, F64, assert_close

# small settings so that the shared suite compiles quickly
SMALL = {
    "decision_tree": dict(max_depth=3),
    "bagging": dict(n_estimators=3, max_depth=2),
    "random_forest": dict(n_estimators=6, max_depth=3, oob_score=True),
    "extra_trees": dict(n_estimators=3, max_depth=2),
    "adaboost": dict(n_estimators=3),
    "gradient_boosting": dict(n_estimators=3, max_depth=2),
    "linear": dict(max_iter=10),
}
REGRESSION_UNSUPPORTED = {"adaboost"}


_CACHE = {}


def _small(name, task="classification", n_classes=3):
    """One small estimator per (name, task), shared by the tests so that each compiles
    once."""
    if (name, task) in _CACHE:
        return _CACHE[name, task]
    params = dict(SMALL.get(name, {}), task=task,
                  n_classes=n_classes if task == "classification" else None)
    if name in ("voting", "stacking"):
        k = params["n_classes"]
        params["estimators"] = (
            ("tree", make("decision_tree", task=task, n_classes=k, max_depth=2)),
            ("stump", make("decision_tree", task=task, n_classes=k, max_depth=1,
                           criterion="entropy" if task == "classification" else None)))
        if name == "stacking":
            params["cv"] = 2
            params["final_estimator"] = make("decision_tree", task=task, n_classes=k,
                                             max_depth=2)
    _CACHE[name, task] = make(name, **params)
    return _CACHE[name, task]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(48, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5)
    return X, y, X[:, 0] * 2.0 + X[:, 2]


@pytest.mark.parametrize("name", ESTIMATORS.names())
def test_shared_suite_classification(name, data):
    X, y, _ = data
    est = _small(name)
    key = jax.random.key(0)
    params = est.fit(key, X, y)
    proba = est.predict_proba(params, X)
    assert proba.shape == (48, 3)
    assert_close(jnp.sum(proba, axis=1), np.ones(48), F32)
    labels = est.predict(params, X)
    assert labels.shape == (48,)
    assert np.mean(np.asarray(labels) == y) > 0.6
    again = est.fit(key, X, y)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again), strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    # bad input, each named
    bad = X.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="X must be finite"):
        est.fit(key, bad, y)
    with pytest.raises(ValueError, match="y must"):
        est.fit(key, X, np.where(y == 0, -1, y))
    with pytest.raises(ValueError, match="sample_weight must have shape"):
        est.fit(key, X, y, np.ones(47))
    with pytest.raises(ValueError, match="sample_weight must be finite and >= 0"):
        est.fit(key, X, y, -np.ones(48))
    with pytest.raises(ValueError, match="X must have shape"):
        est.predict(params, X[:, 0])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(ESTIMATORS.names()) - REGRESSION_UNSUPPORTED))
def test_shared_suite_regression(name, data):
    X, _, target = data
    est = _small(name, task="regression")
    params = est.fit(jax.random.key(1), X, target)
    pred = est.predict(params, X)
    assert pred.shape == (48,)
    r2 = 1 - np.mean((np.asarray(pred) - target) ** 2) / np.var(target)
    assert r2 > 0.3
    with pytest.raises(ValueError, match="predict_proba"):
        est.predict_proba(params, X)


def test_labels_and_parameters_are_checked(data):
    X, y, _ = data
    with pytest.raises(ValueError, match="y must hold integer class labels 0..K-1"):
        make("decision_tree").fit(jax.random.key(0), X, y + 1)      # class 0 missing
    with pytest.raises(ValueError, match="max_depth must be an integer >= 1"):
        make("decision_tree", max_depth=0)
    with pytest.raises(ValueError, match="n_estimators"):
        make("random_forest", n_estimators=0)
    with pytest.raises(ValueError, match="task must be 'classification' for adaboost"):
        make("adaboost", task="regression")
    with pytest.raises(KeyError, match="valid names"):
        make("xgboost")


def test_traced_bad_values_poison_the_params(data):
    """Inside vmap nothing can raise: NaN features poison that member's params."""
    X, y, _ = data
    est = _small("decision_tree")
    Xs = np.stack([X, X])
    Xs[1, 0, 0] = np.nan
    params = jax.vmap(est.fit, in_axes=(None, 0, None))(jax.random.key(0), jnp.asarray(Xs),
                                                       jnp.asarray(y))
    value = np.asarray(params["tree"].value)
    assert np.all(np.isfinite(value[0])) and np.all(np.isnan(value[1]))


def test_adaboost_weights_match_sklearn(x64):
    """SAMME with stumps on breast cancer: the first 10 estimator weights to 1e-6.

    Ties in the split search are broken by the lowest threshold, then the lowest
    feature; scikit-learn takes the first maximum in a random feature order. The two
    can only differ between splits of equal improvement, which here are splits of
    monotone-related features inducing the same partition: the training predictions,
    hence the weights, are the same."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import AdaBoostClassifier
    from sklearn.tree import DecisionTreeClassifier

    X, y = load_breast_cancer(return_X_y=True)
    ref = AdaBoostClassifier(DecisionTreeClassifier(max_depth=1), n_estimators=10,
                             random_state=0).fit(X, y)
    est = make("adaboost", n_estimators=10)
    params = est.fit(jax.random.key(0), X, y)
    np.testing.assert_allclose(np.asarray(params["estimator_weights"]),
                               ref.estimator_weights_, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(params["estimator_errors"]),
                               ref.estimator_errors_, rtol=1e-6, atol=1e-9)
    assert_close(est.predict_proba(params, X), ref.predict_proba(X), F64)


def _best_stump(X, r, w):
    """Brute-force squared-error stump: (feature, threshold)."""
    best = (np.inf, 0, 0.0)
    for d in range(X.shape[1]):
        u = np.unique(X[:, d])
        for t in (u[1:] + u[:-1]) / 2:
            cost = 0.0
            for side in (X[:, d] <= t, X[:, d] > t):
                m = np.sum(w[side] * r[side]) / np.sum(w[side])
                cost += np.sum(w[side] * (r[side] - m) ** 2)
            if cost < best[0] - 1e-12:
                best = (cost, d, t)
    return best[1], best[2]


def test_gradient_boosting_first_stage_closed_form(x64):
    rng = np.random.default_rng(5)
    X = rng.normal(size=(60, 3))
    w = rng.uniform(0.5, 1.5, size=60)
    nu = 0.3
    # regression: F1 = mean + ν · (leaf mean of y − mean)
    y = X[:, 0] * 2 + rng.normal(size=60) * 0.3
    est = make("gradient_boosting", task="regression", n_estimators=1, max_depth=1,
               learning_rate=nu)
    params = est.fit(jax.random.key(0), X, y, w)
    f0 = np.sum(w * y) / np.sum(w)
    d, t = _best_stump(X, y - f0, w)
    left = X[:, d] <= t
    leaf = np.where(left, np.sum((w * (y - f0))[left]) / np.sum(w[left]),
                    np.sum((w * (y - f0))[~left]) / np.sum(w[~left]))
    assert_close(est.predict(params, X), f0 + nu * leaf, F64)
    # binary log-loss: F0 = log-odds, leaf γ = Σ w r / Σ w p (1 − p)
    yc = (X[:, 1] + 0.5 * rng.normal(size=60) > 0).astype(int)
    est = make("gradient_boosting", n_estimators=1, max_depth=1, learning_rate=nu)
    params = est.fit(jax.random.key(0), X, yc, w)
    p1 = np.sum(w * yc) / np.sum(w)
    f0 = np.log(p1 / (1 - p1))
    r = yc - p1
    d, t = _best_stump(X, r, w)
    left = X[:, d] <= t
    h = p1 * (1 - p1)
    gamma = np.where(left, np.sum((w * r)[left]) / np.sum(w[left] * h),
                     np.sum((w * r)[~left]) / np.sum(w[~left] * h))
    assert_close(est.decision_function(params, jnp.asarray(X))[:, 0], f0 + nu * gamma, F64)


@pytest.mark.slow
def test_gradient_boosting_matches_sklearn_accuracy():
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.model_selection import train_test_split

    X, y = load_breast_cancer(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, random_state=0, test_size=0.3)
    est = make("gradient_boosting", n_estimators=30, max_depth=2)
    ours = float(np.mean(np.asarray(est.predict(est.fit(jax.random.key(0), Xtr, ytr), Xte))
                         == yte))
    ref = GradientBoostingClassifier(n_estimators=30, max_depth=2, random_state=0).fit(
        Xtr, ytr).score(Xte, yte)
    assert ours >= ref - 0.03


def _numpy_tree_proba(feature, threshold, value, X):
    """Traverse a complete heap-ordered tree in numpy (a second implementation)."""
    internal = len(feature)
    out = []
    for x in X:
        node = 0
        while node < internal:
            node = 2 * node + (1 if x[feature[node]] <= threshold[node] else 2)
        out.append(value[node - internal])
    return np.asarray(out)


def test_oob_score_matches_direct_computation(data):
    X, y, _ = data
    est = _small("random_forest")
    params = est.fit(jax.random.key(2), X, y)
    counts = np.asarray(params["counts"])
    assert np.all(counts.sum(axis=1) == len(y))                    # bootstrap of size N
    trees = jax.tree.map(np.asarray, params["members"])
    per_member = np.stack([_numpy_tree_proba(trees.feature[m], trees.threshold[m],
                                             trees.value[m], X) for m in range(len(counts))])
    assert_close(est.predict_proba(params, X), per_member.mean(axis=0), F32)
    hits, used = 0, 0
    for i in range(len(y)):
        oob = counts[:, i] == 0
        if oob.any():
            used += 1
            hits += int(np.argmax(per_member[oob, i].mean(axis=0)) == y[i])
    assert used > 0
    assert abs(float(params["oob_score"]) - hits / used) < 1e-6


def test_stacking_out_of_fold_never_sees_its_own_fold(data):
    """Changing the labels of fold 0 leaves fold 0's out-of-fold predictions unchanged
    (and changes those of the other folds)."""
    X, y, _ = data
    est = _small("stacking")
    params = est.fit(jax.random.key(3), X, y)
    fold = np.asarray(params["fold"])
    assert set(fold.tolist()) == {0, 1}
    y2 = np.where(fold == 0, (y + 1) % 3, y)
    params2 = est.fit(jax.random.key(3), X, y2)
    oof, oof2 = np.asarray(params["oof"]), np.asarray(params2["oof"])
    assert_close(oof2[fold == 0], oof[fold == 0], F32)
    assert not np.allclose(oof2[fold == 1], oof[fold == 1])


def test_gradient_boosting_leaves_are_reachable(data):
    X, y, _ = data
    est = _small("gradient_boosting")
    params = est.fit(jax.random.key(0), X, y)
    assert np.all(np.isfinite(np.asarray(params["trees"].value)))
    tree = jax.tree.map(lambda a: a[0, 0], params["trees"])
    assert np.asarray(apply_tree(tree, jnp.asarray(X))).max() < 4
