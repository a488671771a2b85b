"""Face verification and identification metrics: the LFW 10-fold protocol, ROC and
TAR@FAR, closed-set rank-1 identification, open-set DIR@FAR, flip-test fusion.

Verification compares pairs of embeddings (same identity or not); identification
compares probes with a gallery of enrolled identities. Scores are cosine
similarities of L2-normalised embeddings (higher means "same"), except in
:func:`verify_kfold`, which follows insightface's LFW code to the letter: squared L2
distance of normalised embeddings, "same" when ``distance < threshold``.

Every function except :func:`roc_curve` (whose length depends on ties in the data)
is jittable with the sizes static.

Bad input (policy of :mod:`common.checks`): wrong ranks and sizes always raise
``ValueError`` naming the argument; non-finite embeddings and rates outside their
range raise when concrete and give NaN results when traced.

Papers: Huang et al. 2007, "Labeled Faces in the Wild" (the 10-fold protocol);
Deng et al. 2019, "ArcFace" (insightface's ``verification.py``, flip-test fusion);
Grother et al., NIST FRVT (open-set identification, FPIR/FNIR).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from common.checks import check_in_range, check_int, check_rank, is_concrete, shape_of, shape_str
from vision.face.margins import all_ok, finite_ok, l2_normalize, maybe_poison

__all__ = [
    "LFW_THRESHOLDS",
    "cosine_scores",
    "dir_at_far",
    "fuse_flip",
    "identify",
    "kfold_indices",
    "rank1_accuracy",
    "roc_curve",
    "tar_at_far",
    "verify_kfold",
]

LFW_THRESHOLDS = np.arange(0, 4, 0.01)
"""insightface's distance thresholds for the 10-fold protocol (400 values)."""


def _embeddings(x, name: str, spec: str = "[P, D]"):
    check_rank(x, name, 2, spec)
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{name} must be floating point, got dtype {x.dtype}")
    return x, finite_ok(x, name)


def _vector(x, name: str, n: int, spec: str = "[P]"):
    check_rank(x, name, 1, spec)
    if shape_of(x)[0] != n:
        raise ValueError(f"{name} must have shape {spec} = ({n}), got shape "
                         f"{shape_str(shape_of(x))}")
    return jnp.asarray(x)


def _rate_ok(far, name: str):
    """``far`` in ``[0, 1]``: checked when concrete, the on-device flag when traced."""
    if is_concrete(far):
        check_in_range(far, name, 0.0, 1.0)
        return True
    return (far >= 0) & (far <= 1)


def _pairs(emb1, emb2, same):
    emb1, ok1 = _embeddings(emb1, "emb1")
    emb2, ok2 = _embeddings(emb2, "emb2")
    if shape_of(emb1) != shape_of(emb2):
        raise ValueError(f"emb2 must have the shape of emb1 {shape_str(shape_of(emb1))}, got "
                         f"shape {shape_str(shape_of(emb2))}")
    same = _vector(same, "same", shape_of(emb1)[0]).astype(bool)
    return emb1, emb2, same, all_ok(ok1, ok2)


def fuse_flip(emb: jax.Array, emb_flipped: jax.Array) -> jax.Array:
    """Flip-test fusion: ``normalize(e(x) + e(flip(x)))`` (insightface's evaluation).

    Args:
      emb: ``[N, D]`` embeddings of the images.
      emb_flipped: ``[N, D]`` embeddings of the horizontally flipped images.

    Returns:
      ``[N, D]`` unit-norm fused embeddings.

    Example:
      >>> fuse_flip(jnp.array([[3., 0.]]), jnp.array([[0., 4.]])).tolist()
      [[0.6000000238418579, 0.800000011920929]]
    """
    emb, ok1 = _embeddings(emb, "emb", "[N, D]")
    emb_flipped, ok2 = _embeddings(emb_flipped, "emb_flipped", "[N, D]")
    if shape_of(emb) != shape_of(emb_flipped):
        raise ValueError(f"emb_flipped must have the shape of emb {shape_str(shape_of(emb))}, "
                         f"got shape {shape_str(shape_of(emb_flipped))}")
    fused = l2_normalize(emb + emb_flipped)
    if all_ok(ok1, ok2) is True:
        return fused
    rows = jnp.all(jnp.isfinite(emb), 1, keepdims=True) & jnp.all(jnp.isfinite(emb_flipped), 1,
                                                                   keepdims=True)
    return maybe_poison(fused, rows)


def cosine_scores(emb1: jax.Array, emb2: jax.Array) -> jax.Array:
    """Pair scores ``x̂₁·x̂₂`` of ``[P, D]`` embeddings → ``[P]`` (NaN rows if traced
    non-finite)."""
    emb1, ok1 = _embeddings(emb1, "emb1")
    emb2, ok2 = _embeddings(emb2, "emb2")
    if shape_of(emb1) != shape_of(emb2):
        raise ValueError(f"emb2 must have the shape of emb1 {shape_str(shape_of(emb1))}, got "
                         f"shape {shape_str(shape_of(emb2))}")
    scores = jnp.sum(l2_normalize(emb1) * l2_normalize(emb2), axis=1)
    return maybe_poison(scores, all_ok(ok1, ok2))


def kfold_indices(n: int, num_folds: int = 10) -> np.ndarray:
    """Fold of each of ``n`` items with contiguous, unshuffled folds whose sizes differ by
    at most one, the first ``n mod k`` folds one larger (``sklearn.model_selection.KFold
    (shuffle=False)``, insightface's ``LFold``).

    Example:
      >>> kfold_indices(5, 2).tolist()
      [0, 0, 0, 1, 1]
    """
    sizes = np.full(num_folds, n // num_folds)
    sizes[: n % num_folds] += 1
    return np.repeat(np.arange(num_folds), sizes)


@functools.partial(jax.jit, static_argnums=4)
def _verify_core(emb1, emb2, same, thresholds, num_folds: int) -> dict:
    """The jitted body of :func:`verify_kfold` (arguments already checked)."""
    p = emb1.shape[0]
    dtype = emb1.dtype
    dist = jnp.sum((l2_normalize(emb1) - l2_normalize(emb2)) ** 2, axis=1)     # [P]
    folds = jnp.asarray(kfold_indices(p, num_folds))
    test = (folds[None, :] == jnp.arange(num_folds)[:, None]).astype(dtype)    # [k, P]
    train = 1.0 - test
    predict = dist[None, :] < thresholds[:, None]                                # [T, P]
    correct = (predict == same[None, :]).astype(dtype)                          # [T, P]
    acc_train = (train @ correct.T) / jnp.sum(train, axis=1, keepdims=True)      # [k, T]
    best = jnp.argmax(acc_train, axis=1)                                         # [k]
    acc_test = (test @ correct.T) / jnp.sum(test, axis=1, keepdims=True)         # [k, T]
    accuracies = jnp.take_along_axis(acc_test, best[:, None], axis=1)[:, 0]
    pos, neg = same.astype(dtype), (~same).astype(dtype)
    predict_f = predict.astype(dtype)
    tp = test @ (predict_f * pos[None, :]).T                                     # [k, T]
    fp = test @ (predict_f * neg[None, :]).T
    n_pos = (test @ pos)[:, None]
    n_neg = (test @ neg)[:, None]
    tpr = jnp.where(n_pos > 0, tp / jnp.maximum(n_pos, 1), 0.0)
    fpr = jnp.where(n_neg > 0, fp / jnp.maximum(n_neg, 1), 0.0)
    result = {
        "accuracy_mean": jnp.mean(accuracies),
        "accuracy_std": jnp.std(accuracies),
        "accuracies": accuracies,
        "thresholds": thresholds[best],
        "tpr": jnp.mean(tpr, axis=0),
        "fpr": jnp.mean(fpr, axis=0),
    }
    return result


def verify_kfold(emb1: jax.Array, emb2: jax.Array, same: jax.Array, num_folds: int = 10,
                 thresholds=None) -> dict:
    """The LFW 10-fold verification protocol exactly as insightface evaluates it.

    ``d_p = ‖x̂₁ − x̂₂‖²`` for normalised embeddings; a pair is predicted "same" when
    ``d_p < t``. The ``P`` pairs are split into ``num_folds`` contiguous folds
    (:func:`kfold_indices`); for each fold the threshold ``t ∈ arange(0, 4, 0.01)``
    with the best accuracy on the other folds (the first on ties) is applied to the
    held-out fold. Also returns the ROC averaged over the held-out folds, as
    insightface's ``calculate_roc`` does.

    Args:
      emb1, emb2: ``[P, D]`` embeddings of the two faces of each pair (flip-fused or
        not: see :func:`fuse_flip`).
      same: ``[P]`` boolean, True for genuine pairs.
      num_folds: ``k ≥ 2``; must not exceed ``P``.
      thresholds: the threshold grid (default :data:`LFW_THRESHOLDS`).

    Returns:
      ``{"accuracy_mean", "accuracy_std"`` (population std, ``np.std``) scalars,
      ``"accuracies" [k]``, ``"thresholds" [k]`` (each fold's chosen threshold),
      ``"tpr" [T]``, ``"fpr" [T]`` (mean over folds per threshold)``}``. NaN
      throughout when traced embeddings are non-finite.

    Example:
      >>> e = jax.random.normal(jax.random.key(0), (20, 8))
      >>> r = verify_kfold(e, e + 0.01, jnp.ones(20, bool))
      >>> float(r["accuracy_mean"])
      1.0

    Paper: Huang et al. 2007, "Labeled Faces in the Wild"; insightface's
    ``eval/verification.py`` (``calculate_roc``).
    """
    emb1, emb2, same, ok = _pairs(emb1, emb2, same)
    p = shape_of(emb1)[0]
    num_folds = check_int(num_folds, "num_folds", 2)
    if num_folds > p:
        raise ValueError(f"num_folds must be <= the number of pairs P = {p}, got {num_folds}")
    thr = np.asarray(LFW_THRESHOLDS if thresholds is None else thresholds)
    if thr.ndim != 1 or thr.size == 0:
        raise ValueError(f"thresholds must be a non-empty 1-D grid, got shape {thr.shape}")
    result = _verify_core(emb1, emb2, same, jnp.asarray(thr, emb1.dtype), num_folds)
    return maybe_poison(result, ok)


def roc_curve(scores: jax.Array, same: jax.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ROC of scores (higher = genuine): every distinct score as a threshold.

    ``tpr(t) = #{genuine, s ≥ t} / #genuine``, ``fpr(t) = #{impostor, s ≥ t} /
    #impostor`` for each distinct ``t`` in decreasing order, preceded by the point
    ``(0, 0)`` at ``t = +∞``: equal to ``sklearn.metrics.roc_curve(same, scores,
    drop_intermediate=False)``. Eager only (the length depends on ties).

    Args:
      scores: ``[P]`` similarity scores.
      same: ``[P]`` boolean, True for genuine pairs; both classes must occur.

    Returns:
      ``(fpr, tpr, thresholds)`` numpy arrays of equal length.

    Example:
      >>> fpr, tpr, _ = roc_curve(jnp.array([0.9, 0.8, 0.3]), jnp.array([True, False, True]))
      >>> fpr.tolist(), tpr.tolist()
      ([0.0, 0.0, 1.0, 1.0], [0.0, 0.5, 0.5, 1.0])
    """
    check_rank(scores, "scores", 1, "[P]")
    same_arr = _vector(same, "same", shape_of(scores)[0])
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(same_arr).astype(bool)
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite, got non-finite values")
    if y.all() or (~y).all():
        raise ValueError("same must hold both genuine (True) and impostor (False) pairs")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.diff(s) != 0, True]              # last index of each distinct score
    tps = np.cumsum(y)[last]
    fps = np.cumsum(~y)[last]
    tpr = np.r_[0.0, tps / y.sum()]
    fpr = np.r_[0.0, fps / (~y).sum()]
    return fpr, tpr, np.r_[np.inf, s[last]]


@jax.jit
def _rate_at_false_rate(pos_scores, pos_hit, neg_scores, neg_valid, far):
    """``max_t #{hit, s_pos ≥ t}/#pos`` subject to ``#{s_neg ≥ t}/#neg ≤ far`` over the
    thresholds ``t`` in ``pos_scores ∪ {+∞}`` (where the rate can change)."""
    dtype = pos_scores.dtype
    neg_sorted = jnp.sort(jnp.where(neg_valid, neg_scores, -jnp.inf))       # ascending
    n_neg = jnp.sum(neg_valid)
    false_accepts = neg_sorted.shape[0] - jnp.searchsorted(neg_sorted, pos_scores, side="left")
    false_rate = false_accepts / jnp.maximum(n_neg, 1)                       # [P]
    hit_scores = jnp.where(pos_hit, pos_scores, -jnp.inf)
    hit_sorted = jnp.sort(hit_scores)
    hits = hit_sorted.shape[0] - jnp.searchsorted(hit_sorted, pos_scores, side="left")
    n_pos = pos_scores.shape[0]
    rates = jnp.where(pos_hit & (false_rate <= far), hits / n_pos, 0.0)
    return jnp.max(rates, initial=0.0).astype(dtype)


def tar_at_far(scores: jax.Array, same: jax.Array, far: float = 1e-3) -> jax.Array:
    """True accept rate at a false accept rate: the highest TPR of the ROC
    (:func:`roc_curve`) among its points with ``FPR ≤ far``.

    Args:
      scores: ``[P]`` similarity scores (higher = genuine).
      same: ``[P]`` boolean.
      far: the false accept rate, in ``[0, 1]``.

    Returns:
      A scalar in ``[0, 1]`` (jittable; NaN when traced scores or ``far`` are bad).

    Example:
      >>> float(tar_at_far(jnp.array([0.9, 0.8, 0.3]), jnp.array([True, False, True]), 0.0))
      0.5
    """
    check_rank(scores, "scores", 1, "[P]")
    scores = jnp.asarray(scores)
    same = _vector(same, "same", shape_of(scores)[0]).astype(bool)
    ok = all_ok(finite_ok(scores, "scores"), _rate_ok(far, "far"))
    if not jnp.issubdtype(scores.dtype, jnp.floating):
        scores = scores.astype(jnp.float32)
    n_pos = jnp.sum(same)
    rate = _rate_at_false_rate(jnp.where(same, scores, -jnp.inf), same, scores, ~same, far)
    rate = rate * scores.shape[0] / jnp.maximum(n_pos, 1)        # per genuine pair
    return maybe_poison(rate, ok)


def _gallery_args(gallery, gallery_labels, probes, probe_labels):
    gallery, ok1 = _embeddings(gallery, "gallery", "[G, D]")
    probes, ok2 = _embeddings(probes, "probes", "[Q, D]")
    if shape_of(probes)[1] != shape_of(gallery)[1]:
        raise ValueError(f"probes must have shape [Q, D] with D = {shape_of(gallery)[1]}, got "
                         f"shape {shape_str(shape_of(probes))}")
    gallery_labels = _vector(gallery_labels, "gallery_labels", shape_of(gallery)[0], "[G]")
    probe_labels = _vector(probe_labels, "probe_labels", shape_of(probes)[0], "[Q]")
    return gallery, gallery_labels, probes, probe_labels, all_ok(ok1, ok2)


def identify(gallery: jax.Array, gallery_labels: jax.Array,
             probes: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Nearest gallery entry of each probe by cosine similarity.

    Args:
      gallery: ``[G, D]`` enrolled embeddings; gallery_labels: ``[G]`` identities.
      probes: ``[Q, D]`` query embeddings.

    Returns:
      ``(labels [Q], scores [Q])``: the identity of the most similar gallery entry and
      that similarity.

    Example:
      >>> g = jnp.array([[1., 0.], [0., 1.]])
      >>> identify(g, jnp.array([7, 9]), jnp.array([[0.1, 1.]]))[0].tolist()
      [9]
    """
    gallery, gallery_labels, probes, _, ok = _gallery_args(
        gallery, gallery_labels, probes, jnp.zeros(shape_of(probes)[0], jnp.int32))
    return maybe_poison(_identify_core(gallery, gallery_labels, probes), ok)


@jax.jit
def _identify_core(gallery, gallery_labels, probes):
    sim = l2_normalize(probes) @ l2_normalize(gallery).T        # [Q, G]
    best = jnp.argmax(sim, axis=1)
    return gallery_labels[best], jnp.max(sim, axis=1)


def rank1_accuracy(gallery: jax.Array, gallery_labels: jax.Array, probes: jax.Array,
                   probe_labels: jax.Array) -> jax.Array:
    """Closed-set rank-1 identification rate: the fraction of probes whose most similar
    gallery entry has their identity.

    Args:
      gallery: ``[G, D]``; gallery_labels: ``[G]``; probes: ``[Q, D]``;
      probe_labels: ``[Q]`` (every probe identity is enrolled in a closed set).

    Returns:
      A scalar in ``[0, 1]``.

    Example:
      >>> g = jnp.array([[1., 0.], [0., 1.]])
      >>> float(rank1_accuracy(g, jnp.array([0, 1]), g[::-1], jnp.array([1, 1])))
      0.5
    """
    gallery, gallery_labels, probes, probe_labels, ok = _gallery_args(
        gallery, gallery_labels, probes, probe_labels)
    predicted, _ = identify(gallery, gallery_labels, probes)
    return maybe_poison(jnp.mean((predicted == probe_labels).astype(jnp.float32)), ok)


def dir_at_far(gallery: jax.Array, gallery_labels: jax.Array, probes: jax.Array,
               probe_labels: jax.Array, far: float = 1e-2) -> jax.Array:
    """Open-set identification: detection and identification rate at a false alarm rate.

    A probe is *mated* when its identity is in the gallery. With ``s_q`` its best
    gallery similarity, a threshold ``t`` accepts it when ``s_q ≥ t``.
    ``DIR@FAR = max_t #{mated q: top-1 correct and s_q ≥ t} / #mated`` subject to
    ``#{non-mated q: s_q ≥ t} / #non-mated ≤ far`` (FPIR, the false positive
    identification rate).

    Args:
      gallery: ``[G, D]``; gallery_labels: ``[G]``; probes: ``[Q, D]``;
      probe_labels: ``[Q]`` (identities absent from the gallery are non-mated).
      far: the allowed fraction of non-mated probes accepted, in ``[0, 1]``.

    Returns:
      A scalar in ``[0, 1]``.

    Example:
      >>> g = jnp.array([[1., 0.], [0., 1.]])
      >>> q = jnp.array([[1., 0.1], [0.7, 0.7]])        # mated (id 0), non-mated (id 5)
      >>> float(dir_at_far(g, jnp.array([0, 1]), q, jnp.array([0, 5]), far=0.0))
      1.0

    Paper: Grother et al., NIST FRVT Part 2 (identification); Liu et al. 2017
    "SphereFace" (MegaFace-style open-set evaluation).
    """
    gallery, gallery_labels, probes, probe_labels, ok = _gallery_args(
        gallery, gallery_labels, probes, probe_labels)
    ok = all_ok(ok, _rate_ok(far, "far"))
    predicted, best = identify(gallery, gallery_labels, probes)
    mated = jnp.any(probe_labels[:, None] == gallery_labels[None, :], axis=1)   # [Q]
    hit = mated & (predicted == probe_labels)
    rate = _rate_at_false_rate(jnp.where(mated, best, -jnp.inf), hit, best, ~mated, far)
    rate = rate * shape_of(probes)[0] / jnp.maximum(jnp.sum(mated), 1)
    return maybe_poison(rate, ok)
