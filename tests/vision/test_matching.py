"""Linear sum assignment against scipy: the shared suite every registered matcher runs,
forbidden (+inf) pairs, the bad-value policy and the precision costs are solved in."""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment as scipy_lsa

from tests.tolerances import F32, F64, assert_close
from vision.matching import (
    MATCHERS,
    assignment_vectors,
    check_cost,
    linear_sum_assignment,
    linear_sum_assignment_host,
    linear_sum_assignment_masked,
    pairs_from_vectors,
)

SHAPES = [(6, 6), (4, 9), (9, 4), (1, 7)]


@functools.lru_cache
def _batched(matcher):
    return jax.jit(jax.vmap(lambda c: linear_sum_assignment(c, matcher=matcher)))


def _check_against_scipy(costs, rows, cols, *, same_pairs, tol):
    for c, r, k in zip(costs, np.asarray(rows), np.asarray(cols), strict=True):
        sr, sc = scipy_lsa(c)
        assert len(r) == len(sr) == min(c.shape)
        assert np.all(np.diff(r) > 0), "rows must be ascending"
        assert len(set(k.tolist())) == len(k), "a column is used twice"
        np.testing.assert_allclose(c[r, k].sum(), c[sr, sc].sum(), **tol)
        if same_pairs:
            np.testing.assert_array_equal(r, sr)
            np.testing.assert_array_equal(k, sc)


@pytest.mark.parametrize("matcher", MATCHERS.names())
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{n}x{m}" for n, m in SHAPES])
def test_random_costs_match_scipy(matcher, shape):
    rng = np.random.default_rng(31 * shape[0] + shape[1])
    costs = rng.normal(size=(8, *shape)).astype(np.float32)
    rows, cols = _batched(matcher)(jnp.asarray(costs))
    assert rows.shape == cols.shape == (8, min(shape))
    assert rows.dtype == jnp.int32
    # Continuous random costs: the optimum is unique with probability one.
    _check_against_scipy(costs, rows, cols, same_pairs=True, tol=F32)


@pytest.mark.parametrize("matcher", MATCHERS.names())
def test_tied_costs_equal_total(matcher):
    rng = np.random.default_rng(3)
    costs = rng.integers(0, 3, size=(8, 6, 6)).astype(np.float32)
    costs[0] = 1.0  # every assignment optimal
    rows, cols = _batched(matcher)(jnp.asarray(costs))
    _check_against_scipy(costs, rows, cols, same_pairs=False, tol=F32)


@pytest.mark.parametrize("matcher", MATCHERS.names())
@pytest.mark.parametrize("shape", [(0, 3), (3, 0), (0, 0)])
def test_empty(matcher, shape):
    rows, cols = linear_sum_assignment(jnp.zeros(shape), matcher=matcher)
    assert rows.shape == cols.shape == (0,)
    col_for_row, row_for_col = assignment_vectors(jnp.zeros(shape), matcher=matcher)
    assert col_for_row.shape == (shape[0],) and row_for_col.shape == (shape[1],)


@pytest.mark.usefixtures("x64")
def test_float64_detr_sized_batch_same_pairs_as_scipy():
    rng = np.random.default_rng(4)
    costs = rng.normal(size=(16, 100, 20))
    rows, cols = jax.jit(jax.vmap(linear_sum_assignment))(jnp.asarray(costs))
    _check_against_scipy(costs, rows, cols, same_pairs=True, tol=F64)


def _masked_reference(c, rm, cm):
    """scipy on the sub-matrix of valid rows and columns, mapped back."""
    ri, ci = np.flatnonzero(rm), np.flatnonzero(cm)
    col_for_row = np.full(c.shape[0], -1)
    if ri.size and ci.size:
        r, k = scipy_lsa(c[np.ix_(ri, ci)])
        col_for_row[ri[r]] = ci[k]
    return col_for_row


@pytest.mark.parametrize("matcher", MATCHERS.names())
@pytest.mark.parametrize("shape", [(8, 5), (5, 8)], ids=["tall", "wide"])
def test_masked_matches_scipy_on_submatrix(matcher, shape):
    rng = np.random.default_rng(5)
    B = 12
    costs = rng.normal(size=(B, *shape)).astype(np.float32)
    row_mask = rng.uniform(size=(B, shape[0])) < 0.6
    col_mask = rng.uniform(size=(B, shape[1])) < 0.6
    col_mask[0] = False  # 0 real targets
    row_mask[1] = True
    col_mask[1] = True
    row_mask[2, :] = False
    row_mask[2, 0] = True  # one real row
    fn = jax.jit(jax.vmap(lambda c, rm, cm: assignment_vectors(c, rm, cm, matcher=matcher)))
    col_for_row, row_for_col = fn(jnp.asarray(costs), jnp.asarray(row_mask),
                                  jnp.asarray(col_mask))
    for b in range(B):
        expected = _masked_reference(costs[b], row_mask[b], col_mask[b])
        got = np.asarray(col_for_row[b])
        assert (got >= 0).sum() == (expected >= 0).sum()
        total = sum(costs[b, i, j] for i, j in enumerate(got) if j >= 0)
        ref = sum(costs[b, i, j] for i, j in enumerate(expected) if j >= 0)
        np.testing.assert_allclose(total, ref, **F32)
        np.testing.assert_array_equal(got, expected)
        for i, j in enumerate(got):
            if j >= 0:
                assert row_mask[b, i] and col_mask[b, j] and row_for_col[b, j] == i


def test_masked_pairs_layout_and_only_column_mask():
    cost = jnp.array([[1.0, 9.0, 0.0], [9.0, 1.0, 0.0], [5.0, 5.0, 0.0]])
    rows, cols, valid = linear_sum_assignment_masked(cost, col_mask=jnp.array([True, True, False]))
    assert rows.tolist() == [0, 1, -1] and cols.tolist() == [0, 1, -1]
    assert valid.tolist() == [True, True, False]
    none = linear_sum_assignment_masked(cost, col_mask=jnp.zeros(3, bool))
    assert not np.any(np.asarray(none[2]))
    r, c, v = pairs_from_vectors(jnp.array([2, -1, 0, -1]), 3)
    assert r.tolist() == [0, 2, -1] and c.tolist() == [2, 0, -1] and v.tolist() == [1, 1, 0]


def test_host_path_and_maximize_and_unjitted():
    rng = np.random.default_rng(6)
    c = rng.normal(size=(5, 3)).astype(np.float32)
    rows, cols = jax.jit(linear_sum_assignment_host)(jnp.asarray(c))
    sr, sc = scipy_lsa(c)
    np.testing.assert_array_equal(rows, sr)
    np.testing.assert_array_equal(cols, sc)
    rows, cols = linear_sum_assignment(jnp.asarray(c), maximize=True)  # eager
    sr, sc = scipy_lsa(c, maximize=True)
    np.testing.assert_array_equal(rows, sr)
    np.testing.assert_array_equal(cols, sc)
    batched = jax.vmap(linear_sum_assignment_host)(jnp.asarray(np.stack([c, -c])))
    assert_close(batched[1][1], scipy_lsa(-c)[1], F32)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"cost contains invalid numeric entries: got nan at "
                                         r"\[1, 0\]"):
        linear_sum_assignment(jnp.array([[0.0, 1.0], [jnp.nan, 2.0]]))
    with pytest.raises(ValueError, match="cost contains invalid numeric entries: got -inf"):
        linear_sum_assignment_masked(jnp.array([[-jnp.inf, 1.0]]))
    with pytest.raises(ValueError, match="got inf at .*-inf marks a forbidden pair"):
        linear_sum_assignment(jnp.array([[jnp.inf, 1.0]]), maximize=True)
    with pytest.raises(ValueError, match="cost must be a real matrix"):
        linear_sum_assignment(np.array([["a", "b"]]))
    with pytest.raises(ValueError, match=r"cost must have shape \[N, M\]"):
        linear_sum_assignment(jnp.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match=r"col_mask must have shape \[M\] = \(3,\)"):
        assignment_vectors(jnp.zeros((2, 3)), col_mask=jnp.ones(2, bool))
    with pytest.raises(ValueError, match="row_mask must be boolean"):
        assignment_vectors(jnp.zeros((2, 3)), row_mask=jnp.ones(2))
    with pytest.raises(KeyError, match="unknown matcher 'hungry'; valid names: jv, optax"):
        linear_sum_assignment(jnp.zeros((2, 2)), matcher="hungry")


# ----------------------------------------------------------------------------- forbidden pairs


@functools.lru_cache
def _batched_valid(matcher):
    return jax.jit(jax.vmap(lambda c: linear_sum_assignment(c, matcher=matcher,
                                                            return_valid=True)))


def _scipy_total(c):
    """scipy's optimal total, or None when scipy finds the problem infeasible."""
    try:
        r, k = scipy_lsa(c)
    except ValueError as err:
        assert "infeasible" in str(err)
        return None
    return c[r, k].sum()


@pytest.mark.parametrize("matcher", MATCHERS.names())
@pytest.mark.parametrize("shape", [(4, 7), (7, 4)], ids=["wide", "tall"])
def test_inf_costs_are_forbidden_pairs_like_scipy(matcher, shape):
    rng = np.random.default_rng(7)
    costs = rng.integers(0, 20, size=(24, *shape)).astype(np.float32)
    costs[rng.uniform(size=costs.shape) < 0.75] = np.inf
    rows, cols, valid = (np.asarray(a) for a in _batched_valid(matcher)(jnp.asarray(costs)))
    feasible = 0
    for c, r, k, v in zip(costs, rows, cols, valid, strict=True):
        total = _scipy_total(c)
        assert bool(v) == (total is not None)
        if total is None:  # poisoned, per the policy of common.checks
            assert np.all(r == -1) and np.all(k == -1)
            continue
        feasible += 1
        assert np.all(np.diff(r) > 0) and len(set(k.tolist())) == len(k)
        assert np.all(np.isfinite(c[r, k])), "a forbidden pair was used"
        assert c[r, k].sum() == total  # small integers: exact
    assert 0 < feasible < len(costs)


@pytest.mark.parametrize("matcher", MATCHERS.names())
def test_inf_forbids_eager_and_jitted_and_infeasible_raises(matcher):
    inf = jnp.inf
    # [[10, 0], [inf, 10]] (inf read as "largest cost + 1" picks the forbidden pair, total
    # 11 < 20) plus a third row and column, so that every case here has one shape.
    cost = jnp.array([[10.0, 0.0, inf], [inf, 10.0, inf], [inf, inf, 0.0]])
    jitted = jax.jit(functools.partial(linear_sum_assignment, matcher=matcher,
                                       return_valid=True))
    for rows, cols in (linear_sum_assignment(cost, matcher=matcher), jitted(cost)[:2],
                       linear_sum_assignment(-cost, maximize=True, matcher=matcher)):
        assert rows.tolist() == [0, 1, 2] and cols.tolist() == [0, 1, 2]
    # Every row has a finite entry, but rows 0 and 1 both need column 0 (Hall).
    hall = jnp.array([[1.0, inf, inf], [2.0, inf, inf], [3.0, 4.0, 5.0]])
    for infeasible in (hall, hall.T, jnp.full((3, 3), inf)):
        with pytest.raises(ValueError, match="cost matrix is infeasible"):
            linear_sum_assignment(infeasible, matcher=matcher)
        rows, cols, valid = jitted(infeasible)
        assert not bool(valid) and rows.tolist() == cols.tolist() == [-1, -1, -1]


@pytest.mark.parametrize("matcher", MATCHERS.names())
def test_masked_entries_ignored_and_forbidden_pairs_in_masked_problems(matcher):
    nan, inf = np.nan, np.inf
    cost = jnp.array([[nan, 1.0, inf], [2.0, inf, 0.0], [5.0, 3.0, nan]])
    rm, cm = jnp.array([False, True, True]), jnp.array([True, True, False])
    fn = functools.partial(assignment_vectors, matcher=matcher, return_valid=True)
    jitted = jax.jit(fn)
    for col_for_row, row_for_col, valid in (fn(cost, rm, cm), jitted(cost, rm, cm)):
        assert col_for_row.tolist() == [-1, 0, 1] and row_for_col.tolist() == [1, 2, -1]
        assert bool(valid)
    rows, cols, paired, valid = linear_sum_assignment_masked(cost, rm, cm, matcher=matcher,
                                                             return_valid=True)
    assert rows.tolist() == [1, 2, -1] and cols.tolist() == [0, 1, -1] and bool(valid)
    assert paired.tolist() == [True, True, False]
    one = jnp.array([False, True, False])  # the only real entry [1, 1] is forbidden
    with pytest.raises(ValueError, match="cost matrix is infeasible"):
        linear_sum_assignment_masked(cost, one, one, matcher=matcher)
    col_for_row, row_for_col, valid = jitted(cost, one, one)
    assert not bool(valid) and col_for_row.tolist() == row_for_col.tolist() == [-1, -1, -1]


def test_nan_and_wrong_signed_inf_poisoned_under_jit_and_vmap():
    nan, inf = jnp.nan, jnp.inf
    costs = jnp.array([[[0.0, 1.0], [nan, 2.0]], [[0.0, 1.0], [-inf, 2.0]],
                       [[0.0, 1.0], [3.0, inf]]])
    rows, cols, valid = jax.jit(jax.vmap(functools.partial(
        linear_sum_assignment, return_valid=True)))(costs)
    assert valid.tolist() == [False, False, True]
    assert np.all(np.asarray(rows[:2]) == -1) and np.all(np.asarray(cols[:2]) == -1)
    assert rows[2].tolist() == [0, 1] and cols[2].tolist() == [1, 0]
    # With maximize the roles of the infinities swap: -inf forbids, +inf is invalid.
    maximize = jax.jit(functools.partial(linear_sum_assignment, maximize=True,
                                         return_valid=True))
    _, cols, valid = maximize(jnp.array([[inf, 1.0]]))
    assert not bool(valid) and cols.tolist() == [-1]
    _, cols, valid = maximize(jnp.array([[-inf, 1.0]]))
    assert bool(valid) and cols.tolist() == [1]
    with pytest.raises(ValueError, match="cost contains invalid numeric entries"):
        linear_sum_assignment(jnp.array([[inf, 1.0]]), maximize=True)


# ----------------------------------------------------------------------------- precision

BIG_INTS = np.array([[2**40 + 1, 2**40 + 3], [2**40 + 2, 2**40 + 5]], np.int64)
BIG_FLOATS = 1e12 + np.array([[1.0, 3.0], [2.0, 5.0]])
HUGE = np.finfo(np.float64).max / 4 * np.array([[1.0, 0.5], [0.5, 1.0]])


@pytest.mark.usefixtures("x64")
def test_x64_solves_float64_and_integers_exactly():
    one_bit = 2**53 - np.array([[1, 3], [2, 5]], np.int64)  # exact in float64 only
    jitted = jax.jit(linear_sum_assignment)
    for cost in (BIG_INTS, BIG_FLOATS, HUGE, one_bit, -BIG_INTS):
        expected = scipy_lsa(cost)[1].tolist()
        assert check_cost(cost).dtype == jnp.float64
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nothing is lost: no precision warning
            for fn in (linear_sum_assignment, jitted):
                assert fn(cost)[1].tolist() == expected, cost
                assert fn(jnp.asarray(cost))[1].tolist() == expected, cost


def test_x64_off_precision_loss_warns_or_raises():
    with pytest.warns(UserWarning, match="cost: float64 costs are rounded to float32"):
        linear_sum_assignment(BIG_FLOATS)
    with pytest.warns(UserWarning, match=r"cost: integer costs beyond 2\*\*24 are rounded"):
        linear_sum_assignment(BIG_INTS)
    with pytest.warns(UserWarning, match=r"traced int32 costs are solved in float32"):
        jax.jit(lambda c: linear_sum_assignment(c)).lower(jnp.zeros((2, 2), jnp.int32))
    with pytest.raises(ValueError, match="cost has finite values beyond the range of float32"):
        linear_sum_assignment(HUGE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # exact conversions stay silent
        cols = linear_sum_assignment(np.array([[2**24, 3], [2, 2**24 - 5]], np.int64))[1]
        assert cols.tolist() == [1, 0]
        linear_sum_assignment(np.eye(3))  # float64, exact in float32
        jax.jit(linear_sum_assignment)(jnp.ones((2, 2), jnp.int16))
        assert check_cost([[True, False]]).dtype == jnp.float32
