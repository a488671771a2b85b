"""Partial FC: a margin-softmax classifier over many identities that, per step, uses
every positive class centre plus a random fraction of the negative ones, with the
centres sharded along the mesh's ``model`` axis (model-parallel classifier).

Sampling. The ``C`` centres are split into ``M`` contiguous blocks of ``C/M`` (one
per ``model`` shard; ``M = 1`` on one device). Each block keeps
``S_b = ⌊sample_rate · C/M⌋`` centres: every class of the *global* batch that falls
in the block, then negatives chosen uniformly at random without replacement
(random scores from ``fold_in(key, block)``, positives scored above them, the top
``S_b`` kept, in increasing class order). The sample has a fixed size
``S = M · S_b``, so the step jits. Labels are remapped to positions in the sample,
and the loss is the softmax cross-entropy of the margin head's logits over the
sample — a head from :data:`vision.face.margins.MARGINS`, which is column-separable,
so that a shard computes its own columns and only the softmax normaliser
(``max``, ``Σ exp``) and the target logit cross the ``model`` axis.

The single-device :func:`partial_fc_loss` (with ``num_shards = M``) and the sharded
:func:`make_sharded_partial_fc_loss` draw the same sample, so their losses and
gradients agree (tested on 8 simulated devices). With ``sample_rate = 1`` the loss is
the full margin loss.

Bad input: the checks of :func:`vision.face.margins.margin_logits`; a block must have
room for its positives (``S_b ≥`` the number of distinct batch classes in the
block): concrete labels that break this raise ``ValueError`` naming
``sample_rate``; traced, the loss is NaN.

Paper: An et al. 2021/2022, "Partial FC: Training 10 Million Identities on a Single
Machine" / "Killing Two Birds with One Stone: Efficient and Robust Training of Face
Recognition CNNs by Partial FC" (insightface's ``partial_fc_v2``).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from common.checks import check_int, is_concrete, poison, shape_of
from common.sharding import DATA_AXIS, MODEL_AXIS
from vision.face.margins import (
    MARGINS,
    check_margin_inputs,
    softmax_cross_entropy,
)

__all__ = [
    "PartialSample",
    "make_sharded_partial_fc_loss",
    "partial_fc_loss",
    "sample_centers",
    "samples_per_shard",
]


class PartialSample(NamedTuple):
    """A Partial FC sample: ``indices [S]`` sorted class indices, ``labels [B]`` the
    batch labels as positions in ``indices``, ``valid`` True when every label was
    sampled (always, unless a block had more positives than room)."""

    indices: jax.Array
    labels: jax.Array
    valid: jax.Array


def samples_per_shard(num_classes: int, sample_rate: float, num_shards: int = 1) -> int:
    """``S_b = ⌊sample_rate · C / M⌋`` centres kept per block (insightface's
    ``int(sample_rate * num_local)``); ``ValueError`` naming the bad argument.

    Example:
      >>> samples_per_shard(100_000, 0.1), samples_per_shard(1000, 0.5, num_shards=8)
      (10000, 62)
    """
    num_classes = check_int(num_classes, "num_classes", 1)
    num_shards = check_int(num_shards, "num_shards", 1)
    if num_classes % num_shards:
        raise ValueError(f"num_classes = {num_classes} must be divisible by num_shards = "
                         f"{num_shards} (the model axis)")
    if not (isinstance(sample_rate, (int, float)) and 0.0 < sample_rate <= 1.0):
        raise ValueError(f"sample_rate must be a number in (0, 1], got {sample_rate!r}")
    per = int(sample_rate * (num_classes // num_shards))
    if per < 1:
        raise ValueError(f"sample_rate = {sample_rate} keeps no centre of the "
                         f"{num_classes // num_shards} per shard; raise it")
    return per


def _sample_block(key: jax.Array, positive: jax.Array, count: int) -> jax.Array:
    """``count`` sorted local indices of one block: its positives, then random negatives."""
    score = jnp.where(positive, 2.0, jax.random.uniform(key, positive.shape))
    _, idx = jax.lax.top_k(score, count)
    return jnp.sort(idx)


def _remap(indices: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Positions of ``labels`` in the sorted ``indices`` and whether each was found."""
    pos = jnp.clip(jnp.searchsorted(indices, labels), 0, indices.shape[0] - 1)
    return pos, indices[pos] == labels


def sample_centers(key: jax.Array, labels: jax.Array, num_classes: int, sample_rate: float,
                   num_shards: int = 1) -> PartialSample:
    """Draw a Partial FC sample: every positive class plus random negatives per block.

    Args:
      key: a PRNG key (fold in the step for a new sample each step).
      labels: ``[B]`` the batch's classes in ``[0, C)``.
      num_classes: ``C``.
      sample_rate: fraction of each block's centres kept, in ``(0, 1]``.
      num_shards: ``M`` blocks (the size of the ``model`` axis the centres are split
        over; 1 on one device).

    Returns:
      A :class:`PartialSample` with ``indices [M · S_b]``.

    Example:
      >>> s = sample_centers(jax.random.key(0), jnp.array([3, 7]), 10, 0.5)
      >>> s.indices.shape, bool(jnp.all(s.indices[s.labels] == jnp.array([3, 7])))
      ((5,), True)
    """
    per = samples_per_shard(num_classes, sample_rate, num_shards)
    return _draw(key, jnp.asarray(labels), num_classes, per, num_shards)


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _draw(key, labels, num_classes: int, per: int, num_shards: int) -> PartialSample:
    """The jitted body of :func:`sample_centers`."""
    block = num_classes // num_shards
    positive = jnp.zeros(num_classes, bool).at[labels].set(True, mode="drop")
    keys = jax.vmap(lambda b: jax.random.fold_in(key, b))(jnp.arange(num_shards))
    local = jax.vmap(_sample_block, in_axes=(0, 0, None))(
        keys, positive.reshape(num_shards, block), per)                     # [M, S_b]
    indices = (local + block * jnp.arange(num_shards)[:, None]).reshape(-1)
    new_labels, found = _remap(indices, labels)
    return PartialSample(indices, new_labels, jnp.all(found))


def _require_valid(valid, labels) -> None:
    if is_concrete(valid) and is_concrete(labels) and not bool(valid):
        raise ValueError("sample_rate keeps fewer centres per shard than the batch has "
                         "distinct classes in one shard; raise sample_rate or lower the "
                         "batch size")


def partial_fc_loss(embeddings: jax.Array, centers: jax.Array, labels: jax.Array,
                    key: jax.Array, *, margin: str = "arcface", sample_rate: float = 0.1,
                    num_shards: int = 1, **params) -> jax.Array:
    """Partial FC margin loss on one device (the reference for the sharded version).

    ``L = mean_i CE(head(x_i, W[idx], y'_i), y'_i)`` with ``idx`` from
    :func:`sample_centers` and ``y'`` the labels remapped into the sample.

    Args:
      embeddings: ``[B, D]``; centers: ``[C, D]``; labels: ``[B]`` in ``[0, C)``.
      key: PRNG key of this step's sample.
      margin: the margin head's name; ``**params`` its parameters.
      sample_rate: fraction of centres kept (insightface's default 0.1 at scale).
      num_shards: blocks of the sample (equal to the sharded loss's ``model`` size).

    Returns:
      A scalar; its gradient in ``centers`` is zero outside the sample.

    Example:
      >>> x = jax.random.normal(jax.random.key(0), (4, 8))
      >>> w = jax.random.normal(jax.random.key(1), (32, 8))
      >>> loss = partial_fc_loss(x, w, jnp.arange(4), jax.random.key(2), sample_rate=0.25)
      >>> bool(jnp.isfinite(loss))
      True

    Paper: An et al. 2022, "Killing Two Birds with One Stone: Efficient and Robust
    Training of Face Recognition CNNs by Partial FC".
    """
    MARGINS.get(margin)
    embeddings, centers, labels, ok = check_margin_inputs(embeddings, centers, labels)
    samples_per_shard(shape_of(centers)[0], sample_rate, num_shards)
    if ok is not True:
        embeddings = poison(embeddings, ok)
    loss, valid = _core(margin, sample_rate, num_shards, params)(embeddings, centers, labels, key)
    _require_valid(valid, labels)
    return loss if is_concrete(valid) else poison(loss, valid)


def _partial_fc(embeddings, centers, labels, key, *, margin, sample_rate, num_shards, **params):
    """The body of :func:`partial_fc_loss` (arguments checked): ``(loss, valid)``."""
    sample = sample_centers(key, jnp.clip(labels, 0, centers.shape[0] - 1), centers.shape[0],
                            sample_rate, num_shards)
    logits = MARGINS.get(margin)(embeddings, centers[sample.indices], sample.labels, **params)
    return softmax_cross_entropy(logits, sample.labels), sample.valid


def _core(margin: str, sample_rate: float, num_shards: int, params: dict):
    """:func:`_partial_fc` with its settings bound, jitted and cached when every setting
    is a plain Python value (one compilation per setting), else as it is."""
    if all(isinstance(v, (bool, int, float, type(None))) for v in params.values()):
        return _cached_core(margin, sample_rate, num_shards, tuple(sorted(params.items())))
    return functools.partial(_partial_fc, margin=margin, sample_rate=sample_rate,
                             num_shards=num_shards, **params)


@functools.lru_cache(maxsize=64)
def _cached_core(margin: str, sample_rate: float, num_shards: int, items: tuple):
    return jax.jit(functools.partial(_partial_fc, margin=margin, sample_rate=sample_rate,
                                     num_shards=num_shards, **dict(items)))


def make_sharded_partial_fc_loss(mesh: Mesh, num_classes: int, *, margin: str = "arcface",
                                 sample_rate: float = 0.1, **params):
    """Partial FC loss with the centres sharded along ``model`` and the batch along
    ``data`` (``jax.shard_map``), equal to :func:`partial_fc_loss` with
    ``num_shards = mesh.shape["model"]``.

    Each ``(data, model)`` device holds ``B / |data|`` embeddings and ``C / |model|``
    centres; the batch labels are all-gathered over ``data`` so that every shard
    samples the same positives; each device computes the logits of its embeddings
    against its sampled centres, and the cross-entropy is assembled from
    ``pmax``/``psum`` over ``model`` (max, ``Σ exp``, target logit), then averaged over
    ``data``. Gradients come out sharded like their inputs.

    Args:
      mesh: a mesh with ``data`` and ``model`` axes (:func:`common.sharding.make_mesh`).
      num_classes: ``C``, divisible by the ``model`` size.
      margin, sample_rate, **params: as :func:`partial_fc_loss`.

    Returns:
      ``loss(embeddings [B, D], centers [C, D], labels [B], key) -> scalar``; shapes
      checked on every call (``B`` divisible by the ``data`` size). Jit it with the
      centres placed as ``NamedSharding(mesh, P("model", None))``.

    Example:
      >>> from jax.sharding import NamedSharding
      >>> from common.sharding import make_mesh
      >>> mesh = make_mesh(data=2, model=4)                  # 8 devices
      >>> loss_fn = jax.jit(make_sharded_partial_fc_loss(mesh, 1024, sample_rate=0.1))
      >>> x, w = jnp.ones((8, 16)), jnp.ones((1024, 16))
      >>> w = jax.device_put(w, NamedSharding(mesh, P("model", None)))
      >>> loss = loss_fn(x, w, jnp.arange(8), jax.random.key(0))
    """
    head = MARGINS.get(margin)
    for axis in (DATA_AXIS, MODEL_AXIS):
        if axis not in mesh.shape:
            raise ValueError(f"mesh must have a {axis!r} axis (common.sharding.make_mesh), "
                             f"got axes {tuple(mesh.shape)}")
    shards, replicas = mesh.shape[MODEL_AXIS], mesh.shape[DATA_AXIS]
    per = samples_per_shard(num_classes, sample_rate, shards)
    block = num_classes // shards

    def local(emb, cen, lab, key):
        shard = jax.lax.axis_index(MODEL_AXIS)
        offset = shard * block
        everyone = jax.lax.all_gather(lab, DATA_AXIS, tiled=True) - offset       # [B]
        inside = (everyone >= 0) & (everyone < block)
        positive = jnp.zeros(block, bool).at[jnp.where(inside, everyone, block)].set(
            True, mode="drop")
        idx = _sample_block(jax.random.fold_in(key, shard), positive, per)       # [S_b]
        mine = lab - offset
        pos, found = _remap(idx, jnp.clip(mine, 0, block - 1))
        found = found & (mine >= 0) & (mine < block)
        sub_labels = jnp.where(found, pos, -1)
        logits = head(emb, cen[idx], sub_labels, **params)                       # [b, S_b]
        top = jax.lax.pmax(jax.lax.stop_gradient(jnp.max(logits, axis=1)), MODEL_AXIS)
        sum_exp = jax.lax.psum(jnp.sum(jnp.exp(logits - top[:, None]), axis=1), MODEL_AXIS)
        onehot = sub_labels[:, None] == jnp.arange(per)[None, :]
        target = jax.lax.psum(jnp.sum(jnp.where(onehot, logits, 0.0), axis=1), MODEL_AXIS)
        loss = jax.lax.pmean(jnp.mean(jnp.log(sum_exp) + top - target), DATA_AXIS)
        hits = jax.lax.psum(found.astype(jnp.int32), MODEL_AXIS)                 # [b]
        misses = jax.lax.psum(jnp.sum(hits != 1), DATA_AXIS)
        return loss, misses

    sharded = jax.shard_map(
        local, mesh=mesh,
        in_specs=(P(DATA_AXIS, None), P(MODEL_AXIS, None), P(DATA_AXIS), P()),
        out_specs=(P(), P()))

    def loss_fn(embeddings, centers, labels, key):
        embeddings, centers, labels, ok = check_margin_inputs(embeddings, centers, labels)
        if shape_of(centers)[0] != num_classes:
            raise ValueError(f"centers must have shape [C, D] with C = num_classes = "
                             f"{num_classes}, got {shape_of(centers)[0]} rows")
        b = shape_of(embeddings)[0]
        if b % replicas:
            raise ValueError(f"embeddings must have a batch size divisible by the data axis "
                             f"size {replicas}, got B = {b}")
        if ok is not True:
            embeddings = poison(embeddings, ok)
        loss, misses = sharded(embeddings, centers, labels, key)
        _require_valid(misses == 0, labels)
        return poison(loss, misses == 0)

    return loss_fn

