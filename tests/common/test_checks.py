"""common.checks: named errors eagerly, poisoned outputs under jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common.checks import (
    check_finite,
    check_in_range,
    check_int,
    check_positive,
    check_rank,
    is_concrete,
    poison,
    shape_str,
)


def test_check_int_refuses_floats_bools_and_out_of_range():
    assert check_int(np.int64(3), "n") == 3
    for bad, match in ((256.7, "an integer, got 256.7"), (True, "an integer, got True"),
                       (0, "an integer >= 1, got 0"), (9, "an integer <= 8, got 9")):
        with pytest.raises(ValueError, match=f"steps must be {match}"):
            check_int(bad, "steps", 1, 8)


def test_value_checks_name_the_argument_and_skip_tracers():
    with pytest.raises(ValueError, match=r"x must have shape \[B, D\], got shape \(3\)"):
        check_rank(jnp.zeros(3), "x", 2, "[B, D]")
    with pytest.raises(ValueError, match="x must be finite"):
        check_finite(jnp.array([1.0, jnp.nan]), "x")
    with pytest.raises(ValueError, match="beta must be finite and > 0"):
        check_positive(float("inf"), "beta")
    with pytest.raises(ValueError, match=r"gamma must lie in \[0, 1\)"):
        check_in_range(1.0, "gamma", 0.0, 1.0, high_open=True)
    jax.jit(lambda g: check_in_range(g, "gamma", 0.0, 1.0) or g)(2.0)   # traced: skipped
    assert is_concrete(1.0) and shape_str((2, 3)) == "(2, 3)"


def test_poison_marks_every_dtype_invalid_under_jit():
    tree = {"f": jnp.ones(2), "i": jnp.arange(2), "b": jnp.ones(2, bool)}
    out = jax.jit(poison)(tree, jnp.bool_(False))
    assert np.isnan(out["f"]).all() and (out["i"] == -1).all() and not out["b"].any()
    same = jax.jit(poison)(tree, jnp.bool_(True))
    assert all(np.array_equal(same[k], tree[k]) for k in tree)
    rows = jax.jit(poison)(jnp.ones((2, 3)), jnp.array([[True], [False]]))
    assert np.isfinite(rows[0]).all() and np.isnan(rows[1]).all()
