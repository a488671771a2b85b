"""One estimator interface over every ensemble, with scikit-learn's parameter names.

``est = make(name, **params)`` returns an object with

* ``est.fit(key, X [N, D], y [N], sample_weight=None) -> params`` (a pytree),
* ``est.predict(params, X) -> [N]`` (class labels, or regression values),
* ``est.predict_proba(params, X) -> [N, K]`` (classifiers).

``fit`` checks its input, then runs one jitted pure function; it is itself pure, so it
can be ``vmap``-ed over keys, sample-weight masks (cross-validation folds) or data sets.
Classification labels are integers ``0..K−1``; ``K`` is ``n_classes`` when given,
otherwise ``max(y) + 1`` of a concrete ``y`` (every class must then occur).

Registered names (``ESTIMATORS.names()``): ``decision_tree``, ``bagging``,
``random_forest``, ``extra_trees``, ``adaboost`` (SAMME, classification),
``gradient_boosting``, ``voting``, ``stacking`` and ``linear`` (logistic regression /
ridge, the default meta-learner of stacking). ``task="regression"`` switches a name to
its regressor.

Bad input: wrong shapes, ranks and parameters raise ``ValueError`` naming the argument.
Bad *values* (NaN features, labels outside ``0..K−1``, negative or non-finite sample
weights) raise when concrete and, inside ``jit``/``vmap``, poison the fitted params with
NaN (``common.checks`` policy), so every prediction from them is NaN.

Example:
    >>> est = make("random_forest", n_estimators=100, max_depth=10)
    >>> params = est.fit(jax.random.key(0), X_train, y_train)
    >>> accuracy = jnp.mean(est.predict(params, X_test) == y_test)
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from common.checks import check_int, check_rank, is_concrete, poison, shape_str, value_ok
from common.ensemble.combinators import bag, oob_predictions, stack
from common.ensemble.trees import (
    Tree,
    apply_tree,
    class_stats,
    fit_tree,
    make_bins,
    predict_tree,
    regression_stats,
)
from common.registry import Registry

__all__ = ["ESTIMATORS", "Estimator", "make"]

TASKS = ("classification", "regression")

ESTIMATORS: Registry[Callable[..., Estimator]] = Registry("ensemble estimator")


def make(name: str, **params) -> Estimator:
    """The estimator registered as ``name`` with scikit-learn-named ``params``.

    Example:
        >>> est = make("gradient_boosting", n_estimators=100, learning_rate=0.1)
    """
    return ESTIMATORS.get(name)(**params)


def _check_positive_number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _check_fraction(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"{name} must lie in (0, 1], got {value!r}")
    return float(value)


def _resolve_max_features(max_features, num_features: int) -> int:
    """scikit-learn's ``max_features``: None (all), "sqrt", "log2", an int, a fraction."""
    if max_features is None:
        return num_features
    if max_features == "sqrt":
        return max(1, int(math.sqrt(num_features)))
    if max_features == "log2":
        return max(1, int(math.log2(num_features)))
    if isinstance(max_features, float):
        return max(1, int(max_features * num_features))
    return min(int(max_features), num_features)


def _check_max_features(max_features) -> None:
    if max_features is None or max_features in ("sqrt", "log2"):
        return
    if isinstance(max_features, float):
        _check_fraction(max_features, "max_features")
        return
    check_int(max_features, "max_features", 1)


class Estimator(abc.ABC):
    """Base class: input checks, jitted ``fit``/``predict``, classification helpers.

    Subclasses implement ``_fit(key, X, y, w, K) -> params`` and ``_output(params, X)``
    (class probabilities ``[N, K]`` or regression values ``[N]``), both pure.

    Args:
      task: "classification" or "regression".
      n_classes: ``K`` for classifiers (None: inferred from a concrete ``y``).
    """

    def __init__(self, task: str = "classification", n_classes: int | None = None):
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if n_classes is not None:
            check_int(n_classes, "n_classes", 2)
        self.task = task
        self.n_classes = n_classes
        self._fit_jit = jax.jit(self._fit, static_argnums=(4,))
        self._output_jit = jax.jit(self._output)

    @property
    def is_classifier(self) -> bool:
        return self.task == "classification"

    # -- pure parts, overridden -------------------------------------------------------
    @abc.abstractmethod
    def _fit(self, key, X, y, w, K):
        """Pure fit: ``params`` from keys, ``X [N, D]``, labels or targets ``y [N]``,
        weights ``w [N]`` and the class count ``K`` (static)."""

    @abc.abstractmethod
    def _output(self, params, X):
        """Pure output: class probabilities ``[N, K]`` or regression values ``[N]``."""

    # -- checks -----------------------------------------------------------------------
    def _check_X(self, X):
        X = jnp.asarray(X)
        check_rank(X, "X", 2, "[N, D]")
        if X.shape[0] < 1 or X.shape[1] < 1:
            raise ValueError(f"X must have shape [N, D] with N, D >= 1, got shape "
                             f"{shape_str(X.shape)}")
        if not jnp.issubdtype(X.dtype, jnp.floating):
            X = X.astype(jnp.result_type(float))
        return X, value_ok(X, "X", jnp.isfinite, "finite (no NaN or inf)")

    def _num_classes(self, y) -> int:
        if self.n_classes is not None:
            return self.n_classes
        if not is_concrete(y):
            raise ValueError("n_classes must be given when y is traced (inside jit/vmap)")
        labels = np.asarray(y)
        if labels.size == 0 or not np.all(np.isfinite(labels)) or np.any(
                labels != np.round(labels)) or labels.min() < 0:
            raise ValueError("y must hold integer class labels 0..K-1, got values such as "
                             f"{labels.ravel()[:5].tolist()}")
        present = np.unique(labels)
        K = int(labels.max()) + 1
        if present.size != K or K < 2:
            raise ValueError(f"y must hold integer class labels 0..K-1 with every class "
                             f"present (K >= 2), got labels {present[:10].tolist()}")
        return K

    def fit(self, key, X, y, sample_weight=None):
        """Fit on ``X [N, D]``, ``y [N]`` with optional ``sample_weight [N]`` (>= 0).

        Returns:
          The fitted params (a pytree; see the estimator's docstring).
        """
        X, x_ok = self._check_X(X)
        y = jnp.asarray(y)
        n = X.shape[0]
        if y.shape != (n,):
            raise ValueError(f"y must have shape [N] = ({n}), got shape {shape_str(y.shape)}")
        dtype = X.dtype
        if sample_weight is None:
            w = jnp.ones((n,), dtype)
        else:
            w = jnp.asarray(sample_weight, dtype)
            if w.shape != (n,):
                raise ValueError(f"sample_weight must have shape [N] = ({n}), got shape "
                                 f"{shape_str(w.shape)}")
        w_ok = value_ok(w, "sample_weight", lambda v: jnp.isfinite(v) & (v >= 0),
                        "finite and >= 0")
        if self.is_classifier:
            K = self._num_classes(y)
            y_ok = value_ok(y, "y", lambda v: (v >= 0) & (v < K) & (v == jnp.round(v)),
                            f"integer class labels in 0..{K - 1}")
            y_in = jnp.clip(jnp.round(y), 0, K - 1).astype(jnp.int32)
        else:
            K = 0
            y_ok = value_ok(y, "y", jnp.isfinite, "finite")
            y_in = y.astype(dtype)
        params = self._fit_jit(key, X, y_in, w, K)
        ok = jnp.asarray(x_ok) & jnp.asarray(y_ok) & jnp.asarray(w_ok)
        if x_ok is True and y_ok is True and w_ok is True:
            return params
        return poison(params, ok)

    def predict_proba(self, params, X):
        """Class probabilities ``[N, K]`` (classifiers only)."""
        if not self.is_classifier:
            raise ValueError("predict_proba is only defined for task='classification'")
        X, ok = self._check_X(X)
        out = self._output_jit(params, X)
        return out if ok is True else poison(out, ok)

    def predict(self, params, X):
        """Class labels ``[N]`` (argmax of the probabilities) or regression values ``[N]``."""
        X, ok = self._check_X(X)
        out = self._output_jit(params, X)
        if ok is not True:
            out = poison(out, ok)
        return jnp.argmax(out, axis=-1) if self.is_classifier else out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(task={self.task!r})"


# ----------------------------------------------------------------------------- trees


class DecisionTree(Estimator):
    """A CART tree (``common.ensemble.trees``): ``params = {"tree": Tree}``.

    Args (scikit-learn names): ``criterion`` ("gini", "entropy"; "squared_error" for
    regression), ``max_depth`` (default 10: trees are complete arrays, so depth must be
    finite), ``min_samples_leaf``, ``min_samples_split``, ``max_features``,
    ``splitter`` ("best", "hist", "random"), ``max_bins``.
    """

    def __init__(self, task="classification", n_classes=None, *, criterion=None,
                 max_depth: int = 10, min_samples_leaf: int = 1, min_samples_split: int = 2,
                 max_features=None, splitter: str = "best", max_bins: int = 64):
        super().__init__(task, n_classes)
        self.criterion = criterion or ("gini" if task == "classification" else "squared_error")
        allowed = ("gini", "entropy") if task == "classification" else ("squared_error",)
        if self.criterion not in allowed:
            raise ValueError(f"criterion must be one of {allowed} for task={task!r}, "
                             f"got {criterion!r}")
        self.max_depth = check_int(max_depth, "max_depth", 1, 20)
        self.min_samples_leaf = check_int(min_samples_leaf, "min_samples_leaf", 1)
        self.min_samples_split = check_int(min_samples_split, "min_samples_split", 2)
        _check_max_features(max_features)
        self.max_features = max_features
        if splitter not in ("best", "hist", "random"):
            raise ValueError(f"splitter must be 'best', 'hist' or 'random', got {splitter!r}")
        self.splitter = splitter
        self.max_bins = check_int(max_bins, "max_bins", 2, 256)

    def _stats(self, y, w, K):
        if self.is_classifier:
            return class_stats(y, w, K)
        return regression_stats(y, w)

    def _fit_tree(self, key, X, y, w, K, bins=None) -> Tree:
        stats, count = self._stats(y, w, K)
        return fit_tree(key, X, stats, count, criterion=self.criterion,
                        max_depth=self.max_depth, min_samples_leaf=self.min_samples_leaf,
                        min_samples_split=self.min_samples_split,
                        max_features=_resolve_max_features(self.max_features, X.shape[1]),
                        splitter=self.splitter, max_bins=self.max_bins, bins=bins)

    def _tree_output(self, tree, X):
        out = predict_tree(tree, X)
        return out if self.is_classifier else out[:, 0]

    def _fit(self, key, X, y, w, K):
        return {"tree": self._fit_tree(key, X, y, w, K)}

    def _output(self, params, X):
        return self._tree_output(params["tree"], X)


class Forest(DecisionTree):
    """Bagged trees: ``bagging``, ``random_forest`` and ``extra_trees``.

    Members are fitted in one ``vmap`` (``common.ensemble.combinators.bag``) on bootstrap
    counts used as sample weights; prediction averages the members' probabilities (or
    values). ``params = {"members": Tree [M, ...], "counts": [M, N]}`` and, with
    ``oob_score=True``, ``"oob_score"`` (accuracy or R² of the out-of-bag predictions
    over the samples that have at least one out-of-bag member).

    Args: those of :class:`DecisionTree` plus ``n_estimators``, ``bootstrap``,
    ``max_samples`` (fraction), ``oob_score``.

    Breiman, "Random forests", Machine Learning 45 (2001); Geurts, Ernst & Wehenkel,
    "Extremely randomized trees", Machine Learning 63 (2006).
    """

    def __init__(self, task="classification", n_classes=None, *, n_estimators: int = 100,
                 bootstrap: bool = True, max_samples: float = 1.0, oob_score: bool = False,
                 **tree_params):
        super().__init__(task, n_classes, **tree_params)
        self.n_estimators = check_int(n_estimators, "n_estimators", 1)
        self.bootstrap = bool(bootstrap)
        self.max_samples = _check_fraction(max_samples, "max_samples")
        if oob_score and not bootstrap:
            raise ValueError("oob_score=True needs bootstrap=True")
        self.oob_score = bool(oob_score)

    def _learner(self, X, K):
        bins = make_bins(X, self.max_bins) if self.splitter == "hist" else None
        return (lambda k, X_, y, w: self._fit_tree(k, X_, y, w, K, bins),
                self._tree_output)

    def _fit(self, key, X, y, w, K):
        fit_m, predict_m = self._learner(X, K)
        fit_b, _ = bag(fit_m, predict_m, self.n_estimators, bootstrap=self.bootstrap,
                       max_samples=self.max_samples)
        params = fit_b(key, X, y, w)
        if self.oob_score:
            pred, has = oob_predictions(predict_m, params, X)
            use = (has & (w > 0)).astype(X.dtype)
            if self.is_classifier:
                hit = (jnp.argmax(jnp.nan_to_num(pred), axis=-1) == y).astype(X.dtype)
                score = jnp.sum(use * hit) / jnp.sum(use)
            else:
                p = jnp.nan_to_num(pred)
                mean = jnp.sum(use * y) / jnp.sum(use)
                score = 1.0 - jnp.sum(use * (y - p) ** 2) / jnp.sum(use * (y - mean) ** 2)
            params["oob_score"] = score
        return params

    def _output(self, params, X):
        outs = jax.vmap(self._tree_output, in_axes=(0, None))(params["members"], X)
        return jnp.mean(outs, axis=0)


@ESTIMATORS.register("decision_tree")
def decision_tree(**params) -> DecisionTree:
    """A single CART tree (``DecisionTreeClassifier`` / ``DecisionTreeRegressor``)."""
    return DecisionTree(**params)


@ESTIMATORS.register("bagging")
def bagging(**params) -> Forest:
    """Bagged trees on all features (``BaggingClassifier`` of decision trees); 10 members."""
    params.setdefault("n_estimators", 10)
    return Forest(**params)


@ESTIMATORS.register("random_forest")
def random_forest(**params) -> Forest:
    """Random forest: bootstrap + ``max_features`` per node ("sqrt" for classification,
    all for regression, as scikit-learn); 100 members."""
    task = params.get("task", "classification")
    params.setdefault("max_features", "sqrt" if task == "classification" else None)
    return Forest(**params)


@ESTIMATORS.register("extra_trees")
def extra_trees(**params) -> Forest:
    """Extremely randomized trees: random thresholds, no bootstrap by default."""
    task = params.get("task", "classification")
    params.setdefault("max_features", "sqrt" if task == "classification" else None)
    params.setdefault("bootstrap", False)
    params.setdefault("splitter", "random")
    return Forest(**params)


# ----------------------------------------------------------------------------- boosting


class AdaBoost(DecisionTree):
    """AdaBoost SAMME with trees of depth ``max_depth`` (default 1, stumps).

    Round ``m``: fit a tree with weights ``w``; ``err = Σ w·[ŷ ≠ y] / Σ w``;
    ``α_m = ν (log((1 − err)/err) + log(K − 1))``; ``w ← w · exp(α_m [ŷ ≠ y])``,
    normalised. A perfect tree (``err = 0``) gets ``α = 1`` and stops boosting; a tree no
    better than chance (``err >= 1 − 1/K``) gets ``α = 0`` and stops (scikit-learn's
    rules). With vote shares ``a_k(x) = Σ α_m [h_m(x) = k] / Σ α_m`` the decision is
    ``f_k = (K a_k − 1)/(K − 1)`` (``+α`` for the voted class, ``−α/(K−1)`` otherwise) and
    the probabilities ``softmax(f / (K − 1))`` (Zhu et al., eq. 15; scikit-learn's).

    ``params = {"trees": Tree [M, ...], "estimator_weights": [M], "estimator_errors": [M]}``.

    Zhu, Zou, Rosset & Hastie, "Multi-class AdaBoost", Statistics and Its Interface (2009).
    """

    def __init__(self, task="classification", n_classes=None, *, n_estimators: int = 50,
                 learning_rate: float = 1.0, max_depth: int = 1, **tree_params):
        if task != "classification":
            raise ValueError("task must be 'classification' for adaboost (SAMME); "
                             f"got {task!r}")
        super().__init__(task, n_classes, max_depth=max_depth, **tree_params)
        self.n_estimators = check_int(n_estimators, "n_estimators", 1)
        self.learning_rate = _check_positive_number(learning_rate, "learning_rate")

    def _fit(self, key, X, y, w, K):
        w0 = w / jnp.sum(w)
        last = self.n_estimators - 1

        def round_(carry, inputs):
            w, done = carry
            m, k = inputs
            tree = self._fit_tree(k, X, y, w, K)
            wrong = (jnp.argmax(predict_tree(tree, X), axis=-1) != y).astype(w.dtype)
            err = jnp.sum(w * wrong) / jnp.sum(w)
            perfect = err <= 0
            chance = err >= 1.0 - 1.0 / K
            safe = jnp.clip(err, 1e-300 if w.dtype == jnp.float64 else 1e-30, 1.0)
            alpha = self.learning_rate * (jnp.log((1.0 - safe) / safe) + jnp.log(K - 1.0))
            alpha = jnp.where(perfect, 1.0, jnp.where(chance, 0.0, alpha))
            alpha = jnp.where(done, 0.0, alpha)
            update = ~done & ~perfect & ~chance & (m < last)
            new_w = jnp.exp(jnp.log(jnp.where(w > 0, w, 1.0)) + alpha * wrong * (w > 0))
            new_w = jnp.where(w > 0, new_w, 0.0)
            new_w = jnp.where(update, new_w / jnp.sum(new_w), w)
            return (new_w, done | perfect | chance), (tree, alpha, jnp.where(done, 0.0, err))

        keys = jax.random.split(key, self.n_estimators)
        _, (trees, alphas, errors) = jax.lax.scan(
            round_, (w0, jnp.array(False)), (jnp.arange(self.n_estimators), keys))
        return {"trees": trees, "estimator_weights": alphas, "estimator_errors": errors}

    def _output(self, params, X):
        K = params["trees"].value.shape[-1]
        votes = jax.vmap(lambda t: jax.nn.one_hot(jnp.argmax(predict_tree(t, X), -1), K))(
            params["trees"])                                              # [M, N, K]
        alphas = params["estimator_weights"]
        share = jnp.tensordot(alphas, votes, axes=1) / jnp.sum(alphas)    # a_k
        decision = (K * share - 1.0) / (K - 1)                            # f_k
        return jax.nn.softmax(decision / (K - 1), axis=-1)


class GradientBoosting(DecisionTree):
    """Gradient boosting with trees: log-loss classification, squared-error regression.

    ``F_0``: the log-odds of the class priors (symmetric multinomial logit for K > 2) or
    the weighted mean. Stage ``m``: residual ``r = y − p`` (one-hot minus probabilities;
    binary: one score) or ``r = y − F``; a squared-error tree per score on a subsample
    (``subsample`` < 1: drawn without replacement); for log-loss each leaf takes the
    Newton step ``γ = (K−1)/K · Σ w r / Σ w p(1 − p)`` (``(K−1)/K`` → 1 for binary); then
    ``F ← F + ν γ``. Squared error is scikit-learn's ``friedman_mse`` split up to
    rounding (the two proxies differ by a constant factor per node).

    ``params = {"init": [S], "trees": Tree [M, S, ...]}`` with ``S`` scores (1 for
    binary and regression, ``K`` otherwise).

    Friedman, "Greedy function approximation: a gradient boosting machine", 2001.
    """

    def __init__(self, task="classification", n_classes=None, *, n_estimators: int = 100,
                 learning_rate: float = 0.1, max_depth: int = 3, subsample: float = 1.0,
                 **tree_params):
        tree_params.pop("criterion", None)
        super().__init__(task, n_classes, max_depth=max_depth, **tree_params)
        self.criterion = "squared_error"
        self.n_estimators = check_int(n_estimators, "n_estimators", 1)
        self.learning_rate = _check_positive_number(learning_rate, "learning_rate")
        self.subsample = _check_fraction(subsample, "subsample")

    def _scores(self, K):
        return 1 if (not self.is_classifier or K == 2) else K

    def _fit(self, key, X, y, w, K):
        S = self._scores(K)
        dtype = X.dtype
        bins = make_bins(X, self.max_bins) if self.splitter == "hist" else None
        if self.is_classifier:
            target = jax.nn.one_hot(y, K, dtype=dtype)                      # [N, K]
            prior = jnp.clip(jnp.tensordot(w, target, axes=1) / jnp.sum(w),
                             jnp.finfo(dtype).eps, 1.0)
            if S == 1:
                target = target[:, 1:]
                init = jnp.log(prior[1:] / (1.0 - prior[1:]))
            else:
                init = jnp.log(prior) - jnp.mean(jnp.log(prior))
        else:
            target = y[:, None]
            init = (jnp.sum(w * y) / jnp.sum(w))[None]
        live = w > 0
        n_live = jnp.sum(live)
        n_inbag = jnp.maximum(1, jnp.floor(self.subsample * n_live)).astype(jnp.int32)

        def probabilities(raw):
            return jax.nn.sigmoid(raw) if S == 1 else jax.nn.softmax(raw, axis=-1)

        def stage(raw, k):
            sub_key, tree_key = jax.random.split(k)
            if self.subsample < 1.0:
                u = jnp.where(live, jax.random.uniform(sub_key, w.shape), 2.0)
                rank = jnp.argsort(jnp.argsort(u))
                wm = jnp.where(rank < n_inbag, w, 0.0)
            else:
                wm = w
            p = probabilities(raw) if self.is_classifier else raw
            residual = target - p                                          # [N, S]

            def one(r, p_s, kk):
                stats, count = regression_stats(r, wm)
                tree = fit_tree(kk, X, stats, count, criterion="squared_error",
                                max_depth=self.max_depth,
                                min_samples_leaf=self.min_samples_leaf,
                                min_samples_split=self.min_samples_split,
                                max_features=_resolve_max_features(self.max_features,
                                                                   X.shape[1]),
                                splitter=self.splitter, max_bins=self.max_bins, bins=bins)
                if self.is_classifier:
                    leaf = apply_tree(tree, X)
                    n_leaves = tree.value.shape[0]
                    num = jax.ops.segment_sum(wm * r, leaf, n_leaves)
                    den = jax.ops.segment_sum(wm * p_s * (1.0 - p_s), leaf, n_leaves)
                    if S > 1:
                        num = num * (K - 1) / K
                    tiny = 1e-150 if dtype == jnp.float64 else 1e-30
                    small = jnp.abs(den) < tiny
                    gamma = jnp.where(small, 0.0, num / jnp.where(small, 1.0, den))
                    tree = tree._replace(value=gamma[:, None].astype(dtype))
                return tree

            trees = jax.vmap(one, in_axes=(1, 1, 0))(residual, p,
                                                     jax.random.split(tree_key, S))
            step = jax.vmap(lambda t: predict_tree(t, X)[:, 0])(trees).T   # [N, S]
            return raw + self.learning_rate * step, trees

        raw0 = jnp.broadcast_to(init, (X.shape[0], S)).astype(dtype)
        _, trees = jax.lax.scan(stage, raw0, jax.random.split(key, self.n_estimators))
        return {"init": init.astype(dtype), "trees": trees}

    def decision_function(self, params, X):
        """Raw scores ``F(x) [N, S]``."""
        values = jax.vmap(jax.vmap(lambda t: predict_tree(t, X)[:, 0]))(params["trees"])
        return params["init"][None, :] + self.learning_rate * jnp.sum(values, axis=0).T

    def _output(self, params, X):
        raw = self.decision_function(params, X)
        if not self.is_classifier:
            return raw[:, 0]
        if raw.shape[1] == 1:
            p = jax.nn.sigmoid(raw[:, 0])
            return jnp.stack([1.0 - p, p], axis=-1)
        return jax.nn.softmax(raw, axis=-1)


@ESTIMATORS.register("adaboost")
def adaboost(**params) -> AdaBoost:
    """AdaBoost SAMME (``AdaBoostClassifier`` with depth-1 trees by default)."""
    return AdaBoost(**params)


@ESTIMATORS.register("gradient_boosting")
def gradient_boosting(**params) -> GradientBoosting:
    """Gradient boosting (``GradientBoostingClassifier`` / ``GradientBoostingRegressor``)."""
    return GradientBoosting(**params)


# ----------------------------------------------------------------------------- linear


class Linear(Estimator):
    """L2-regularised logistic regression (classification) or ridge (regression).

    Logistic: ``min_W C Σ_i w_i CE(y_i, softmax(W x̃_i + b)) + ½‖W‖²`` on standardised
    features ``x̃``, by ``max_iter`` L-BFGS steps (optax). Ridge: the closed form
    ``(X̃ᵀ W X̃ + α I)⁻¹ X̃ᵀ W y`` with an unpenalised intercept.
    ``params = {"mean", "scale", "coef", "intercept"}``.
    """

    def __init__(self, task="classification", n_classes=None, *, C: float = 1.0,
                 alpha: float = 1.0, max_iter: int = 100):
        super().__init__(task, n_classes)
        self.C = _check_positive_number(C, "C")
        self.alpha = _check_positive_number(alpha, "alpha")
        self.max_iter = check_int(max_iter, "max_iter", 1)

    def _fit(self, key, X, y, w, K):
        total = jnp.sum(w)
        mean = jnp.tensordot(w, X, axes=1) / total
        var = jnp.tensordot(w, (X - mean[None, :]) ** 2, axes=1) / total
        scale = jnp.where(var > 1e-12, jnp.sqrt(var), 1.0)
        Z = (X - mean[None, :]) / scale[None, :]
        D = X.shape[1]
        if not self.is_classifier:
            y_mean = jnp.sum(w * y) / total
            A = (Z * w[:, None]).T @ Z + self.alpha * jnp.eye(D, dtype=X.dtype)
            coef = jnp.linalg.solve(A, (Z * w[:, None]).T @ (y - y_mean))
            return {"mean": mean, "scale": scale, "coef": coef, "intercept": y_mean}
        target = jax.nn.one_hot(y, K, dtype=X.dtype)

        def objective(p):
            logits = Z @ p["coef"] + p["intercept"][None, :]
            ce = -jnp.sum(target * jax.nn.log_softmax(logits, axis=-1), axis=-1)
            return (self.C * jnp.sum(w * ce) + 0.5 * jnp.sum(p["coef"] ** 2)) / total

        solver = optax.lbfgs()
        p0 = {"coef": jnp.zeros((D, K), X.dtype), "intercept": jnp.zeros((K,), X.dtype)}
        value_and_grad = optax.value_and_grad_from_state(objective)

        def step(carry, _):
            p, state = carry
            value, grad = value_and_grad(p, state=state)
            updates, state = solver.update(grad, state, p, value=value, grad=grad,
                                           value_fn=objective)
            return (optax.apply_updates(p, updates), state), None

        (p, _), _ = jax.lax.scan(step, (p0, solver.init(p0)), None, length=self.max_iter)
        return {"mean": mean, "scale": scale, **p}

    def _output(self, params, X):
        Z = (X - params["mean"][None, :]) / params["scale"][None, :]
        out = Z @ params["coef"]
        out = out + (params["intercept"][None, :] if self.is_classifier else params["intercept"])
        return jax.nn.softmax(out, axis=-1) if self.is_classifier else out


@ESTIMATORS.register("linear")
def linear(**params) -> Linear:
    """Logistic regression / ridge (``LogisticRegression`` / ``Ridge``)."""
    return Linear(**params)


# ----------------------------------------------------------------------------- composites


def _default_members(task: str, n_classes) -> tuple[tuple[str, Estimator], ...]:
    return (("tree", make("decision_tree", task=task, n_classes=n_classes, max_depth=4)),
            ("forest", make("random_forest", task=task, n_classes=n_classes,
                            n_estimators=10, max_depth=6)),
            ("linear", make("linear", task=task, n_classes=n_classes)))


def _check_members(estimators, task: str) -> tuple[tuple[str, Estimator], ...]:
    if not estimators:
        raise ValueError("estimators must hold at least one (name, estimator) pair")
    out = []
    for i, item in enumerate(estimators):
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], Estimator)):
            raise ValueError(f"estimators[{i}] must be a (name, Estimator) pair, got {item!r}")
        if item[1].task != task:
            raise ValueError(f"estimators[{i}] ({item[0]!r}) has task {item[1].task!r}, "
                             f"expected {task!r}")
        out.append(item)
    return tuple(out)


class Voting(Estimator):
    """Voting ensemble of fitted estimators (``VotingClassifier`` / ``VotingRegressor``).

    Soft voting: the weighted mean of probabilities; hard voting: weighted vote
    fractions of the predicted labels (their argmax is the majority); regression: the
    weighted mean. ``params = {name: member params}``.
    """

    def __init__(self, task="classification", n_classes=None, *,
                 estimators: Sequence[tuple[str, Estimator]] | None = None,
                 voting: str = "soft", weights: Sequence[float] | None = None):
        super().__init__(task, n_classes)
        self.estimators = _check_members(estimators or _default_members(task, n_classes),
                                          task)
        if voting not in ("soft", "hard"):
            raise ValueError(f"voting must be 'soft' or 'hard', got {voting!r}")
        self.voting = voting
        if weights is not None and len(weights) != len(self.estimators):
            raise ValueError(f"weights must have one entry per estimator "
                             f"({len(self.estimators)}), got {len(weights)}")
        self.weights = tuple(float(v) for v in weights) if weights else (1.0,) * len(
            self.estimators)

    def _fit(self, key, X, y, w, K):
        keys = jax.random.split(key, len(self.estimators))
        return {name: est._fit(k, X, y, w, K)
                for (name, est), k in zip(self.estimators, keys, strict=True)}

    def _output(self, params, X):
        total = sum(self.weights)
        outs = []
        for (name, est), weight in zip(self.estimators, self.weights, strict=True):
            out = est._output(params[name], X)
            if self.is_classifier and self.voting == "hard":
                out = jax.nn.one_hot(jnp.argmax(out, axis=-1), out.shape[-1], dtype=out.dtype)
            outs.append(weight * out)
        return sum(outs) / total


class Stacking(Estimator):
    """Stacking (``StackingClassifier`` / ``StackingRegressor``) through
    ``common.ensemble.combinators.stack``: base estimators' out-of-fold probabilities
    (binary: of class 1, as scikit-learn) or values train ``final_estimator`` (default
    ``linear``); ``cv`` contiguous folds; ``params = {"base", "meta", "oof", "fold"}``.
    """

    def __init__(self, task="classification", n_classes=None, *,
                 estimators: Sequence[tuple[str, Estimator]] | None = None,
                 final_estimator: Estimator | None = None, cv: int = 5):
        super().__init__(task, n_classes)
        self.estimators = _check_members(estimators or _default_members(task, n_classes),
                                          task)
        self.final_estimator = final_estimator or make("linear", task=task,
                                                       n_classes=n_classes)
        _check_members((("final_estimator", self.final_estimator),), task)
        self.cv = check_int(cv, "cv", 2)

    def _pair(self, est, K):
        def predict(params, X):
            out = est._output(params, X)
            return out[:, 1:] if (self.is_classifier and out.shape[-1] == 2) else out

        return (lambda k, X, y, w: est._fit(k, X, y, w, K)), predict

    def _combined(self, K):
        meta = self.final_estimator
        return stack([self._pair(est, K) for _, est in self.estimators],
                     ((lambda k, Z, y, w: meta._fit(k, Z, y, w, K)), meta._output),
                     n_folds=self.cv)

    def _fit(self, key, X, y, w, K):
        return self._combined(K)[0](key, X, y, w)

    def _output(self, params, X):
        return self._combined(None)[1](params, X)


@ESTIMATORS.register("voting")
def voting(**params) -> Voting:
    """Voting over ``estimators`` (default: a depth-4 tree, a small forest, linear)."""
    return Voting(**params)


@ESTIMATORS.register("stacking")
def stacking(**params) -> Stacking:
    """Stacking of ``estimators`` under ``final_estimator`` (default: linear)."""
    return Stacking(**params)
