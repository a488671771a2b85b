"""CART trees as fixed-shape arrays: fit and predict jit and ``vmap`` over ensemble members.

A tree of depth ``d`` is stored *complete*: ``2^d − 1`` internal nodes in heap order
(children of node ``h`` are ``2h + 1`` and ``2h + 2``) and ``2^d`` leaves::

    feature    [2^d − 1] int32    the feature tested at each internal node
    threshold  [2^d − 1]          go left when ``x[feature] <= threshold``
    value      [2^d, V]           leaf values: class probabilities (V = K) or a mean (V = 1)

A node that cannot split (pure, too small, depth reached, no valid threshold) is
*inert*: its threshold is ``+inf``, so every sample goes left and its left descendants
see the same samples; the right subtree is empty and unreachable. The tree is grown
level by level for all nodes of a level at once: every sample carries its node id, and
per-node statistics are segment sums.

Split search (CART, Breiman et al. 1984), scikit-learn's semantics:

* ``splitter="best"``, exact: for every feature the samples are ordered by (node,
  value); candidate thresholds are midpoints between consecutive distinct values
  (values closer than 1e-7 count as equal, as scikit-learn's ``FEATURE_THRESHOLD``);
  the criterion's *proxy improvement* is maximised.
* ``splitter="hist"``: the same search over at most ``max_bins − 1`` thresholds per
  feature (midpoints between distinct values when there are few, otherwise spaced by
  sample quantiles, as LightGBM and scikit-learn's ``HistGradientBoosting``).
* ``splitter="random"`` (extra trees, Geurts et al. 2006): one threshold per
  (node, feature) drawn uniformly between the node's minimum and maximum.

Ties. Among equal proxy improvements the lowest threshold of a feature wins, then the
lowest feature index. scikit-learn visits features in a random order and keeps the
first strict maximum, so the two differ only when two different features give exactly
the same improvement; when they induce the same partition of the training samples
(the usual cause: monotone-related features), the fitted predictions on the training
set are identical.

Samples with zero weight take no part (as in scikit-learn's splitter): they neither
count towards ``min_samples_leaf`` nor provide threshold candidates. Masking rows with
zero weight is therefore how cross-validation folds and bootstrap samples are fitted
with one fixed shape.

Criteria (proxies as in scikit-learn): Gini ``1 − Σ_k p_k²``, entropy ``−Σ_k p_k
log2 p_k`` with proxy ``−(w_L·i_L + w_R·i_R)``; squared error with proxy
``s_L²/w_L + s_R²/w_R`` (``s`` the weighted sum of targets).

Example:
    >>> stats, count = class_stats(y, weight, num_classes=3)
    >>> tree = fit_tree(key, X, stats, count, criterion="gini", max_depth=4)
    >>> proba = predict_tree(tree, X)           # [N, 3]
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "CRITERIA",
    "SPLITTERS",
    "Tree",
    "apply_tree",
    "class_stats",
    "fit_tree",
    "make_bins",
    "predict_tree",
    "regression_stats",
]

CRITERIA = ("gini", "entropy", "squared_error")
SPLITTERS = ("best", "hist", "random")
FEATURE_THRESHOLD = 1e-7  # values closer than this are one value (scikit-learn's constant)


class Tree(NamedTuple):
    """A complete binary tree of depth ``d`` (leading member axes allowed).

    Attributes:
      feature: ``[2^d − 1] int32`` feature index of each internal node.
      threshold: ``[2^d − 1]`` split threshold (``+inf`` for inert nodes).
      value: ``[2^d, V]`` leaf values.
    """

    feature: jax.Array
    threshold: jax.Array
    value: jax.Array


# ----------------------------------------------------------------------------- criteria


def _safe_div(a, b):
    return a / jnp.where(b > 0, b, 1.0)


def _impurity(stats, criterion: str):
    """Node impurity from summed statistics ``[..., C]`` (scikit-learn's formulas)."""
    if criterion == "squared_error":
        w, s, q = stats[..., 0], stats[..., 1], stats[..., 2]
        return _safe_div(q, w) - _safe_div(s, w) ** 2
    w = jnp.sum(stats, axis=-1)
    p = _safe_div(stats, w[..., None])
    if criterion == "gini":
        return 1.0 - _safe_div(jnp.sum(stats * stats, axis=-1), w * w)
    return -jnp.sum(jnp.where(p > 0, p * jnp.log2(jnp.where(p > 0, p, 1.0)), 0.0), axis=-1)


def _proxy(left, right, criterion: str):
    """scikit-learn's proxy impurity improvement of a split (larger is better)."""
    if criterion == "squared_error":
        return _safe_div(left[..., 1] ** 2, left[..., 0]) + _safe_div(
            right[..., 1] ** 2, right[..., 0])
    w_l, w_r = jnp.sum(left, axis=-1), jnp.sum(right, axis=-1)
    return -w_r * _impurity(right, criterion) - w_l * _impurity(left, criterion)


def _value(stats, criterion: str):
    """Leaf value: class probabilities ``[..., K]`` or the weighted mean ``[..., 1]``."""
    if criterion == "squared_error":
        return _safe_div(stats[..., 1], stats[..., 0])[..., None]
    return _safe_div(stats, jnp.sum(stats, axis=-1, keepdims=True))


def class_stats(y, weight, num_classes: int):
    """Per-sample statistics of a classification tree: ``w_i · onehot(y_i)``.

    Args:
      y: ``[N]`` int labels in ``0..K−1``.
      weight: ``[N]`` non-negative sample weights.
      num_classes: ``K``.

    Returns:
      ``(stats [N, K], count [N])`` with ``count = (w > 0)``.
    """
    stats = weight[:, None] * jax.nn.one_hot(y, num_classes, dtype=weight.dtype)
    return stats, (weight > 0).astype(weight.dtype)


def regression_stats(y, weight):
    """Per-sample statistics of a squared-error tree: ``[w, w·y, w·y²]``.

    Args:
      y: ``[N]`` float targets.
      weight: ``[N]`` non-negative sample weights.

    Returns:
      ``(stats [N, 3], count [N])``.
    """
    stats = jnp.stack([weight, weight * y, weight * y * y], axis=-1)
    return stats, (weight > 0).astype(weight.dtype)


# ----------------------------------------------------------------------------- binning


@functools.partial(jax.jit, static_argnames=("max_bins",))
def make_bins(X, max_bins: int):
    """Histogram thresholds per feature and the binned data (jittable).

    With at most ``max_bins`` distinct values in a feature, the thresholds are all the
    midpoints between consecutive distinct values (the histogram search is then
    exact); otherwise ``max_bins − 1`` of them, the first midpoint at or above each
    sample quantile ``b / max_bins``. Unused thresholds are ``+inf``.

    Args:
      X: ``[N, D]`` features.
      max_bins: ``B`` (2..256).

    Returns:
      ``(binned [N, D] int32 in 0..B−1, thresholds [D, B − 1])`` with
      ``x <= thresholds[d, b]  ⇔  binned[:, d] <= b``.
    """
    n = X.shape[0]

    def one(col):
        xs = jnp.sort(col)
        gap = xs[1:] > xs[:-1] + FEATURE_THRESHOLD                       # [N − 1]
        mid = (xs[1:] + xs[:-1]) / 2
        mid = jnp.where(mid == xs[1:], xs[:-1], mid)
        mids = jnp.where(gap, mid, jnp.inf)
        num_gaps = jnp.sum(gap)
        # all distinct midpoints, in order (compacted to the front)
        order = jnp.argsort(jnp.where(gap, 0, 1), stable=True)
        all_mids = mids[order][: max_bins - 1]
        if all_mids.shape[0] < max_bins - 1:
            all_mids = jnp.pad(all_mids, (0, max_bins - 1 - all_mids.shape[0]),
                               constant_values=jnp.inf)
        # quantile-spaced midpoints: the first gap j with (j + 1) samples below >= b·N/B
        idx = jnp.arange(n - 1)
        next_gap = jax.lax.cummin(jnp.where(gap, idx, n - 1)[::-1])[::-1]   # [N − 1]
        start = jnp.ceil(jnp.arange(1, max_bins) * (n / max_bins)).astype(jnp.int32) - 1
        j = next_gap[jnp.clip(start, 0, n - 2)]
        q_mids = jnp.where(j < n - 1, mids[jnp.clip(j, 0, n - 2)], jnp.inf)
        q_mids = jnp.sort(q_mids)
        q_mids = jnp.where(jnp.concatenate([jnp.array([True]), q_mids[1:] > q_mids[:-1]]),
                           q_mids, jnp.inf)
        q_mids = jnp.sort(q_mids)
        thresholds = jnp.where(num_gaps <= max_bins - 1, all_mids, q_mids)
        return jnp.searchsorted(thresholds, col, side="left").astype(jnp.int32), thresholds

    if n < 2:
        return (jnp.zeros(X.shape, jnp.int32),
                jnp.full((X.shape[1], max_bins - 1), jnp.inf, X.dtype))
    binned, thresholds = jax.vmap(one, in_axes=1, out_axes=(1, 0))(X)
    return binned, thresholds


# ----------------------------------------------------------------------------- fitting


def _feature_subsets(key, num_nodes: int, num_features: int, max_features: int):
    """``[n, m] int32``: a random subset of ``m = max_features`` features per node, in
    increasing feature order (so the scan over a node's features meets the lowest index
    first, which keeps the tie rule)."""
    scores = jax.random.uniform(key, (num_nodes, num_features))
    return jnp.sort(jax.lax.top_k(scores, max_features)[1], axis=1).astype(jnp.int32)


def _split_exact(xs, order, nid, n, stats, count, totals, total_count, criterion,
                 min_samples_leaf):
    """Best exact threshold of one feature per node for every node of a level.

    ``order [N]`` lists the samples grouped by node (node order, dead samples last) and
    sorted within each node by that node's feature; ``xs [N]`` are those features'
    values in this order.

    Returns ``(proxy [n], threshold [n])`` (proxy −inf where no valid split)."""
    N = xs.shape[0]
    ns = nid[order]
    cs = jnp.cumsum(stats[order], axis=0)                                # [N, C]
    cc = jnp.cumsum(count[order])
    base = jnp.cumsum(totals, axis=0) - totals                           # [n + 1, C]
    base_c = jnp.cumsum(total_count) - total_count
    left = cs - base[ns]
    right = totals[ns] - left
    c_left = cc - base_c[ns]
    c_right = total_count[ns] - c_left
    same = jnp.concatenate([ns[1:] == ns[:-1], jnp.array([False])])
    gap = jnp.concatenate([xs[1:] > xs[:-1] + FEATURE_THRESHOLD, jnp.array([False])])
    live = ns < n
    valid = same & gap & live & (c_left >= min_samples_leaf) & (c_right >= min_samples_leaf)
    proxy = jnp.where(valid, _proxy(left, right, criterion), -jnp.inf)
    best = jax.ops.segment_max(proxy, ns, n + 1)[:n]
    idx = jnp.arange(N)
    first = jnp.where(valid & (proxy >= best[jnp.minimum(ns, n - 1)]), idx, N)
    pos = jax.ops.segment_min(first, ns, n + 1)[:n]
    pos = jnp.clip(pos, 0, N - 2)
    lo, hi = xs[pos], xs[pos + 1]
    mid = (lo + hi) / 2
    mid = jnp.where((mid == hi) | ~jnp.isfinite(mid), lo, mid)
    return best, mid


def _repartition(order, child, n: int):
    """Stable partition of a node-grouped order into the next level's nodes.

    ``child [N]`` is each sample's new node id (``2j`` or ``2j + 1`` for parent ``j``,
    ``2n`` for dead samples). Positions come from counts, so no sort is needed:
    ``new_pos = start[c] + (samples before it in its parent going the same way)``."""
    c = child[order]
    is_r = (c % 2) == 1
    parent = c // 2                                                      # 0..n
    counts = jax.ops.segment_sum(jnp.ones_like(child), child, 2 * n + 1)
    start = jnp.cumsum(counts) - counts
    left_counts = counts[0::2]                                           # [n + 1]
    right_counts = jnp.concatenate([counts[1::2], jnp.zeros((1,), counts.dtype)])
    prev_l = jnp.cumsum(left_counts) - left_counts
    prev_r = jnp.cumsum(right_counts) - right_counts
    cum_r = jnp.cumsum(is_r) - is_r
    cum_l = jnp.cumsum(~is_r) - (~is_r)
    within = jnp.where(is_r, cum_r - prev_r[parent], cum_l - prev_l[parent])
    return jnp.zeros_like(order).at[start[c] + within].set(order, unique_indices=True)


def _split_hist(bcol, thr, nid, n, stats, count, totals, total_count, criterion,
                min_samples_leaf):
    """Best histogram threshold of one feature per node for every node of a level.

    ``bcol [N]`` is each sample's bin of its node's feature; ``thr`` the bin edges,
    ``[B − 1]`` (one feature for all nodes) or ``[n, B − 1]`` (one per node)."""
    nb = thr.shape[-1] + 1
    thr = jnp.broadcast_to(thr, (n, nb - 1))
    seg = nid * nb + bcol
    h = jax.ops.segment_sum(stats, seg, (n + 1) * nb).reshape(n + 1, nb, -1)[:n]
    hc = jax.ops.segment_sum(count, seg, (n + 1) * nb).reshape(n + 1, nb)[:n]
    left = jnp.cumsum(h, axis=1)[:, :-1]                                  # [n, B − 1, C]
    c_left = jnp.cumsum(hc, axis=1)[:, :-1]
    right = totals[:n, None] - left
    c_right = total_count[:n, None] - c_left
    valid = ((c_left >= min_samples_leaf) & (c_right >= min_samples_leaf)
             & jnp.isfinite(thr))
    proxy = jnp.where(valid, _proxy(left, right, criterion), -jnp.inf)    # [n, B − 1]
    b = jnp.argmax(proxy, axis=1)
    return jnp.max(proxy, axis=1), jnp.take_along_axis(thr, b[:, None], axis=1)[:, 0]


def _split_random(u, xcol, nid, n, stats, count, totals, total_count, criterion,
                  min_samples_leaf):
    """One uniformly drawn threshold per node of one feature per node (extra trees):
    ``lo + u·(hi − lo)`` with ``u [n]`` uniform draws and the node's range ``[lo, hi]``."""
    live = nid < n
    lo = jax.ops.segment_min(jnp.where(live, xcol, jnp.inf), nid, n + 1)[:n]
    hi = jax.ops.segment_max(jnp.where(live, xcol, -jnp.inf), nid, n + 1)[:n]
    thr = lo + u.astype(xcol.dtype) * (hi - lo)
    thr = jnp.where(thr >= hi, lo, thr)
    go_left = (xcol <= thr[jnp.minimum(nid, n - 1)]).astype(stats.dtype)
    left = jax.ops.segment_sum(stats * go_left[:, None], nid, n + 1)[:n]
    c_left = jax.ops.segment_sum(count * go_left, nid, n + 1)[:n]
    right = totals[:n] - left
    c_right = total_count[:n] - c_left
    valid = ((hi > lo + FEATURE_THRESHOLD) & (c_left >= min_samples_leaf)
             & (c_right >= min_samples_leaf))
    proxy = jnp.where(valid, _proxy(left, right, criterion), -jnp.inf)
    return proxy, thr


@functools.partial(jax.jit, static_argnames=(
    "criterion", "max_depth", "min_samples_leaf", "min_samples_split", "max_features",
    "splitter", "max_bins"))
def fit_tree(key, X, stats, count, *, criterion: str, max_depth: int,
             min_samples_leaf: int = 1, min_samples_split: int = 2,
             max_features: int | None = None, splitter: str = "best", max_bins: int = 64,
             bins=None) -> Tree:
    """Fit one CART tree as fixed-shape arrays (pure; jit and vmap over members).

    Grows all nodes of a level at once; each node takes the split maximising the
    criterion's proxy improvement over its (random subset of) features, unless it is
    pure (impurity <= machine epsilon), holds fewer than ``min_samples_split`` or
    ``2·min_samples_leaf`` samples, or has no valid threshold — then it is inert.

    Args:
      key: PRNG key (feature subsets, random thresholds).
      X: ``[N, D]`` features.
      stats: ``[N, C]`` per-sample statistics (:func:`class_stats`,
        :func:`regression_stats`); zero rows are samples with zero weight.
      count: ``[N]`` 1 for samples with positive weight, else 0.
      criterion: "gini", "entropy" or "squared_error".
      max_depth: depth ``d`` >= 1 of the complete tree.
      min_samples_leaf: minimum number of (positive-weight) samples in a child.
      min_samples_split: minimum number of samples of a node to be split.
      max_features: features drawn per node (None: all ``D``).
      splitter: "best" (exact), "hist" or "random".
      max_bins: histogram bins with ``splitter="hist"``.
      bins: optional precomputed ``make_bins(X, max_bins)`` (shared by members).

    Returns:
      A :class:`Tree` with ``value [2^d, K]`` (probabilities) or ``[2^d, 1]`` (means).

    Example:
        >>> stats, count = regression_stats(y, jnp.ones_like(y))
        >>> tree = fit_tree(key, X, stats, count, criterion="squared_error", max_depth=3)

    Breiman, Friedman, Olshen & Stone, *Classification and Regression Trees* (1984).
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    if splitter not in SPLITTERS:
        raise ValueError(f"splitter must be one of {SPLITTERS}, got {splitter!r}")
    _N, D = X.shape
    dtype = stats.dtype
    max_features = D if max_features is None else min(int(max_features), D)
    if splitter == "best":
        dead_last = jnp.where((count > 0)[:, None], X, jnp.inf)
        orders = jnp.argsort(dead_last, axis=0, stable=True).T.astype(jnp.int32)  # [D, N]
    elif splitter == "hist":
        binned, thresholds = bins if bins is not None else make_bins(X, max_bins)
    eps = jnp.finfo(dtype).eps
    live = count > 0
    n = 2 ** (max_depth - 1)            # node capacity of a level; unused nodes stay empty
    ids = jnp.arange(D, dtype=jnp.int32)
    split = {"best": _split_exact, "hist": _split_hist, "random": _split_random}[splitter]

    def level(carry, level_key):
        nid, orders = carry
        totals = jax.ops.segment_sum(stats, nid, n + 1)                   # [n + 1, C]
        total_count = jax.ops.segment_sum(count, nid, n + 1)
        mask_key, split_key = jax.random.split(level_key)
        args = (nid, n, stats, count, totals, total_count, criterion, min_samples_leaf)

        def body(best_so_far, inputs):
            best, feat, thr = best_so_far
            d, col, aux = inputs
            if splitter == "random":
                proxy, t = split(aux, col, *args)
            else:
                proxy, t = split(col, aux, *args)
            better = proxy > best
            return (jnp.where(better, proxy, best), jnp.where(better, d, feat),
                    jnp.where(better, t, thr)), None

        if splitter == "random":  # one draw per (feature, node), whichever features a
            # node sees, so a subset's thresholds are those the full search would use
            draws = jax.random.uniform(split_key, (D, n), dtype=X.dtype)
        if max_features < D:
            # a random forest's node sees m of the D features: scan over m slots, slot s
            # holding feature fsel[j, s] for node j (each sample reads its node's), so
            # the search costs m, not D, feature passes per level
            fsel = _feature_subsets(mask_key, n, D, max_features).T       # [m, n]
            rows = jnp.arange(X.shape[0])
            node_of = jnp.minimum(nid, n - 1)                             # [N]
            if splitter == "best":
                pos_node = jnp.minimum(nid[orders[0]], n - 1)  # node of each position
                def gather(f):                                            # f [n]
                    order = orders[f[pos_node], rows]
                    return X[order, f[pos_node]], order
                cols, auxs = jax.vmap(gather)(fsel)
            elif splitter == "hist":
                cols = jax.vmap(lambda f: binned[rows, f[node_of]])(fsel)
                auxs = thresholds[fsel]                                   # [m, n, B − 1]
            else:
                cols = jax.vmap(lambda f: X[rows, f[node_of]])(fsel)
                auxs = draws[fsel, jnp.arange(n)]                         # [m, n]
            xs = (fsel, cols, auxs)
        elif splitter == "best":
            xs = (ids, jnp.take_along_axis(X.T, orders, axis=1), orders)
        elif splitter == "hist":
            xs = (ids, binned.T, thresholds)
        else:
            xs = (ids, X.T, draws)
        init = (jnp.full((n,), -jnp.inf, dtype), jnp.zeros((n,), jnp.int32),
                jnp.full((n,), jnp.inf, X.dtype))
        (best, feat, thr), _ = jax.lax.scan(body, init, xs)
        node_count = total_count[:n]
        can_split = ((best > -jnp.inf) & (_impurity(totals[:n], criterion) > eps)
                     & (node_count >= min_samples_split)
                     & (node_count >= 2 * min_samples_leaf))
        feat = jnp.where(can_split, feat, 0)
        thr = jnp.where(can_split, thr, jnp.inf).astype(X.dtype)
        node = jnp.minimum(nid, n - 1)
        x_at = jnp.take_along_axis(X, feat[node][:, None], axis=1)[:, 0]
        child = jnp.where(live, 2 * nid + (x_at > thr[node]).astype(jnp.int32), 2 * n)
        if splitter == "best":
            orders = jax.vmap(_repartition, in_axes=(0, None, None))(orders, child, n)
        return (child, orders), (feat, thr)

    nid0 = jnp.where(live, 0, n).astype(jnp.int32)
    if splitter == "best":
        dead_last = jnp.where(live[:, None], X, jnp.inf)
        orders = jnp.argsort(dead_last, axis=0, stable=True).T.astype(jnp.int32)  # [D, N]
    else:
        orders = jnp.zeros((0,), jnp.int32)
    # all levels but the last: child ids stay below n, dead samples go back to id n
    carry = (nid0, orders)
    feats, thrs = [], []
    keys = jax.random.split(key, max_depth)
    if max_depth > 1:
        def inner(carry, level_key):
            (child, orders), out = level(carry, level_key)
            return (jnp.where(live, child, n), orders), out

        carry, (f, t) = jax.lax.scan(inner, carry, keys[:-1])              # [d − 1, n]
        feats = [f[lvl, : 2**lvl] for lvl in range(max_depth - 1)]
        thrs = [t[lvl, : 2**lvl] for lvl in range(max_depth - 1)]
    (leaf_id, _), (f, t) = level(carry, keys[-1])
    feats.append(f)
    thrs.append(t)
    leaf_stats = jax.ops.segment_sum(stats, leaf_id, 2 * n + 1)[: 2 * n]
    return Tree(jnp.concatenate(feats), jnp.concatenate(thrs), _value(leaf_stats, criterion))


# ----------------------------------------------------------------------------- prediction


@jax.jit
def apply_tree(tree: Tree, X):
    """Leaf index of every sample: ``max_depth`` steps of ``h ← 2h + 1 + [x_f > t]``.

    Args:
      tree: a :class:`Tree` of depth ``d`` (no member axis; vmap for ensembles).
      X: ``[N, D]``.

    Returns:
      ``[N] int32`` leaf indices in ``0..2^d − 1``.
    """
    num_internal = tree.feature.shape[0]
    depth = (num_internal + 1).bit_length() - 1

    def descend(_, node):                                                 # node [N]
        x = jnp.take_along_axis(X, tree.feature[node][:, None], axis=1)[:, 0]
        return 2 * node + 1 + (x > tree.threshold[node]).astype(jnp.int32)

    node = jax.lax.fori_loop(0, depth, descend, jnp.zeros((X.shape[0],), jnp.int32))
    return node - num_internal


@jax.jit
def predict_tree(tree: Tree, X):
    """Leaf values of every sample: ``[N, V]`` (probabilities or ``[N, 1]`` means).

    Example:
        >>> proba = predict_tree(tree, X)              # [N, K]
    """
    return tree.value[apply_tree(tree, X)]
