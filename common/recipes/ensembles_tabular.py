"""``ensembles-tabular``: trees, forests, boosting and deep ensembles on scikit-learn's
bundled tables, next to scikit-learn on identical folds.

Three parts:

1. **Cross-validation table.** For iris, wine, breast_cancer and digits (accuracy) and
   diabetes (R²), every estimator of ``common.ensemble`` is fitted on the same shuffled
   5 folds as its scikit-learn counterpart (same hyperparameters, ``n_jobs=1``). Our
   five folds are fitted in one ``vmap``: a fold is a 0/1 sample-weight mask. Fit and
   predict times are given as ratios (ours, first call including compilation, over
   scikit-learn's five fits); warm timings are the ``ensemble-fit`` benchmark's.
2. **Bias–variance decomposition** on ``make_friedman1``: ``T`` training sets, each
   model fitted on all of them in one ``vmap``; at fixed test points,
   ``E[(f̂ − y)²] = bias² + variance + noise`` with ``bias² = mean_x (E_T f̂(x) − f(x))²``
   and ``variance = mean_x Var_T f̂(x)``. Bagging should cut the deep tree's variance,
   boosting the stump's bias. AdaBoost is left out here: SAMME is a classifier
   (AdaBoost.R2 regression is not implemented).
3. **Deep ensemble calibration** on digits: ``M`` MLPs trained in one vmapped jit vs
   a single MLP (member 0): accuracy, NLL, ECE and a reliability diagram.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from common.checks import check_fields
from common.ensemble import make
from common.ensemble.deep import (
    MLPConfig,
    expected_calibration_error,
    fit_deep_ensemble,
    nll,
    reliability_bins,
)
from common.recipe import RunContext, register_recipe

CLASSIFICATION = ("iris", "wine", "breast_cancer", "digits")
REGRESSION = ("diabetes",)
CLASSIFIERS = ("decision_tree", "bagging", "random_forest", "extra_trees", "adaboost",
               "gradient_boosting")
REGRESSORS = ("decision_tree", "bagging", "random_forest", "extra_trees", "gradient_boosting")
QUICK_CLASSIFIERS = ("decision_tree", "random_forest", "adaboost", "gradient_boosting")
QUICK_REGRESSORS = ("decision_tree", "random_forest", "gradient_boosting")
BIAS_VARIANCE = ("deep_tree", "stump", "bagging", "random_forest", "gradient_boosting")


@dataclasses.dataclass(frozen=True)
class EnsemblesConfig:
    """Config of ``ensembles-tabular``."""

    seed: int = 0
    folds: int = 5
    classification: tuple[str, ...] = CLASSIFICATION
    regression: tuple[str, ...] = REGRESSION
    classifiers: tuple[str, ...] = QUICK_CLASSIFIERS
    regressors: tuple[str, ...] = QUICK_REGRESSORS
    max_depth: int = 8                 # trees, bagging and forests
    n_trees: int = 10                  # bagging / forest members
    n_stages: int = 20                 # AdaBoost rounds, gradient-boosting stages
    bv_sets: int = 10                  # bias–variance: training sets
    bv_train: int = 200                # bias–variance: samples per training set
    bv_test: int = 300
    bv_noise: float = 1.0
    bv_depth: int = 8                  # the deep tree, bagging and forest members
    bv_stages: int = 50                # gradient boosting (depth 2, ν = 0.1)
    deep_members: int = 4
    deep_steps: int = 300
    deep_hidden: tuple[int, ...] = (64, 64)

    def validate(self) -> None:
        check_fields(self, positive_ints=("folds", "max_depth", "n_trees", "n_stages",
                                          "bv_sets", "bv_train", "bv_test", "bv_depth",
                                          "bv_stages", "deep_members",
                                          "deep_steps"),
                     nonnegative_ints=("seed",), nonnegative=("bv_noise",),
                     sizes=("deep_hidden",))
        if self.folds < 2:
            raise ValueError(f"folds must be an integer >= 2, got {self.folds}")
        for field, allowed in (("classification", CLASSIFICATION), ("regression", REGRESSION),
                               ("classifiers", CLASSIFIERS), ("regressors", REGRESSORS)):
            for name in getattr(self, field):
                if name not in allowed:
                    raise ValueError(f"{field} entries must be among {allowed}, got {name!r}")


def _load(name: str):
    from sklearn import datasets

    loader = {"iris": datasets.load_iris, "wine": datasets.load_wine,
              "breast_cancer": datasets.load_breast_cancer,
              "digits": datasets.load_digits, "diabetes": datasets.load_diabetes}[name]
    X, y = loader(return_X_y=True)
    return X.astype(np.float32), y


def _ours(name: str, task: str, cfg: EnsemblesConfig, n_classes):
    common = {"task": task, "n_classes": n_classes}
    if name == "decision_tree":
        return make(name, max_depth=cfg.max_depth, **common)
    if name in ("bagging", "random_forest", "extra_trees"):
        return make(name, n_estimators=cfg.n_trees, max_depth=cfg.max_depth, **common)
    if name == "adaboost":
        return make(name, n_estimators=cfg.n_stages, **common)
    return make(name, n_estimators=cfg.n_stages, max_depth=3, **common)


def _sklearn(name: str, task: str, cfg: EnsemblesConfig, seed: int):
    from sklearn import ensemble, tree

    clf = task == "classification"
    Tree = tree.DecisionTreeClassifier if clf else tree.DecisionTreeRegressor
    if name == "decision_tree":
        return Tree(max_depth=cfg.max_depth, random_state=seed)
    if name == "bagging":
        cls = ensemble.BaggingClassifier if clf else ensemble.BaggingRegressor
        return cls(Tree(max_depth=cfg.max_depth), n_estimators=cfg.n_trees, random_state=seed,
                   n_jobs=1)
    if name == "random_forest":
        cls = ensemble.RandomForestClassifier if clf else ensemble.RandomForestRegressor
        return cls(n_estimators=cfg.n_trees, max_depth=cfg.max_depth, random_state=seed,
                   n_jobs=1)
    if name == "extra_trees":
        cls = ensemble.ExtraTreesClassifier if clf else ensemble.ExtraTreesRegressor
        return cls(n_estimators=cfg.n_trees, max_depth=cfg.max_depth, random_state=seed,
                   n_jobs=1)
    if name == "adaboost":
        return ensemble.AdaBoostClassifier(tree.DecisionTreeClassifier(max_depth=1),
                                           n_estimators=cfg.n_stages, random_state=seed)
    cls = ensemble.GradientBoostingClassifier if clf else ensemble.GradientBoostingRegressor
    return cls(n_estimators=cfg.n_stages, max_depth=3, random_state=seed)


def _score(task, y_true, pred):
    if task == "classification":
        return float(np.mean(pred == y_true))
    return float(1.0 - np.sum((y_true - pred) ** 2) / np.sum((y_true - y_true.mean()) ** 2))


def cross_validate(name: str, dataset: str, task: str, cfg: EnsemblesConfig) -> dict:
    """Both libraries on the same folds: mean score, and times in seconds."""
    from sklearn.model_selection import KFold

    X, y = _load(dataset)
    n = len(y)
    folds = list(KFold(cfg.folds, shuffle=True, random_state=cfg.seed).split(X))
    fold_of = np.empty(n, np.int32)
    for f, (_, test) in enumerate(folds):
        fold_of[test] = f
    n_classes = int(y.max()) + 1 if task == "classification" else None
    est = _ours(name, task, cfg, n_classes)
    masks = jnp.asarray(fold_of[None, :] != np.arange(cfg.folds)[:, None], jnp.float32)
    keys = jax.random.split(jax.random.key(cfg.seed), cfg.folds)
    y_in = jnp.asarray(y if task == "classification" else y.astype(np.float32))
    Xj = jnp.asarray(X)
    t0 = time.perf_counter()
    params = jax.block_until_ready(
        jax.vmap(est.fit, in_axes=(0, None, None, 0))(keys, Xj, y_in, masks))
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    preds = np.asarray(jax.vmap(est.predict, in_axes=(0, None))(params, Xj))  # [F, N]
    predict_s = time.perf_counter() - t0
    ours = np.mean([_score(task, y[test], preds[f, test]) for f, (_, test) in enumerate(folds)])
    ref_scores, ref_fit, ref_predict = [], 0.0, 0.0
    for _, (train, test) in enumerate(folds):
        model = _sklearn(name, task, cfg, cfg.seed)
        t0 = time.perf_counter()
        model.fit(X[train], y[train])
        ref_fit += time.perf_counter() - t0
        t0 = time.perf_counter()
        ref_scores.append(_score(task, y[test], model.predict(X[test])))
        ref_predict += time.perf_counter() - t0
    return {"ours": float(ours), "sklearn": float(np.mean(ref_scores)),
            "fit_ratio": fit_s / ref_fit, "predict_ratio": predict_s / ref_predict}


def _bv_model(name: str, cfg: EnsemblesConfig):
    reg = {"task": "regression"}
    return {
        "deep_tree": lambda: make("decision_tree", max_depth=cfg.bv_depth, **reg),
        "stump": lambda: make("decision_tree", max_depth=1, **reg),
        "bagging": lambda: make("bagging", n_estimators=cfg.n_trees, max_depth=cfg.bv_depth,
                                **reg),
        "random_forest": lambda: make("random_forest", n_estimators=cfg.n_trees,
                                      max_depth=cfg.bv_depth, max_features=0.33, **reg),
        "gradient_boosting": lambda: make("gradient_boosting", n_estimators=cfg.bv_stages,
                                          max_depth=2, learning_rate=0.1, **reg),
    }[name]()


def bias_variance(cfg: EnsemblesConfig) -> dict[str, dict[str, float]]:
    """Bias², variance and expected error of each model over ``bv_sets`` training sets
    drawn from ``make_friedman1`` (noise σ = ``bv_noise``)."""
    from sklearn.datasets import make_friedman1

    rng = np.random.default_rng(cfg.seed)
    X_test, f_test = make_friedman1(cfg.bv_test, noise=0.0, random_state=rng.integers(1 << 30))
    sets = [make_friedman1(cfg.bv_train, noise=cfg.bv_noise, random_state=rng.integers(1 << 30))
            for _ in range(cfg.bv_sets)]
    Xs = jnp.asarray(np.stack([s[0] for s in sets]), jnp.float32)
    ys = jnp.asarray(np.stack([s[1] for s in sets]), jnp.float32)
    keys = jax.random.split(jax.random.key(cfg.seed), cfg.bv_sets)
    out = {}
    for name in BIAS_VARIANCE:
        est = _bv_model(name, cfg)
        params = jax.vmap(est.fit)(keys, Xs, ys)
        pred = np.asarray(jax.vmap(est.predict, in_axes=(0, None))(
            params, jnp.asarray(X_test, jnp.float32)))                      # [T, N_test]
        mean = pred.mean(axis=0)
        bias2 = float(np.mean((mean - f_test) ** 2))
        var = float(np.mean(pred.var(axis=0)))
        out[name] = {"bias2": bias2, "variance": var,
                     "error": bias2 + var + cfg.bv_noise**2}
    return out


def _bv_figure(bv: dict):
    import matplotlib.pyplot as plt

    names = list(bv)
    bias = [bv[n]["bias2"] for n in names]
    var = [bv[n]["variance"] for n in names]
    fig, ax = plt.subplots(figsize=(7.5, 3.8), layout="constrained")
    x = np.arange(len(names))
    ax.bar(x, bias, color="tab:blue", label="bias²")
    ax.bar(x, var, bottom=bias, color="tab:orange", label="variance")
    ax.set_xticks(x, [n.replace("_", " ") for n in names])
    ax.set_ylabel("squared error at test points (noise excluded)")
    ax.set_title("bias–variance on make_friedman1: bagging cuts variance, boosting bias",
                 fontsize=10)
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    return fig


def _reliability_figure(rows):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(4.2 * len(rows), 4.0), layout="constrained")
    for ax, (title, conf, acc, count, ece) in zip(np.atleast_1d(axes), rows, strict=True):
        width = 1.0 / len(conf)
        centres = (np.arange(len(conf)) + 0.5) * width
        used = count > 0
        ax.bar(centres[used], acc[used], width=width * 0.9, color="tab:blue",
               label="accuracy in the bin")
        ax.plot(centres[used], conf[used], "_", color="tab:red", markersize=18,
                markeredgewidth=2.5, label="mean confidence in the bin")
        for c, a, k in zip(centres[used], acc[used], count[used], strict=True):
            ax.text(c, a + 0.02, f"{int(k)}", ha="center", fontsize=7)
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{title} (ECE {ece:.3f}, 15 bins)", fontsize=10)
        ax.set_ylim(0, 1.08)
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle("reliability diagrams on digits (test split; numbers: samples per bin)")
    return fig


def deep_calibration(cfg: EnsemblesConfig):
    """A deep ensemble vs its first member on the digits test split."""
    from common.data import load_digits_split

    data = load_digits_split(0.2, cfg.seed)
    mlp = MLPConfig(hidden=cfg.deep_hidden, steps=cfg.deep_steps, batch_size=64)
    model = fit_deep_ensemble(jax.random.key(cfg.seed), data["x_train"], data["y_train"],
                              num_classes=10, members=cfg.deep_members, cfg=mlp)
    x_test, y_test = jnp.asarray(data["x_test"]), jnp.asarray(data["y_test"])
    members = model.member_proba(x_test)
    results, rows = {}, []
    for label, proba in (("single MLP", members[0]),
                         (f"deep ensemble (M={cfg.deep_members})", jnp.mean(members, 0))):
        conf, acc, count = (np.asarray(a) for a in reliability_bins(proba, y_test, 10))
        ece = float(expected_calibration_error(proba, y_test, 15))
        results[label] = {"accuracy": float(jnp.mean(jnp.argmax(proba, 1) == y_test)),
                          "nll": float(nll(proba, y_test)), "ece": ece}
        rows.append((label, conf, acc, count, ece))
    return results, _reliability_figure(rows)


def _table(rows: list[tuple]) -> str:
    lines = ["| data set | estimator | metric | ours | scikit-learn | fit time ratio "
             "(first call, with compilation) | predict time ratio (first call) |",
             "|---|---|---|---|---|---|---|"]
    for ds, name, metric, r in rows:
        lines.append(f"| {ds} | {name} | {metric} | {r['ours']:.3f} | {r['sklearn']:.3f} | "
                     f"{r['fit_ratio']:.2f} | {r['predict_ratio']:.2f} |")
    return "\n".join(lines)


@register_recipe(
    "ensembles-tabular",
    "trees, forests, AdaBoost, gradient boosting and deep ensembles vs scikit-learn on "
    "identical folds; bias-variance decomposition; calibration",
    claim="accuracy / R² within a few points of scikit-learn on every data set; bagging "
          "cuts the deep tree's variance and boosting the stump's bias; the deep ensemble "
          "has a lower NLL than a single MLP",
    quick=EnsemblesConfig(),
    full=EnsemblesConfig(classifiers=CLASSIFIERS, regressors=REGRESSORS, n_trees=100,
                         n_stages=100, max_depth=12, bv_sets=50, bv_depth=12, bv_stages=200,
                         deep_steps=1500, deep_members=10),
)
def ensembles_tabular(ctx: RunContext, cfg: EnsemblesConfig) -> dict:
    rows = []
    with ctx.phase("5-fold cross-validation, ours and scikit-learn"):
        for ds in cfg.classification:
            for name in cfg.classifiers:
                rows.append((ds, name, "accuracy", cross_validate(name, ds, "classification",
                                                                  cfg)))
        for ds in cfg.regression:
            for name in cfg.regressors:
                rows.append((ds, name, "R²", cross_validate(name, ds, "regression", cfg)))
    table = _table(rows)
    (ctx.run_dir / "cross_validation.md").write_text(table + "\n")
    with ctx.phase("bias-variance decomposition on make_friedman1"):
        bv = bias_variance(cfg)
    ctx.save_figure(_bv_figure(bv), "bias_variance")
    bv_lines = ["| model | bias² | variance | bias² + variance + noise |", "|---|---|---|---|"]
    bv_lines += [f"| {n} | {v['bias2']:.3f} | {v['variance']:.3f} | {v['error']:.3f} |"
                 for n, v in bv.items()]
    (ctx.run_dir / "bias_variance.md").write_text("\n".join(bv_lines) + "\n")
    with ctx.phase("deep ensemble on digits"):
        calib, fig = deep_calibration(cfg)
    ctx.save_figure(fig, "reliability")
    gaps = [r["ours"] - r["sklearn"] for _, _, _, r in rows]
    summary = {
        "worst_gap_to_sklearn": float(min(gaps)),
        "mean_gap_to_sklearn": float(np.mean(gaps)),
        "median_fit_time_ratio": float(np.median([r["fit_ratio"] for *_, r in rows])),
        "median_predict_time_ratio": float(np.median([r["predict_ratio"] for *_, r in rows])),
    }
    for ds, name, _, r in rows:
        summary[f"{ds}/{name}"] = f"{r['ours']:.3f} (sklearn {r['sklearn']:.3f})"
    for name, v in bv.items():
        summary[f"bias_variance/{name}"] = (f"bias² {v['bias2']:.3f}, "
                                            f"variance {v['variance']:.3f}")
    for label, v in calib.items():
        summary[f"calibration/{label}"] = (f"acc {v['accuracy']:.3f}, NLL {v['nll']:.3f}, "
                                           f"ECE {v['ece']:.3f}")
    return summary
