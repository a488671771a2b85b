"""Linear sum assignment against scipy: the shared suite every registered matcher runs."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment as scipy_lsa

from tests.tolerances import F32, F64, assert_close
from vision.matching import (
    MATCHERS,
    assignment_vectors,
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
    with pytest.raises(ValueError, match=r"cost must be finite; got nan at \[1, 0\]"):
        linear_sum_assignment(jnp.array([[0.0, 1.0], [jnp.nan, 2.0]]))
    with pytest.raises(ValueError, match="cost must be finite; got inf"):
        linear_sum_assignment_masked(jnp.array([[jnp.inf, 1.0]]))
    with pytest.raises(ValueError, match=r"cost must have shape \[N, M\]"):
        linear_sum_assignment(jnp.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match=r"col_mask must have shape \[M\] = \(3,\)"):
        assignment_vectors(jnp.zeros((2, 3)), col_mask=jnp.ones(2, bool))
    with pytest.raises(ValueError, match="row_mask must be boolean"):
        assignment_vectors(jnp.zeros((2, 3)), row_mask=jnp.ones(2))
    with pytest.raises(KeyError, match="unknown matcher 'hungry'; valid names: jv, optax"):
        linear_sum_assignment(jnp.zeros((2, 2)), matcher="hungry")


def test_non_finite_costs_under_jit_terminate():
    cost = jnp.array([[jnp.nan, 1.0], [2.0, jnp.inf]])
    rows, cols = jax.jit(linear_sum_assignment)(cost)
    assert rows.shape == (2,) and sorted(np.asarray(cols).tolist()) == [0, 1]
