"""Deep ensembles: M flax MLPs with different initialisations trained in one vmapped jit,
and the calibration measures that judge their predictive uncertainty.

* :func:`mlp_learner` — a pure ``(fit, predict)`` pair (the learner protocol of
  ``common.ensemble.combinators``): an ``common.nn.MLP`` trained by
  ``common.train``'s scanned step on a weighted cross-entropy (or squared error), so
  ``bag``/``boost``/``stack`` and ``vmap`` apply to it.
* :func:`fit_deep_ensemble` — ``M`` members, each with its own initialisation and
  batch order, trained by ``common.train.fit`` whose chunk is the ``vmap`` of the
  scanned chunk over members: one compiled program for the whole ensemble. The
  prediction is the mean of the members' probabilities.
* :func:`nll`, :func:`expected_calibration_error`, :func:`reliability_bins`.

Example:
    >>> model = fit_deep_ensemble(key, X, y, num_classes=10, members=5)
    >>> proba = model.predict_proba(X_test)                   # [N, 10]
    >>> ece = expected_calibration_error(proba, y_test)

Lakshminarayanan, Pritzel & Blundell, "Simple and scalable predictive uncertainty
estimation using deep ensembles", NeurIPS 2017; Guo, Pleiss, Sun & Weinberger, "On
calibration of modern neural networks", ICML 2017.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from common.checks import check_int, check_rank, shape_str
from common.nn import MLP
from common.optim import OptimConfig, build_optimizer
from common.train import TrainState, fit, scan_chunk, train_step_fn

__all__ = [
    "DeepEnsemble",
    "MLPConfig",
    "expected_calibration_error",
    "fit_deep_ensemble",
    "mlp_learner",
    "nll",
    "reliability_bins",
]


def _check_proba(proba, labels):
    check_rank(proba, "proba", 2, "[N, K]")
    if jnp.shape(labels) != (proba.shape[0],):
        raise ValueError(f"labels must have shape [N] = ({proba.shape[0]}), got shape "
                         f"{shape_str(jnp.shape(labels))}")


def nll(proba, labels):
    """Mean negative log-likelihood ``−(1/N) Σ_i log p_i[y_i]`` (probabilities clipped
    at 1e-12).

    Args:
      proba: ``[N, K]`` predicted probabilities.
      labels: ``[N]`` int labels.

    Returns:
      A scalar.
    """
    _check_proba(proba, labels)
    p = jnp.take_along_axis(proba, labels[:, None].astype(jnp.int32), axis=1)[:, 0]
    return -jnp.mean(jnp.log(jnp.clip(p, 1e-12, 1.0)))


def reliability_bins(proba, labels, n_bins: int = 15):
    """Reliability diagram: confidence, accuracy and count per confidence bin.

    Confidence ``c_i = max_k p_ik``; bin ``b`` holds ``c ∈ ((b)/B, (b + 1)/B]`` (the
    first bin includes 0). Empty bins have confidence and accuracy 0.

    Args:
      proba: ``[N, K]``; labels: ``[N]``; n_bins: ``B``.

    Returns:
      ``(confidence [B], accuracy [B], count [B])``.
    """
    _check_proba(proba, labels)
    n_bins = check_int(n_bins, "n_bins", 1)
    conf = jnp.max(proba, axis=1)
    hit = (jnp.argmax(proba, axis=1) == labels).astype(proba.dtype)
    b = jnp.clip(jnp.ceil(conf * n_bins).astype(jnp.int32) - 1, 0, n_bins - 1)
    count = jax.ops.segment_sum(jnp.ones_like(conf), b, n_bins)
    safe = jnp.where(count > 0, count, 1.0)
    return (jax.ops.segment_sum(conf, b, n_bins) / safe,
            jax.ops.segment_sum(hit, b, n_bins) / safe, count)


def expected_calibration_error(proba, labels, n_bins: int = 15):
    """``ECE = Σ_b (n_b / N) |acc_b − conf_b|`` over :func:`reliability_bins`.

    Returns:
      A scalar in ``[0, 1]``.
    """
    conf, acc, count = reliability_bins(proba, labels, n_bins)
    return jnp.sum(count * jnp.abs(acc - conf)) / jnp.sum(count)


@dataclasses.dataclass(frozen=True)
class MLPConfig:
    """The MLP of :func:`mlp_learner` and :func:`fit_deep_ensemble`; its optimizer comes
    from the shared builder (``common.optim``)."""

    hidden: tuple[int, ...] = (64, 64)
    steps: int = 500
    batch_size: int = 64
    optim: OptimConfig = OptimConfig(name="adamw", learning_rate=3e-3, weight_decay=1e-4)


def _optimizer(cfg: MLPConfig):
    # a decaying schedule without total_steps spans the training run
    return build_optimizer(dataclasses.replace(
        cfg.optim, total_steps=cfg.optim.total_steps or cfg.steps))


def _loss_fn(graphdef, task: str):
    def loss_fn(params, rest, batch, key):
        out = nnx.merge(graphdef, params, rest)(batch["x"])
        if task == "classification":
            per = optax.softmax_cross_entropy_with_integer_labels(out, batch["y"])
        else:
            per = (out[:, 0] - batch["y"]) ** 2
        return jnp.sum(batch["w"] * per) / jnp.maximum(jnp.sum(batch["w"]), 1e-12), {}

    return loss_fn


def _weighted_batch(batch_size: int):
    """Batches drawn in proportion to the sample weights (zero weight: never drawn)."""

    def batch_fn(data, key):
        w = data["w"]
        idx = jax.random.categorical(key, jnp.where(w > 0, jnp.log(jnp.where(w > 0, w, 1.0)),
                                                    -jnp.inf), shape=(batch_size,))
        return {"x": data["x"][idx], "y": data["y"][idx], "w": jnp.ones((batch_size,),
                                                                       data["x"].dtype)}

    return batch_fn


def _init_state(key, num_features: int, num_outputs: int, cfg: MLPConfig):
    init_key, train_key = jax.random.split(key)
    model = MLP([num_features, *cfg.hidden, num_outputs], activation="relu",
                rngs=nnx.Rngs(init_key))
    return TrainState.create(model, _optimizer(cfg), train_key)


def mlp_learner(num_features: int, num_outputs: int, cfg: MLPConfig = MLPConfig(), *,
                task: str = "classification"):
    """A flax MLP as a pure, vmappable ``(fit, predict)`` learner.

    ``fit(key, X, y, w)`` trains ``cfg.steps`` AdamW steps in one ``lax.scan``
    (``common.train.scan_chunk`` of ``train_step_fn``), drawing batches in proportion
    to ``w``; ``predict(params, X)`` gives probabilities ``[N, K]`` (classification)
    or values ``[N]``.

    Args:
      num_features: ``D``; num_outputs: ``K`` (1 for regression).
      cfg: :class:`MLPConfig`.
      task: "classification" or "regression".

    Example:
        >>> fit_b, predict_b = bag(*mlp_learner(64, 10), n_members=5)
    """
    check_int(num_features, "num_features", 1)
    check_int(num_outputs, "num_outputs", 1)
    graphdef = _init_state(jax.random.key(0), num_features, num_outputs, cfg).graphdef
    tx = _optimizer(cfg)
    chunk = scan_chunk(train_step_fn(_loss_fn(graphdef, task), tx),
                       _weighted_batch(cfg.batch_size), cfg.steps)

    def fit_fn(key, X, y, w):
        state = _init_state(key, num_features, num_outputs, cfg)
        state, _ = chunk(state, {"x": X, "y": y, "w": w})
        return {"params": state.params, "rest": state.rest}

    def predict_fn(params, X):
        out = nnx.merge(graphdef, params["params"], params["rest"])(X)
        return jax.nn.softmax(out, axis=-1) if task == "classification" else out[:, 0]

    return fit_fn, predict_fn


@dataclasses.dataclass
class DeepEnsemble:
    """A fitted deep ensemble: ``state`` is a ``TrainState`` with a leading ``[M]`` axis."""

    state: Any
    graphdef: Any

    def member_proba(self, X):
        """``[M, N, K]`` probabilities of every member."""
        def one(params, rest):
            return jax.nn.softmax(nnx.merge(self.graphdef, params, rest)(X), axis=-1)

        return jax.jit(jax.vmap(one))(self.state.params, self.state.rest)

    def predict_proba(self, X):
        """``[N, K]``: the mean of the members' probabilities."""
        return jnp.mean(self.member_proba(X), axis=0)


def fit_deep_ensemble(key, X, y, *, num_classes: int, members: int = 5,
                      cfg: MLPConfig = MLPConfig(), chunk_size: int = 100,
                      progress: bool = False, logger=None) -> DeepEnsemble:
    """Train ``members`` MLP classifiers with different initialisations at once.

    The states are stacked (``[M]`` leading axis) and ``common.train.fit`` runs a chunk
    that is ``vmap(scan_chunk(...))`` over members: one jit compiles the ensemble.

    Args:
      key: PRNG key (member ``m`` uses ``split(key, M)[m]`` for init and batches).
      X: ``[N, D]`` features; y: ``[N]`` int labels.
      num_classes: ``K``; members: ``M``; cfg: :class:`MLPConfig`.

    Returns:
      A :class:`DeepEnsemble`.
    """
    check_rank(X, "X", 2, "[N, D]")
    members = check_int(members, "members", 1)
    if jnp.shape(y) != (X.shape[0],):
        raise ValueError(f"y must have shape [N] = ({X.shape[0]}), got shape "
                         f"{shape_str(jnp.shape(y))}")
    keys = jax.random.split(key, members)
    states = [_init_state(k, X.shape[1], num_classes, cfg) for k in keys]
    graphdef = states[0].graphdef
    state = jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)
    tx = _optimizer(cfg)
    step = train_step_fn(_loss_fn(graphdef, "classification"), tx)
    data = {"x": jnp.asarray(X), "y": jnp.asarray(y, jnp.int32),
            "w": jnp.ones((X.shape[0],), jnp.asarray(X).dtype)}

    def chunk_fn(length):
        members_chunk = jax.vmap(scan_chunk(step, _weighted_batch(cfg.batch_size), length),
                                 in_axes=(0, None))

        def chunk(state, data):
            state, metrics = members_chunk(state, data)          # metrics [M, length]
            rows = {k: jnp.mean(v, axis=0) for k, v in metrics.items()}
            rows["loss_max_member"] = jnp.max(metrics["loss"], axis=0)
            return state, rows

        return chunk

    state = fit(state, data=data, chunk_fn=chunk_fn, num_steps=cfg.steps,
                chunk_size=min(chunk_size, cfg.steps), progress=progress,
                desc="deep ensemble", logger=logger)
    return DeepEnsemble(state, graphdef)

