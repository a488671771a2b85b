"""Metric-learning losses for face embeddings: contrastive, triplet (three minings),
center loss.

Distances. Triplet losses use ``d(a, b) = ‖â − b̂‖²`` between L2-normalised
embeddings (FaceNet's choice; ``normalize=False`` / ``squared=False`` change it),
computed for all pairs of a batch at once. Square roots and normalisations are
evaluated safely, so coincident embeddings give finite gradients.

Triplet mining over a batch with labels (anchor ``a``, positive ``p`` with
``y_p = y_a``, ``p ≠ a``, negative ``n`` with ``y_n ≠ y_a``), with
``ℓ(a, p, n) = max(0, d(a, p) − d(a, n) + margin)``:

* ``batch_all``: mean of ``ℓ`` over the valid triplets with ``ℓ > 0``
  (Hermans et al. 2017, "BA≠0"); 0 when there is none.
* ``batch_hard``: per anchor, its farthest positive and closest negative,
  ``max(0, max_p d(a, p) − min_n d(a, n) + margin)``, mean over anchors that have
  both (Hermans et al. 2017).
* ``semi_hard`` (FaceNet): per positive pair ``(a, p)``, the closest negative farther
  than the positive, ``min {d(a, n) : d(a, n) > d(a, p)}``; where none exists the
  farthest negative; mean of ``ℓ`` over positive pairs whose anchor has a negative
  (the rule of ``tfa.losses.triplet_semihard_loss``).

Bad input (policy of :mod:`common.checks`): wrong ranks and sizes always raise
``ValueError`` naming the argument; non-finite embeddings raise when concrete and
give a NaN loss when traced.

Papers: Hadsell, Chopra, LeCun 2006 "Dimensionality Reduction by Learning an
Invariant Mapping"; Schroff et al. 2015 "FaceNet"; Hermans et al. 2017 "In Defense of
the Triplet Loss for Person Re-Identification"; Wen et al. 2016 "A Discriminative
Feature Learning Approach for Deep Face Recognition" (center loss).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from common.checks import check_rank, shape_of, shape_str
from common.registry import Registry
from vision.face.margins import all_ok, finite_ok, index_ok, l2_normalize, maybe_poison

__all__ = [
    "TRIPLET_MINING",
    "center_loss",
    "center_update",
    "contrastive_loss",
    "pairwise_distances",
    "triplet_batch_all",
    "triplet_batch_hard",
    "triplet_loss",
    "triplet_semi_hard",
]

TRIPLET_MINING: Registry[Callable[..., jax.Array]] = Registry("triplet mining")
"""Triplet losses by mining strategy: ``fn(dist [B, B], labels [B], margin) -> scalar``."""


def _safe_sqrt(x: jax.Array) -> jax.Array:
    pos = x > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, x, 1.0)), 0.0)


def _check_embeddings(embeddings, name: str = "embeddings"):
    check_rank(embeddings, name, 2, "[B, D]")
    embeddings = jnp.asarray(embeddings)
    if not jnp.issubdtype(embeddings.dtype, jnp.floating):
        raise ValueError(f"{name} must be floating point, got dtype {embeddings.dtype}")
    return embeddings, finite_ok(embeddings, name)


def _check_labels(labels, b: int, name: str = "labels"):
    check_rank(labels, name, 1, "[B]")
    if shape_of(labels)[0] != b:
        raise ValueError(f"{name} must have shape [B] = ({b}), got shape "
                         f"{shape_str(shape_of(labels))}")
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"{name} must be integer identities, got dtype {labels.dtype}")
    return labels


@functools.partial(jax.jit, static_argnames=("normalize", "squared"))
def pairwise_distances(embeddings: jax.Array, *, normalize: bool = True,
                       squared: bool = True) -> jax.Array:
    """All pairwise distances ``[B, B]``: ``‖x_i − x_j‖²`` (or ``‖·‖``), of the
    L2-normalised embeddings by default; zero on the diagonal, never negative.

    Example:
      >>> pairwise_distances(jnp.array([[1., 0.], [0., 1.]])).tolist()
      [[0.0, 2.0], [2.0, 0.0]]
    """
    x = l2_normalize(embeddings) if normalize else embeddings
    sq = jnp.sum(x * x, axis=1)
    d = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0)
    d = jnp.where(jnp.eye(x.shape[0], dtype=bool), 0.0, d)
    return d if squared else _safe_sqrt(d)


def contrastive_loss(emb1: jax.Array, emb2: jax.Array, same: jax.Array, *,
                     margin: float = 1.0, normalize: bool = False) -> jax.Array:
    """Contrastive loss of pairs: ``mean ½ [Y d² + (1 − Y) max(0, margin − d)²]``,
    ``d = ‖x₁ − x₂‖``, ``Y = 1`` for a genuine (same-identity) pair.

    Args:
      emb1, emb2: ``[P, D]`` embeddings of the two sides of each pair.
      same: ``[P]`` boolean (or 0/1), True for genuine pairs.
      margin: the distance impostor pairs are pushed beyond.
      normalize: L2-normalise the embeddings first.

    Returns:
      A scalar.

    Example:
      >>> a = jnp.array([[0., 0.], [0., 0.]]); b = jnp.array([[3., 4.], [0.5, 0.]])
      >>> float(contrastive_loss(a, b, jnp.array([True, False])))   # (½·25 + ½·0.25) / 2
      6.3125

    Paper: Hadsell, Chopra, LeCun 2006, "Dimensionality Reduction by Learning an
    Invariant Mapping" (DeepID2 used it for faces).
    """
    emb1, ok1 = _check_embeddings(emb1, "emb1")
    emb2, ok2 = _check_embeddings(emb2, "emb2")
    if shape_of(emb1) != shape_of(emb2):
        raise ValueError(f"emb2 must have the shape of emb1 {shape_str(shape_of(emb1))}, "
                         f"got shape {shape_str(shape_of(emb2))}")
    check_rank(same, "same", 1, "[P]")
    if shape_of(same)[0] != shape_of(emb1)[0]:
        raise ValueError(f"same must have shape [P] = ({shape_of(emb1)[0]}), got shape "
                         f"{shape_str(shape_of(same))}")
    if normalize:
        emb1, emb2 = l2_normalize(emb1), l2_normalize(emb2)
    y = jnp.asarray(same).astype(emb1.dtype)
    d2 = jnp.sum((emb1 - emb2) ** 2, axis=1)
    d = _safe_sqrt(d2)
    loss = jnp.mean(0.5 * (y * d2 + (1.0 - y) * jnp.maximum(margin - d, 0.0) ** 2))
    return maybe_poison(loss, all_ok(ok1, ok2))


def _masks(labels: jax.Array):
    same = labels[:, None] == labels[None, :]
    eye = jnp.eye(labels.shape[0], dtype=bool)
    return same & ~eye, ~same          # positive pairs, negative pairs


@TRIPLET_MINING.register("batch_all")
def triplet_batch_all(dist: jax.Array, labels: jax.Array, margin: float) -> jax.Array:
    """Mean of ``max(0, d(a,p) − d(a,n) + margin)`` over valid triplets with a positive
    value (0 when none). ``dist [B, B]``, ``labels [B]``."""
    pos, neg = _masks(labels)
    loss = dist[:, :, None] - dist[:, None, :] + margin           # [a, p, n]
    valid = pos[:, :, None] & neg[:, None, :]
    loss = jnp.where(valid, jnp.maximum(loss, 0.0), 0.0)
    active = jnp.sum(loss > 0)
    return jnp.sum(loss) / jnp.maximum(active, 1)


@TRIPLET_MINING.register("batch_hard")
def triplet_batch_hard(dist: jax.Array, labels: jax.Array, margin: float) -> jax.Array:
    """Per anchor the farthest positive and the closest negative; mean over anchors with
    both. ``dist [B, B]``, ``labels [B]``."""
    pos, neg = _masks(labels)
    hardest_pos = jnp.max(jnp.where(pos, dist, -jnp.inf), axis=1)
    hardest_neg = jnp.min(jnp.where(neg, dist, jnp.inf), axis=1)
    has = jnp.any(pos, axis=1) & jnp.any(neg, axis=1)
    loss = jnp.where(has, jnp.maximum(jnp.where(has, hardest_pos - hardest_neg, 0.0) + margin,
                                      0.0), 0.0)
    return jnp.sum(loss) / jnp.maximum(jnp.sum(has), 1)


@TRIPLET_MINING.register("semi_hard")
def triplet_semi_hard(dist: jax.Array, labels: jax.Array, margin: float) -> jax.Array:
    """FaceNet's semi-hard negatives: per positive pair ``(a, p)`` the closest negative
    with ``d(a, n) > d(a, p)``, else the farthest negative; mean over positive pairs
    whose anchor has a negative. ``dist [B, B]``, ``labels [B]``."""
    pos, neg = _masks(labels)
    d_ap = dist[:, :, None]                                        # [a, p, 1]
    d_an = dist[:, None, :]                                        # [a, 1, n]
    outside = neg[:, None, :] & (d_an > d_ap)                      # [a, p, n]
    closest_outside = jnp.min(jnp.where(outside, d_an, jnp.inf), axis=2)        # [a, p]
    farthest = jnp.max(jnp.where(neg, dist, -jnp.inf), axis=1)[:, None]         # [a, 1]
    chosen = jnp.where(jnp.any(outside, axis=2), closest_outside, farthest)
    valid = pos & jnp.any(neg, axis=1)[:, None]
    loss = jnp.where(valid, jnp.maximum(jnp.where(valid, dist - chosen, 0.0) + margin, 0.0),
                     0.0)
    return jnp.sum(loss) / jnp.maximum(jnp.sum(valid), 1)


@functools.cache
def _jit_mining(fn):
    return jax.jit(fn)


def triplet_loss(embeddings: jax.Array, labels: jax.Array, *, mining: str = "batch_hard",
                 margin: float = 0.2, normalize: bool = True,
                 squared: bool = True) -> jax.Array:
    """Triplet loss of a labelled batch with the named mining (:data:`TRIPLET_MINING`).

    ``ℓ(a, p, n) = max(0, d(a, p) − d(a, n) + margin)`` over triplets chosen by
    ``mining`` (``batch_all``, ``batch_hard``, ``semi_hard``; module docstring).

    Args:
      embeddings: ``[B, D]`` embeddings.
      labels: ``[B]`` integer identities.
      mining: the mining strategy.
      margin: FaceNet's ``α`` (0.2 for squared distances of normalised embeddings).
      normalize, squared: the distance (:func:`pairwise_distances`).

    Returns:
      A scalar (0 when the batch holds no valid triplet).

    Example:
      >>> x = jnp.array([[1., 0.], [0.9, 0.1], [0., 1.], [0.1, 0.9]])
      >>> float(triplet_loss(x, jnp.array([0, 0, 1, 1]), margin=0.2))
      0.0

    Paper: Schroff et al. 2015, "FaceNet: A Unified Embedding for Face Recognition and
    Clustering"; Hermans et al. 2017, "In Defense of the Triplet Loss".
    """
    fn = TRIPLET_MINING.get(mining)
    embeddings, ok = _check_embeddings(embeddings)
    labels = _check_labels(labels, shape_of(embeddings)[0])
    dist = pairwise_distances(embeddings, normalize=normalize, squared=squared)
    return maybe_poison(_jit_mining(fn)(dist, labels, margin), ok)


def center_loss(embeddings: jax.Array, centers: jax.Array, labels: jax.Array) -> jax.Array:
    """Center loss ``mean_i ½ ‖x_i − c_{y_i}‖²`` (Wen et al. 2016, eq. 2 per sample).

    Args:
      embeddings: ``[B, D]`` features.
      centers: ``[C, D]`` class centres (updated by :func:`center_update`, or by the
        optimizer when trained as parameters).
      labels: ``[B]`` classes in ``[0, C)``.

    Returns:
      A scalar. Labels out of range: ``ValueError`` naming ``labels`` (concrete), NaN
      (traced).

    Example:
      >>> float(center_loss(jnp.array([[1., 1.]]), jnp.zeros((3, 2)), jnp.array([2])))
      1.0

    Paper: Wen et al. 2016, "A Discriminative Feature Learning Approach for Deep Face
    Recognition".
    """
    embeddings, ok, centers, labels = _center_args(embeddings, centers, labels)
    diff = embeddings - centers[jnp.clip(labels, 0, centers.shape[0] - 1)]
    return maybe_poison(jnp.mean(0.5 * jnp.sum(diff * diff, axis=1)), ok)


def _center_args(embeddings, centers, labels):
    embeddings, ok = _check_embeddings(embeddings)
    check_rank(centers, "centers", 2, "[C, D]")
    if shape_of(centers)[1] != shape_of(embeddings)[1]:
        raise ValueError(f"centers must have shape [C, D] with D = {shape_of(embeddings)[1]}, "
                         f"got shape {shape_str(shape_of(centers))}")
    labels = _check_labels(labels, shape_of(embeddings)[0])
    c = shape_of(centers)[0]
    in_range = index_ok(labels, "labels", c)
    if in_range is not True:
        in_range = jnp.all(in_range)
    return embeddings, all_ok(ok, in_range), jnp.asarray(centers), labels


def center_update(centers: jax.Array, embeddings: jax.Array, labels: jax.Array, *,
                  alpha: float = 0.5) -> jax.Array:
    """Wen et al.'s centre update ``c_j ← c_j − α Δc_j``,
    ``Δc_j = Σ_i [y_i = j] (c_j − x_i) / (1 + Σ_i [y_i = j])``.

    Args:
      centers: ``[C, D]``; embeddings: ``[B, D]``; labels: ``[B]`` in ``[0, C)``.
      alpha: the centre learning rate ``α ∈ [0, 1]``.

    Returns:
      ``[C, D]`` updated centres (classes absent from the batch unchanged).

    Example:
      >>> c = center_update(jnp.zeros((2, 1)), jnp.array([[2.], [2.]]), jnp.array([1, 1]))
      >>> c.tolist()    # Δc = (0 − 4) / 3, c = 0.5 · 4/3
      [[0.0], [0.6666666865348816]]
    """
    embeddings, ok, centers, labels = _center_args(embeddings, centers, labels)
    c = centers.shape[0]
    onehot = jax.nn.one_hot(labels, c, dtype=centers.dtype)      # [B, C]
    counts = jnp.sum(onehot, axis=0)                             # [C]
    sums = onehot.T @ embeddings                                 # [C, D]
    delta = (counts[:, None] * centers - sums) / (1.0 + counts[:, None])
    return maybe_poison(centers - alpha * jax.lax.stop_gradient(delta), ok)
