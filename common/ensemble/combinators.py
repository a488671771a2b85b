"""Generic ensembles over any pure learner: ``bag``, ``boost`` and ``stack``.

A *learner* is a pair of pure, jittable functions::

    fit(key, X [N, D], y [N] or [N, K], w [N]) -> params      (w: sample weights)
    predict(params, X [N, D]) -> [N] or [N, V]

Sample weights are how every combinator resamples with one fixed shape: a bootstrap
is a vector of counts, a cross-validation fold a 0/1 mask. A learner must therefore
honour ``w`` (a zero weight removes the sample); a tree from ``common.ensemble.trees``
does, and so does the MLP learner of ``common.ensemble.deep`` (a weighted loss).

* :func:`bag` — bootstrap aggregating (Breiman 1996): ``M`` members fitted on bootstrap
  resamples in one ``vmap``; prediction is their mean; out-of-bag predictions come from
  the members that did not draw a sample.
* :func:`boost` — gradient boosting (Friedman 2001): stage ``m`` fits the negative
  gradient of the loss at the current raw prediction, ``F_m = F_{m−1} + ν h_m``.
* :func:`stack` — stacked generalisation (Wolpert 1992): base learners' out-of-fold
  predictions are the features of a meta-learner.

Example:
    >>> fit_b, predict_b = bag(tree_fit, tree_predict, n_members=50)
    >>> params = jax.jit(fit_b)(key, X, y, jnp.ones(len(X)))
    >>> y_hat = predict_b(params, X_test)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from common.checks import check_int

__all__ = ["bag", "boost", "bootstrap_counts", "fold_ids", "oob_predictions", "stack"]

Fit = Callable
Predict = Callable


def bootstrap_counts(key, weight, max_samples: float = 1.0):
    """How often each sample is drawn in a bootstrap of the positive-weight samples.

    ``round(max_samples · n_live)`` draws with replacement, uniform over the samples with
    ``w > 0`` (rows of zero weight are never drawn, so padded or held-out rows stay out).

    Args:
      key: PRNG key.
      weight: ``[N]`` sample weights.
      max_samples: fraction of the live samples drawn.

    Returns:
      ``[N]`` int32 counts summing to the number of draws.
    """
    n = weight.shape[0]
    live = weight > 0
    idx = jax.random.categorical(key, jnp.where(live, 0.0, -jnp.inf), shape=(n,))
    draws = jnp.round(max_samples * jnp.sum(live)).astype(jnp.int32)
    take = (jnp.arange(n) < draws).astype(jnp.int32)
    return jax.ops.segment_sum(take, idx, n)


def fold_ids(weight, n_folds: int):
    """Fold of each sample for ``n_folds``-fold cross-validation (no shuffling):
    the positive-weight samples in row order are cut into ``n_folds`` contiguous,
    equally large blocks (scikit-learn's ``KFold``); zero-weight rows get fold −1.

    Returns:
      ``[N]`` int32 in ``−1..n_folds − 1``.
    """
    live = weight > 0
    position = jnp.cumsum(live) - 1
    n_live = jnp.maximum(jnp.sum(live), 1)
    return jnp.where(live, (position * n_folds) // n_live, -1).astype(jnp.int32)


def bag(fit: Fit, predict: Predict, n_members: int, *, bootstrap: bool = True,
        max_samples: float = 1.0):
    """Bootstrap aggregating of a learner, members fitted in one ``vmap``.

    ``f̂(x) = (1/M) Σ_m f_m(x)``, ``f_m`` fitted with weights ``w · c_m`` where ``c_m``
    are bootstrap counts (without ``bootstrap``: ``c_m = 1``, members differ only by key).

    Args:
      fit, predict: the learner (see the module docstring).
      n_members: ``M``.
      bootstrap: resample; otherwise every member sees all samples.
      max_samples: bootstrap size as a fraction of the live samples.

    Returns:
      ``(fit_bag, predict_bag)``: ``fit_bag(key, X, y, w) -> {"members": params with a
      leading [M] axis, "counts": [M, N]}``; ``predict_bag(params, X)`` the mean of the
      members' predictions.

    Breiman, "Bagging predictors", Machine Learning 24 (1996).
    """
    n_members = check_int(n_members, "n_members", 1)
    if not 0.0 < max_samples <= 1.0:
        raise ValueError(f"max_samples must lie in (0, 1], got {max_samples}")

    def fit_bag(key, X, y, w):
        keys = jax.random.split(key, n_members)

        def member(k):
            draw_key, fit_key = jax.random.split(k)
            if bootstrap:
                counts = bootstrap_counts(draw_key, w, max_samples)
            else:
                counts = jnp.ones(w.shape, jnp.int32)
            return fit(fit_key, X, y, w * counts.astype(w.dtype)), counts

        members, counts = jax.vmap(member)(keys)
        return {"members": members, "counts": counts}

    def predict_bag(params, X):
        return jnp.mean(jax.vmap(predict, in_axes=(0, None))(params["members"], X), axis=0)

    return fit_bag, predict_bag


def oob_predictions(predict: Predict, params, X):
    """Out-of-bag prediction of each training sample: the mean over the members that
    did not draw it (``counts == 0``).

    Args:
      predict: the member learner's predict.
      params: the output of ``bag(...)[0]``.
      X: ``[N, D]``, the training features the bag was fitted on.

    Returns:
      ``(prediction [N, ...], has_oob [N] bool)``; rows without an out-of-bag member
      hold NaN.
    """
    preds = jax.vmap(predict, in_axes=(0, None))(params["members"], X)   # [M, N, ...]
    oob = (params["counts"] == 0).astype(preds.dtype)                     # [M, N]
    oob = oob.reshape(oob.shape + (1,) * (preds.ndim - 2))
    n_oob = jnp.sum(oob, axis=0)
    mean = jnp.sum(preds * oob, axis=0) / jnp.where(n_oob > 0, n_oob, 1.0)
    has = jnp.sum(params["counts"] == 0, axis=0) > 0
    mean = jnp.where(has.reshape(has.shape + (1,) * (mean.ndim - 1)), mean, jnp.nan)
    return mean, has


def boost(fit: Fit, predict: Predict, n_stages: int, *, learning_rate: float = 0.1,
          loss: str = "squared_error"):
    """Gradient boosting of a regression learner: stages fitted to negative gradients.

    ``F_0 = argmin_c Σ w L(y, c)``; ``r_m = −∂L/∂F (y, F_{m−1})``; ``h_m = fit(X, r_m)``;
    ``F_m = F_{m−1} + ν h_m``. Squared error: ``r = y − F``. Log-loss on one-hot targets
    ``y [N, K]``: ``r = y − softmax(F)``. Stages run in one ``lax.scan``.

    Args:
      fit, predict: a regression learner; ``predict`` returns the shape of the targets.
      n_stages: number of stages ``M``.
      learning_rate: shrinkage ``ν``.
      loss: "squared_error" (``y [N]`` or ``[N, K]``) or "log_loss" (``y [N, K]``).

    Returns:
      ``(fit_boost, predict_boost)``; ``predict_boost`` gives the raw score ``F_M``
      (apply ``softmax`` for log-loss probabilities).

    Friedman, "Greedy function approximation: a gradient boosting machine", Ann. Stat. 2001.
    """
    n_stages = check_int(n_stages, "n_stages", 1)
    if loss not in ("squared_error", "log_loss"):
        raise ValueError(f"loss must be 'squared_error' or 'log_loss', got {loss!r}")

    def fit_boost(key, X, y, w):
        total = jnp.sum(w)
        mean = jnp.tensordot(w, y, axes=1) / total
        if loss == "squared_error":
            init = mean
        else:
            logp = jnp.log(jnp.clip(mean, 1e-12, 1.0))
            init = logp - jnp.mean(logp)
        raw0 = jnp.broadcast_to(init, y.shape)

        def stage(raw, k):
            residual = y - raw if loss == "squared_error" else y - jax.nn.softmax(raw, -1)
            params = fit(k, X, residual, w)
            return raw + learning_rate * predict(params, X), params

        _, stages = jax.lax.scan(stage, raw0, jax.random.split(key, n_stages))
        return {"init": init, "stages": stages}

    def predict_boost(params, X):
        preds = jax.vmap(predict, in_axes=(0, None))(params["stages"], X)  # [M, N, ...]
        total = learning_rate * jnp.sum(preds, axis=0)
        return jnp.broadcast_to(params["init"], total.shape) + total

    return fit_boost, predict_boost


def stack(learners: Sequence[tuple[Fit, Predict]], meta: tuple[Fit, Predict], *,
          n_folds: int = 5):
    """Stacked generalisation: a meta-learner on out-of-fold base predictions.

    For fold ``f`` every base learner is fitted with weights ``w · [fold ≠ f]`` and
    predicts fold ``f``; the concatenated out-of-fold predictions ``Z [N, F]`` train
    the meta-learner. The bases are then refitted on all samples for prediction.
    Folds are fitted in one ``vmap``.

    Args:
      learners: base ``(fit, predict)`` pairs; each predict returns ``[N]`` or ``[N, V]``.
      meta: the meta-learner ``(fit, predict)``, trained on ``Z``.
      n_folds: number of folds (>= 2).

    Returns:
      ``(fit_stack, predict_stack)``; ``fit_stack`` returns ``{"base": [...], "meta":
      params, "oof": Z [N, F], "fold": [N]}``.

    Wolpert, "Stacked generalization", Neural Networks 5 (1992).
    """
    n_folds = check_int(n_folds, "n_folds", 2)
    if not learners:
        raise ValueError("learners must hold at least one (fit, predict) pair")

    def features(preds):
        return jnp.concatenate([p.reshape(p.shape[0], -1) for p in preds], axis=1)

    def fit_stack(key, X, y, w):
        fold = fold_ids(w, n_folds)
        keys = jax.random.split(key, len(learners) + 1)
        oof_parts = []
        for (fit, predict), k in zip(learners, keys[:-1], strict=True):
            def one_fold(f, fit=fit, predict=predict, k=k):
                params = fit(jax.random.fold_in(k, f), X, y, w * (fold != f).astype(w.dtype))
                return predict(params, X)

            preds = jax.vmap(one_fold)(jnp.arange(n_folds))                # [F, N, ...]
            pick = jnp.clip(fold, 0, n_folds - 1)
            oof_parts.append(jnp.take_along_axis(
                preds, pick.reshape((1, -1) + (1,) * (preds.ndim - 2)), axis=0)[0])
        Z = features(oof_parts)
        base = [fit(jax.random.fold_in(k, n_folds), X, y, w)
                for (fit, _), k in zip(learners, keys[:-1], strict=True)]
        meta_params = meta[0](keys[-1], Z, y, w)
        return {"base": base, "meta": meta_params, "oof": Z, "fold": fold}

    def predict_stack(params, X):
        Z = features([predict(p, X) for (_, predict), p in zip(learners, params["base"],
                                                                strict=True)])
        return meta[1](params["meta"], Z)

    return fit_stack, predict_stack
