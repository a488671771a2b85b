"""Exact linear sum assignment inside ``jax.jit``, and matchers registered by name.

The linear sum assignment problem: given ``C ∈ R^{N×M}``, choose ``K = min(N, M)``
pairs ``(r_k, c_k)``, no row or column twice, minimising ``Σ_k C[r_k, c_k]``.
An entry ``+inf`` marks a *forbidden* pair (``-inf`` with ``maximize``), as in
``scipy.optimize.linear_sum_assignment``: the optimum is taken over assignments that
avoid every forbidden pair, and a problem where every assignment of ``K`` pairs uses
one is *infeasible*.

Solvers (all exact; they return an optimum of the same total cost as
``scipy.optimize.linear_sum_assignment``):

* ``"jv"`` (default): the shortest-augmenting-path method of Jonker & Volgenant
  (1987) in the form of Crouse (2016), which ``scipy`` implements in C++. Rows of the
  shorter side are inserted one at a time; each insertion is a Dijkstra search on
  reduced costs ``C[i, j] - u[i] - v[j]`` followed by an augmentation along the
  shortest path and a dual (potential) update that keeps every reduced cost
  non-negative, so the partial assignment stays optimal (complementary slackness).
  Forbidden pairs have infinite reduced cost and are never scanned; a row whose
  search reaches no free column proves the problem infeasible (no augmenting path).
  Written here as a *flat* state machine: one ``lax.while_loop`` step is either a
  Dijkstra step or an augmentation step, with no nested loops, so under ``vmap``
  a batch of problems runs ``max_b(total steps of b)`` iterations instead of
  ``Σ_rows max_b(steps of b at that row)``. Every update is a dense ``where`` over
  rows or columns (no scatters), which vectorises well on CPU, GPU and TPU.
* ``"optax"``: ``optax.assignment.hungarian_algorithm`` (the scenic Hungarian
  algorithm), masks and forbidden pairs handled by a big-M reduction, pairs re-sorted
  by row.
* ``"scipy"``: the host solver through ``jax.pure_callback`` (a device-to-host
  round trip per call; a whole vmapped batch is solved in one callback).

``vision.benchmarks`` (``matching``) times the three on a batch of DETR-sized
problems; ``"jv"`` is the default because it is the fastest exact in-jit path.

Bad values follow the policy of :mod:`common.checks`. NaN costs and ``-inf`` costs
(``+inf`` with ``maximize``) are invalid; so is an infeasible problem. Eagerly (a
concrete cost matrix) they raise ``ValueError`` with scipy's wording ("contains
invalid numeric entries", "cost matrix is infeasible"). Traced (inside ``jit``,
``vmap``, ``grad``) the assignment is *poisoned*: every index is ``-1``, and
``return_valid=True`` adds a boolean scalar ``valid`` that is False exactly then.
Entries of rows and columns masked out by ``row_mask``/``col_mask`` are ignored.

Precision. Costs are solved in their own floating dtype (float16/bfloat16 are
widened to float32), so float64 costs are solved in float64 when
``jax_enable_x64`` is on. Integer and boolean costs are solved in float64 with x64
on, which is exact for ``|cost| <= 2**53``, and in float32 with x64 off, exact for
``|cost| <= 2**24``. Where precision is lost a ``UserWarning`` says so when the call
is made (at trace time under ``jit``): float64 values that float32 rounds (x64 off;
a finite value beyond float32's range raises instead, as it would become a
forbidden pair), integers beyond the exact range, and integer costs traced with x64
off (their values are unknown at trace time). The solver's reduced costs are
differences of costs and dual potentials: finite costs spread over more than about
half of the dtype's range can overflow them to inf, and such a problem is reported
infeasible; rescale costs that large.

Paper: Jonker & Volgenant 1987, "A shortest augmenting path algorithm for dense and
sparse linear assignment problems"; Crouse 2016, "On implementing 2D rectangular
assignment algorithms"; Kuhn 1955, "The Hungarian method for the assignment problem".
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from common.checks import is_concrete, poison, shape_str
from common.registry import Registry

__all__ = [
    "MATCHERS",
    "assignment_vectors",
    "check_cost",
    "linear_sum_assignment",
    "linear_sum_assignment_host",
    "linear_sum_assignment_masked",
    "pairs_from_vectors",
]

#: ``name -> matcher(cost [N, M], row_mask [N] | None, col_mask [M] | None)
#: -> (col_for_row [N], row_for_col [M])`` (int32, ``-1`` = unmatched). ``cost`` holds
#: no NaN or ``-inf``; ``+inf`` marks a forbidden pair. A matcher must return an
#: optimal assignment of ``min(#valid rows, #valid cols)`` pairs between valid rows
#: and valid columns that avoids forbidden pairs whenever one exists; otherwise any
#: partial assignment (the caller detects the infeasibility and poisons it).
#: Registering one runs the shared suite in ``tests/vision/test_matching.py`` on it.
MATCHERS: Registry[Callable] = Registry("matcher")

# Integers of magnitude up to 2**bits are exact in a float dtype.
_EXACT_INT_BITS = {np.dtype(np.float32): 24, np.dtype(np.float64): 53}


def _solve_dtype(dtype) -> np.dtype:
    """The float dtype a cost of ``dtype`` is solved in (see the module docstring)."""
    dtype = np.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.floating):
        return np.dtype(jnp.promote_types(jax.dtypes.canonicalize_dtype(dtype), jnp.float32))
    return np.dtype(jax.dtypes.canonicalize_dtype(np.float64))


def _warn_precision(message: str) -> None:
    # Reported at the line in this module: Python's default filter then shows each
    # message once per process, not once per call.
    warnings.warn(f"{message}; see vision.matching (precision)", UserWarning, stacklevel=2)


def _host_cost(values: np.ndarray, name: str) -> np.ndarray:
    """A concrete cost matrix converted on the host to its solve dtype, warning (or,
    for finite values that would overflow to a forbidden ``inf``, raising) where the
    conversion loses precision."""
    dtype = _solve_dtype(values.dtype)
    if values.dtype == np.bool_ or values.size == 0:
        return values.astype(dtype)
    with np.errstate(over="ignore"):
        out = values.astype(dtype)
    if jnp.issubdtype(values.dtype, jnp.integer):
        if np.abs(values.astype(np.float64)).max() > 2.0 ** _EXACT_INT_BITS[dtype]:
            _warn_precision(f"{name}: integer costs beyond 2**{_EXACT_INT_BITS[dtype]} are "
                            f"rounded to {dtype} (enable jax_enable_x64 for exact integers)")
        return out
    finite = np.isfinite(values)
    if np.any(finite & ~np.isfinite(out)):
        raise ValueError(f"{name} has finite values beyond the range of {dtype} (largest "
                         f"magnitude {np.abs(values[finite]).max():.4g}), which would become "
                         f"forbidden (inf) pairs; enable jax_enable_x64")
    with np.errstate(invalid="ignore"):
        changed = finite & (out.astype(values.dtype) != values)
    if np.any(changed):
        _warn_precision(f"{name}: {values.dtype} costs are rounded to {dtype} "
                        f"(jax_enable_x64 is off)")
    return out


def check_cost(cost, name: str = "cost") -> jax.Array:
    """Check a cost matrix (``[N, M]``, real) and return it in the dtype it is solved in.

    Values are not inspected here (the solvers check them against the masks); see the
    module docstring for the dtypes and the precision warnings.

    Args:
      cost: ``[N, M]`` costs: floating, integer or boolean, a JAX or numpy array or
        nested lists.
      name: argument name used in messages.

    Returns:
      ``cost`` as a JAX array of its solve dtype.

    Example:
      >>> check_cost([[1, 2], [3, 4]]).dtype
      dtype('float32')
    """
    if not isinstance(cost, jax.Array) and any(
            isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(cost)):
        cost = jnp.asarray(cost)  # nested lists holding JAX values (e.g. tracers)
    if not isinstance(cost, jax.Array):
        values = np.asarray(cost)
        if values.dtype.kind not in "biuf":
            raise ValueError(f"{name} must be a real matrix (floating, integer or boolean), "
                             f"got dtype {values.dtype}")
        cost = values
    if np.ndim(cost) != 2:
        raise ValueError(f"{name} must have shape [N, M] (expected a matrix), got shape "
                         f"{shape_str(np.shape(cost))}")
    dtype = np.dtype(cost.dtype)
    if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
            or dtype == np.bool_):
        raise ValueError(f"{name} must be a real matrix, got dtype {dtype}")
    if is_concrete(cost):
        return jnp.asarray(_host_cost(np.asarray(cost), name))
    solve = _solve_dtype(dtype)
    # Traced integers: values unknown. With x64 off (float32, exact to 2**24) say so;
    # with x64 on the float64 limit 2**53 is only documented.
    if (jnp.issubdtype(dtype, jnp.integer) and solve == np.float32
            and jnp.iinfo(dtype).bits > _EXACT_INT_BITS[solve]):
        _warn_precision(f"{name}: traced {dtype} costs are solved in {solve}, exact only for "
                        f"|cost| <= 2**{_EXACT_INT_BITS[solve]}")
    return cost.astype(solve)


def _check_mask(mask, size: int, name: str, spec: str) -> jax.Array | None:
    if mask is None:
        return None
    mask = jnp.asarray(mask)
    if mask.shape != (size,):
        raise ValueError(f"{name} must have shape {spec} = ({size},), got "
                         f"{shape_str(mask.shape)}")
    if mask.dtype != jnp.bool_:
        raise ValueError(f"{name} must be boolean (True = real entry), got dtype {mask.dtype}")
    return mask


def _invalid_entries(cost, row_mask, col_mask, xp=jnp):
    """``[N, M]`` True where a real (unmasked) entry is NaN or ``-inf`` (the solvers
    minimise; ``+inf`` is a forbidden pair); ``xp`` is ``jnp`` or ``np``."""
    bad = xp.isnan(cost) | (cost == -xp.inf)
    if row_mask is not None:
        bad = bad & xp.asarray(row_mask)[:, None]
    if col_mask is not None:
        bad = bad & xp.asarray(col_mask)[None, :]
    return bad


@functools.partial(jax.jit, static_argnums=0)
def _solve_core(fn, cost, row_mask, col_mask):
    """Run matcher ``fn`` on ``cost`` (NaN and ``-inf`` replaced by forbidden pairs),
    then check the result: ``valid`` iff no real entry was invalid and the assignment
    has ``min(#valid rows, #valid cols)`` pairs, all of finite cost. Returns
    ``(col_for_row, row_for_col, valid)``, the vectors poisoned (−1) unless valid.
    Jitted so that eager calls reuse one compiled solver per shape and dtype."""
    n, m = cost.shape
    bad = _invalid_entries(cost, row_mask, col_mask)
    # Every NaN and -inf, real or padded, becomes a forbidden pair for the matcher.
    col4row, row4col = fn(jnp.where(_invalid_entries(cost, None, None), jnp.inf, cost),
                          row_mask, col_mask)
    if n == 0 or m == 0:
        return col4row, row4col, jnp.ones((), bool)
    rm = jnp.ones((n,), bool) if row_mask is None else row_mask
    cm = jnp.ones((m,), bool) if col_mask is None else col_mask
    matched = col4row >= 0
    j = jnp.maximum(col4row, 0)
    allowed = rm & cm[j] & jnp.isfinite(cost[jnp.arange(n), j])
    complete = jnp.sum(matched & allowed) == jnp.minimum(jnp.sum(rm), jnp.sum(cm))
    valid = ~jnp.any(bad) & complete & jnp.all(allowed | ~matched)
    col4row, row4col = poison((col4row, row4col), valid)
    return col4row, row4col, valid


def _solve(cost, row_mask, col_mask, matcher: str, maximize: bool = False):
    """Check the arguments, solve, apply the bad-value policy: ``(col_for_row [N],
    row_for_col [M], valid)``; eagerly an invalid problem raises instead."""
    fn = MATCHERS.get(matcher)
    cost = check_cost(cost)
    n, m = cost.shape
    row_mask = _check_mask(row_mask, n, "row_mask", "[N]")
    col_mask = _check_mask(col_mask, m, "col_mask", "[M]")
    eager = is_concrete(cost) and is_concrete(row_mask) and is_concrete(col_mask)
    refused, forbidden = ("+inf", "-inf") if maximize else ("-inf", "+inf")
    if eager:  # checked on the host, before solving, to name the first bad entry
        values = np.asarray(cost)
        bad = _invalid_entries(-values if maximize else values, row_mask, col_mask, xp=np)
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise ValueError(f"cost contains invalid numeric entries: got {values[i, j]} at "
                             f"[{i}, {j}] ({int(bad.sum())} invalid; NaN and {refused} are "
                             f"refused, {forbidden} marks a forbidden pair)")
    cost = jax.lax.stop_gradient(-cost if maximize else cost)
    col4row, row4col, valid = _solve_core(fn, cost, row_mask, col_mask)
    if eager and not bool(valid):
        raise ValueError(f"cost matrix is infeasible: every assignment of min(#rows, #cols) "
                         f"pairs uses a forbidden ({forbidden}) entry")
    return col4row, row4col, valid


# ----------------------------------------------------------------------------- JV solver


def _first_true(mask: jax.Array) -> jax.Array:
    """Index (int32) of the first True of a 1D mask (0 if none)."""
    return jnp.argmax(mask).astype(jnp.int32)


def _fresh_search(cur, n: int, m: int, dtype) -> dict:
    """Search state for inserting row ``cur``: no distances, no visited rows/columns."""
    return dict(cur=cur, i=jnp.minimum(cur, n - 1), spc=jnp.full((m,), jnp.inf, dtype),
                path=jnp.full((m,), -1, jnp.int32), sr=jnp.zeros((n,), bool),
                sc=jnp.zeros((m,), bool), min_val=jnp.zeros((), dtype))


def _jv_short_rows(cost: jax.Array, row_mask: jax.Array, col_mask: jax.Array):
    """Shortest augmenting path on ``cost [n, m]`` inserting valid rows one by one.

    Optimal whenever ``#valid rows <= #valid cols`` and a complete assignment avoiding
    the ``+inf`` (forbidden) entries exists. Otherwise it stops at the first row whose
    search reaches no free valid column through finite entries (no augmenting path:
    no assignment covers the rows inserted so far) and leaves the rest unassigned.

    Returns ``(col4row [n], row4col [m])``, int32 with ``-1`` for unassigned.
    """
    n, m = cost.shape
    dtype = cost.dtype
    inf = jnp.asarray(jnp.inf, dtype)
    rows = jnp.arange(n, dtype=jnp.int32)
    cols = jnp.arange(m, dtype=jnp.int32)

    # Greedy start (Jonker & Volgenant's row reduction): u_i = min_j C[i, j], v = 0 is
    # dual feasible, and a row whose minimum column no earlier row claims is assigned
    # at zero reduced cost, which keeps the partial assignment optimal. Only the rows
    # left over go through the augmenting-path search below. A row without a finite
    # entry keeps u_i = 0 (its search then proves the problem infeasible).
    masked = jnp.where(col_mask[None, :], cost, inf)  # [n, m]
    best = jnp.argmin(masked, axis=1).astype(jnp.int32)  # [n]
    row_min = jnp.min(masked, axis=1)
    candidate = row_mask & (row_min < inf)
    u0 = jnp.where(candidate, row_min, 0.0)
    same = (best[:, None] == best[None, :]) & candidate[None, :] & (rows[None, :] < rows[:, None])
    claim = candidate & ~jnp.any(same, axis=1)  # [n]
    col4row0 = jnp.where(claim, best, -1)
    owners = jnp.where(claim[:, None] & (best[:, None] == cols[None, :]), rows[:, None], -1)
    row4col0 = jnp.max(owners, axis=0, initial=-1)  # [m]
    pending = row_mask & ~claim

    def next_row(after):
        """The first pending row with index > ``after`` (``n`` if none)."""
        later = pending & (rows > after)
        return jnp.where(jnp.any(later), _first_true(later), jnp.int32(n))

    state = dict(u=u0.astype(dtype), v=jnp.zeros((m,), dtype), col4row=col4row0,
                 row4col=row4col0, augmenting=jnp.zeros((), bool), failed=jnp.zeros((), bool),
                 j=jnp.zeros((), jnp.int32),
                 **_fresh_search(next_row(jnp.int32(-1)), n, m, dtype))
    # Tie every initial value to the data, so that inside ``shard_map`` the carry
    # varies over the mapped axes like the loop body's outputs do.
    anchor = jnp.isnan(cost[0, 0]) & False  # always False, whatever the entry holds
    state = jax.tree.map(lambda x: (x | anchor) if x.dtype == jnp.bool_
                         else x + anchor.astype(x.dtype), state)

    def body(s):
        # One step: a Dijkstra step while searching, an augmentation step otherwise.
        aug = s["augmenting"]
        search = ~aug
        cur, i = s["cur"], s["i"]
        # --- Dijkstra step from row i on reduced costs C[i, j] - u[i] - v[j].
        reduced = s["min_val"] + cost[i] - s["u"][i] - s["v"]  # [m]
        avail = ~s["sc"] & col_mask
        better = search & avail & (reduced < s["spc"])
        path = jnp.where(better, i, s["path"])
        spc = jnp.where(better, reduced, s["spc"])
        cand = jnp.where(avail, spc, inf)
        lowest = jnp.min(cand)
        ties = avail & (cand == lowest)
        free_ties = ties & (s["row4col"] < 0)
        j_new = jnp.where(jnp.any(free_ties), _first_true(free_ties), _first_true(ties))
        infeasible = search & ~(lowest < inf)
        scanning = search & ~infeasible
        sr = s["sr"] | (search & (rows == i))
        sc = s["sc"] | (scanning & (cols == j_new))
        owner = s["row4col"][j_new]
        found = scanning & (owner < 0)
        min_val = jnp.where(scanning, lowest, s["min_val"])
        # Dual update once the sink is found (before augmenting: uses the old col4row).
        spc_of_row = jnp.where(s["col4row"] >= 0, spc[jnp.maximum(s["col4row"], 0)], 0.0)
        u = jnp.where(found & (rows == cur), s["u"] + min_val,
                      jnp.where(found & sr, s["u"] + min_val - spc_of_row, s["u"]))
        v = jnp.where(found & sc, s["v"] - (min_val - spc), s["v"])
        # --- augmentation step along the shortest path, from the sink back to cur.
        j_aug = s["j"]
        i_aug = s["path"][j_aug]
        row4col = jnp.where(aug & (cols == j_aug), i_aug, s["row4col"])
        col4row = jnp.where(aug & (rows == i_aug), j_aug, s["col4row"])
        previous = s["col4row"][i_aug]
        row_done = (aug & (i_aug == cur)) | infeasible  # an infeasible row stays unassigned
        out = dict(u=u, v=v, col4row=col4row, row4col=row4col,
                   augmenting=jnp.where(aug, ~row_done, found), failed=infeasible,
                   j=jnp.where(aug, previous, jnp.where(found, j_new, s["j"])).astype(jnp.int32),
                   cur=cur, i=jnp.where(scanning & ~found, owner, i), spc=spc, path=path,
                   sr=sr, sc=sc, min_val=min_val)
        # --- next pending row: fresh search state.
        fresh = _fresh_search(next_row(cur), n, m, dtype)
        for key, value in fresh.items():
            out[key] = jnp.where(row_done, value, out[key])
        return out

    state = jax.lax.while_loop(lambda s: (s["cur"] < n) & ~s["failed"], body, state)
    return state["col4row"], state["row4col"]


def _jv_vectors(cost, row_mask, col_mask):
    n, m = cost.shape
    full_rows = jnp.ones((n,), bool) if row_mask is None else row_mask
    full_cols = jnp.ones((m,), bool) if col_mask is None else col_mask
    if n == 0 or m == 0:
        return jnp.full((n,), -1, jnp.int32), jnp.full((m,), -1, jnp.int32)

    def solve_rows(c, rm, cm):
        return _jv_short_rows(c, rm, cm)

    def solve_cols(c, rm, cm):
        row4col, col4row = _jv_short_rows(c.T, cm, rm)
        return col4row, row4col

    # The algorithm inserts rows of the side that has fewer valid entries. With no
    # mask on the longer side that side is known statically; otherwise decide at
    # run time.
    if n <= m and col_mask is None:
        return solve_rows(cost, full_rows, full_cols)
    if m < n and row_mask is None:
        return solve_cols(cost, full_rows, full_cols)
    rows_first = jnp.sum(full_rows) <= jnp.sum(full_cols)
    return jax.lax.cond(rows_first, solve_rows, solve_cols, cost, full_rows, full_cols)


# ----------------------------------------------------------------------------- optax, scipy


def _big_m_cost(cost, row_mask, col_mask):
    """Reduce a masked problem to a full one: masked and forbidden (``+inf``) entries
    cost more than any complete matching of real entries, so optima use as many real
    pairs as possible."""
    n, m = cost.shape
    rm = jnp.ones((n,), bool) if row_mask is None else row_mask
    cm = jnp.ones((m,), bool) if col_mask is None else col_mask
    real = rm[:, None] & cm[None, :] & jnp.isfinite(cost)
    lo = jnp.min(jnp.where(real, cost, jnp.inf), initial=jnp.inf)
    hi = jnp.max(jnp.where(real, cost, -jnp.inf), initial=-jnp.inf)
    lo = jnp.where(jnp.isfinite(lo), lo, 0.0)
    hi = jnp.where(jnp.isfinite(hi), hi, 0.0)
    big = (hi - lo + 1.0) * (min(n, m) + 1)
    return jnp.where(real, cost - lo, big), real


def _optax_vectors(cost, row_mask, col_mask):
    import optax

    n, m = cost.shape
    if n == 0 or m == 0:
        return jnp.full((n,), -1, jnp.int32), jnp.full((m,), -1, jnp.int32)
    full, real = _big_m_cost(cost, row_mask, col_mask)
    r, c = optax.assignment.hungarian_algorithm(full)
    keep = real[r, c]
    col4row = jnp.full((n,), -1, jnp.int32).at[r].set(jnp.where(keep, c, -1).astype(jnp.int32))
    row4col = jnp.full((m,), -1, jnp.int32).at[c].set(jnp.where(keep, r, -1).astype(jnp.int32))
    return col4row, row4col


def _scipy_host(cost, row_mask, col_mask):
    """numpy: solve each problem of a (possibly batched) stack with scipy."""
    from scipy.optimize import linear_sum_assignment as scipy_lsa

    cost = np.asarray(cost)
    row_mask = np.asarray(row_mask)
    col_mask = np.asarray(col_mask)
    n, m = cost.shape[-2:]
    batch = np.broadcast_shapes(cost.shape[:-2], row_mask.shape[:-1], col_mask.shape[:-1])
    flat = np.broadcast_to(cost, (*batch, n, m)).reshape(-1, n, m)
    rms = np.broadcast_to(row_mask, (*batch, n)).reshape(-1, n)
    cms = np.broadcast_to(col_mask, (*batch, m)).reshape(-1, m)
    col4row = np.full((flat.shape[0], n), -1, np.int32)
    row4col = np.full((flat.shape[0], m), -1, np.int32)
    for b in range(flat.shape[0]):
        ri = np.flatnonzero(rms[b])
        ci = np.flatnonzero(cms[b])
        if ri.size and ci.size:
            try:
                r, c = scipy_lsa(flat[b][np.ix_(ri, ci)])
            except ValueError:  # infeasible: left unassigned, the caller poisons it
                continue
            col4row[b, ri[r]] = ci[c]
            row4col[b, ci[c]] = ri[r]
    return col4row.reshape(*batch, n), row4col.reshape(*batch, m)


def _scipy_vectors(cost, row_mask, col_mask):
    n, m = cost.shape
    if n == 0 or m == 0:
        return jnp.full((n,), -1, jnp.int32), jnp.full((m,), -1, jnp.int32)
    rm = jnp.ones((n,), bool) if row_mask is None else row_mask
    cm = jnp.ones((m,), bool) if col_mask is None else col_mask
    out_shape = (jax.ShapeDtypeStruct((n,), jnp.int32), jax.ShapeDtypeStruct((m,), jnp.int32))
    # ``expand_dims``: under vmap the callback receives the whole batch at once.
    return jax.pure_callback(_scipy_host, out_shape, cost, rm, cm, vmap_method="expand_dims")


MATCHERS.add("jv", _jv_vectors)
MATCHERS.add("optax", _optax_vectors)
MATCHERS.add("scipy", _scipy_vectors)


# ----------------------------------------------------------------------------- public API


def assignment_vectors(cost: jax.Array, row_mask: jax.Array | None = None,
                       col_mask: jax.Array | None = None, *, matcher: str = "jv",
                       return_valid: bool = False):
    """Optimal assignment as two index vectors (the form losses consume).

    Solves ``min Σ C[r, c]`` over ``min(#valid rows, #valid cols)`` disjoint pairs of
    valid rows and valid columns, avoiding forbidden (``+inf``) pairs.

    Args:
      cost: ``[N, M]`` costs, ``+inf`` = forbidden pair (no NaN or ``-inf``).
      row_mask: optional ``[N]`` boolean, ``False`` for padded rows.
      col_mask: optional ``[M]`` boolean, ``False`` for padded columns.
      matcher: a name in ``MATCHERS`` (``"jv"``, ``"optax"``, ``"scipy"``).
      return_valid: also return the boolean scalar ``valid``.

    Returns:
      ``(col_for_row [N], row_for_col [M])``, int32, ``-1`` where unmatched, and
      ``valid`` with ``return_valid``. Invalid or infeasible costs raise
      ``ValueError`` eagerly; traced, both vectors are all ``-1`` and ``valid`` is False.

    Example:
      >>> cost = jnp.array([[4., 1., 3.], [2., 0., 5.], [3., 2., 2.]])
      >>> col_for_row, row_for_col = assignment_vectors(cost)
      >>> col_for_row.tolist(), row_for_col.tolist()
      ([1, 0, 2], [1, 0, 2])

    Paper: Jonker & Volgenant 1987; Crouse 2016.
    """
    col_for_row, row_for_col, valid = _solve(cost, row_mask, col_mask, matcher)
    return (col_for_row, row_for_col, valid) if return_valid else (col_for_row, row_for_col)
@functools.partial(jax.jit, static_argnums=1)
def pairs_from_vectors(col_for_row: jax.Array, num_cols: int
                       ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Sorted ``(rows, cols, valid)`` pairs, ``K = min(N, num_cols)`` of them.

    Matched pairs come first in ascending row order; the remaining slots hold
    ``-1`` with ``valid = False``.

    Args:
      col_for_row: ``[N]`` int, ``-1`` for unmatched rows.
      num_cols: ``M``, the number of columns of the problem.

    Returns:
      ``(rows [K], cols [K], valid [K])``.

    Example:
      >>> [a.tolist() for a in pairs_from_vectors(jnp.array([-1, 0]), 2)]
      [[1, -1], [0, -1], [True, False]]
    """
    n = col_for_row.shape[0]
    k = min(n, num_cols)
    matched = col_for_row >= 0
    key = jnp.where(matched, jnp.arange(n), n + jnp.arange(n))
    order = jnp.argsort(key)[:k]
    valid = matched[order]
    rows = jnp.where(valid, order, -1).astype(jnp.int32)
    cols = jnp.where(valid, col_for_row[order], -1).astype(jnp.int32)
    return rows, cols, valid


def linear_sum_assignment(cost: jax.Array, *, maximize: bool = False, matcher: str = "jv",
                          return_valid: bool = False):
    """Exact linear sum assignment, jittable and vmappable; scipy's interface.

    ``min_{rows, cols} Σ_k C[rows[k], cols[k]]`` over ``K = min(N, M)`` disjoint pairs
    (``max`` with ``maximize``) that avoid forbidden pairs, marked ``+inf`` (``-inf``
    with ``maximize``). Returns the same optimal total as
    ``scipy.optimize.linear_sum_assignment``, and the same pairs whenever the optimum
    is unique.

    Args:
      cost: ``[N, M]`` costs (any ``N, M >= 0``, either orientation), floating,
        integer or boolean; see the module docstring for the precision they are
        solved in.
      maximize: maximise instead of minimise.
      matcher: solver name in ``MATCHERS``.
      return_valid: also return ``valid``, a boolean scalar (the traced form of the
        errors below).

    Returns:
      ``(rows [K], cols [K])`` int32 with ``rows`` ascending, and ``valid`` with
      ``return_valid``.

    Raises:
      ValueError: eagerly, for NaN or ``-inf`` entries (``+inf`` with ``maximize``),
        "contains invalid numeric entries", and when no assignment avoids the
        forbidden pairs, "cost matrix is infeasible" (scipy's messages). Traced
        (``jit``, ``vmap``) nothing is raised: ``rows`` and ``cols`` are all ``-1`` and
        ``valid`` is False.

    Example:
      >>> cost = jnp.array([[8., 4., 7.], [5., 2., 3.], [9., 6., 7.], [9., 4., 8.]])
      >>> rows, cols = linear_sum_assignment(cost)
      >>> rows.tolist(), cols.tolist(), float(cost[rows, cols].sum())
      ([0, 1, 3], [0, 2, 1], 15.0)
      >>> batched = jax.jit(jax.vmap(linear_sum_assignment))(jnp.stack([cost, cost]))
      >>> forbidden = jnp.array([[10., 0.], [jnp.inf, 10.]])  # row 1 may not take column 0
      >>> rows, cols, valid = jax.jit(linear_sum_assignment, static_argnames="return_valid")(
      ...     forbidden, return_valid=True)
      >>> cols.tolist(), bool(valid)
      ([0, 1], True)

    Paper: Jonker & Volgenant 1987; Crouse 2016.
    """
    col_for_row, row_for_col, valid = _solve(cost, None, None, matcher, maximize)
    rows, cols, _ = pairs_from_vectors(col_for_row, row_for_col.shape[0])
    return (rows, cols, valid) if return_valid else (rows, cols)


def linear_sum_assignment_masked(cost: jax.Array, row_mask: jax.Array | None = None,
                                 col_mask: jax.Array | None = None, *, matcher: str = "jv",
                                 return_valid: bool = False):
    """Assignment restricted to valid rows and columns (padded targets, batches).

    Pairs only valid rows with valid columns, ``min(#valid rows, #valid cols)`` of
    them, optimally and avoiding forbidden (``+inf``) pairs; 0 valid entries on either
    side gives no pairs. Shapes stay static, so this runs under ``jit`` and ``vmap``
    with per-example padding.

    Args:
      cost: ``[N, M]`` costs, ``+inf`` = forbidden; entries of padded rows and columns
        are ignored (any value).
      row_mask: optional ``[N]`` boolean, ``True`` = real row.
      col_mask: optional ``[M]`` boolean, ``True`` = real column.
      matcher: solver name in ``MATCHERS``.
      return_valid: also return ``valid``, the boolean scalar of
        :func:`linear_sum_assignment`.

    Returns:
      ``(rows [K], cols [K], paired [K])`` with ``K = min(N, M)``: matched pairs first,
      rows ascending; unused slots are ``-1`` with ``paired = False``; and ``valid``
      with ``return_valid``. Invalid or infeasible costs raise ``ValueError``
      eagerly; traced, every slot is unused and ``valid`` is False.

    Example:
      >>> cost = jnp.array([[1., 9.], [9., 1.], [5., 5.]])
      >>> rows, cols, paired = linear_sum_assignment_masked(cost, col_mask=jnp.array([True, False]))
      >>> rows.tolist(), cols.tolist(), paired.tolist()
      ([0, -1], [0, -1], [True, False])
    """
    col_for_row, row_for_col, valid = _solve(cost, row_mask, col_mask, matcher)
    rows, cols, paired = pairs_from_vectors(col_for_row, row_for_col.shape[0])
    return (rows, cols, paired, valid) if return_valid else (rows, cols, paired)


def linear_sum_assignment_host(cost: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``scipy.optimize.linear_sum_assignment`` called from jitted code.

    A ``jax.pure_callback`` round trip to the host (under ``vmap`` one callback
    solves the whole batch); the reference path the in-jit solver is timed against.
    Same checks and bad-value policy as :func:`linear_sum_assignment`.

    Args:
      cost: ``[N, M]`` costs, ``+inf`` = forbidden pair.

    Returns:
      ``(rows [K], cols [K])`` int32, rows ascending, ``K = min(N, M)``.

    Example:
      >>> cost = jnp.array([[4., 1., 3.], [2., 0., 5.], [3., 2., 2.]])
      >>> rows, cols = jax.jit(linear_sum_assignment_host)(cost)
      >>> rows.tolist(), cols.tolist()
      ([0, 1, 2], [1, 0, 2])
    """
    return linear_sum_assignment(cost, matcher="scipy")
