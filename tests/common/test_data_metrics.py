"""Dataset loader, batch sampler and metric writer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common.data import load_digits_split, sample_batch, sample_sharded_batch
from common.metrics import MetricsWriter, read_metrics, series


def test_digits_split_is_stratified_and_standardised():
    data = load_digits_split(test_fraction=0.2, seed=0)
    assert data["x_train"].shape == (1437, 64) and data["x_test"].shape == (360, 64)
    assert data["x_train"].dtype == np.float32 and data["y_train"].dtype == np.int32
    np.testing.assert_allclose(data["x_train"].mean(axis=0), 0.0, atol=1e-5)
    counts = np.bincount(data["y_test"], minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: ~36 of each class
    again = load_digits_split(test_fraction=0.2, seed=0)
    np.testing.assert_array_equal(data["y_test"], again["y_test"])
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits_split(test_fraction=1.0)


def test_sample_batch_draws_rows_together():
    arrays = {"x": jnp.arange(10.0)[:, None] * jnp.ones((1, 3)), "y": jnp.arange(10)}
    batch = jax.jit(lambda k: sample_batch(arrays, k, 64))(jax.random.key(0))
    assert batch["x"].shape == (64, 3)
    np.testing.assert_array_equal(batch["x"][:, 0], batch["y"].astype(jnp.float32))
    assert len(np.unique(np.asarray(batch["y"]))) == 10
    with pytest.raises(ValueError, match="leading size"):
        sample_batch({"x": jnp.zeros(3), "y": jnp.zeros(4)}, jax.random.key(0), 2)


def test_sample_sharded_batch_draws_each_share_from_its_own_block():
    """Rows ``s·B/S ..`` of the batch come from block ``s`` of the data (what keeps a
    data-parallel draw on the device holding the rows); one block is ``sample_batch``."""
    n, shards, batch = 64, 8, 32
    arrays = {"x": jnp.arange(n, dtype=jnp.float32)[:, None] * jnp.ones((1, 3)),
              "y": jnp.arange(n)}
    key = jax.random.key(4)
    out = jax.jit(lambda a, k: sample_sharded_batch(a, k, batch, shards))(arrays, key)
    block = np.asarray(out["y"]) // (n // shards)                  # the block of each row
    np.testing.assert_array_equal(block, np.repeat(np.arange(shards), batch // shards))
    np.testing.assert_array_equal(np.asarray(out["x"])[:, 0], np.asarray(out["y"]))
    one = sample_sharded_batch(arrays, key, batch, 1)
    same = sample_batch(arrays, key, batch)
    np.testing.assert_array_equal(one["y"], same["y"])
    with pytest.raises(ValueError, match="batch_size"):
        sample_sharded_batch(arrays, key, 30, shards)
    with pytest.raises(ValueError, match="leading size"):
        sample_sharded_batch({"y": jnp.arange(60)}, key, batch, shards)
    with pytest.raises(ValueError, match="num_shards"):
        sample_sharded_batch(arrays, key, batch, 0)


def test_metrics_writer_appends_and_resumed_steps_override(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=False) as log:
        log.write(1, {"loss": 1.0})
        log.write(2, {"loss": 0.5, "acc": np.float32(0.25)})
    with MetricsWriter(tmp_path, tensorboard=False) as log:  # a resumed run appends
        log.write(2, {"loss": 0.4})
        log.write(3, {"loss": float("nan")})
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert len(rows) == 4 and rows[-1]["loss"] == "nan"
    steps, values = series(rows, "loss")
    assert steps == [1, 2, 3] and values[:2] == [1.0, 0.4] and np.isnan(values[2])
    assert series(rows, "acc") == ([2], [0.25])
