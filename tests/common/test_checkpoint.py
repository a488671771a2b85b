"""Checkpointer: round trips (typed keys included), keep-last-N, atomic steps, and
clear errors for mismatched restore targets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common.checkpoint import Checkpointer


def _tree(n=3, dtype=jnp.float32):
    return {"w": jnp.arange(n * 2, dtype=dtype).reshape(n, 2), "b": jnp.ones(2, dtype),
            "step": jnp.array(5, jnp.int32), "key": jax.random.key(3)}


def test_round_trip_restores_values_and_typed_keys(tmp_path):
    tree = _tree()
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(5, tree)
        ckpt.wait()
        target = jax.tree.map(jnp.zeros_like, {k: v for k, v in tree.items() if k != "key"})
        target["key"] = jax.random.key(0)
        restored = ckpt.restore(target)
    np.testing.assert_array_equal(restored["w"], tree["w"])
    assert restored["step"].dtype == jnp.int32
    assert jnp.issubdtype(restored["key"].dtype, jax.dtypes.prng_key)
    np.testing.assert_array_equal(jax.random.key_data(restored["key"]),
                                  jax.random.key_data(tree["key"]))
    # the restored key draws the same numbers as the saved one
    np.testing.assert_array_equal(jax.random.normal(restored["key"], (4,)),
                                  jax.random.normal(tree["key"], (4,)))


def test_keep_last_n_and_latest(tmp_path):
    with Checkpointer(tmp_path, max_to_keep=2) as ckpt:
        for step in (1, 2, 3, 4):
            ckpt.save(step, _tree())
        ckpt.wait()
        assert ckpt.all_steps() == [3, 4] and ckpt.latest_step() == 4
        assert int(ckpt.restore(_tree(), step=3)["step"]) == 5
        with pytest.raises(FileNotFoundError, match="step 1"):
            ckpt.restore(_tree(), step=1)


def test_unfinished_save_is_invisible(tmp_path):
    """A step directory still being written (orbax's temporary name) is never restored."""
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, _tree())
        ckpt.wait()
    (tmp_path / "2.orbax-checkpoint-tmp-123").mkdir()
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.latest_step() == 1


def test_restore_or_without_checkpoint_returns_target(tmp_path):
    tree = _tree()
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.restore_or(tree) is tree
        with pytest.raises(FileNotFoundError, match="no checkpoint"):
            ckpt.restore(tree)


@pytest.mark.parametrize(
    "target, message",
    [
        (_tree(n=4), r"leaf w has shape \(3, 2\) on disk but \(4, 2\)"),
        (_tree(dtype=jnp.int32), "dtype float32 on disk but int32"),
        ({**_tree(), "extra": jnp.zeros(1)}, "different tree structure"),
    ],
)
def test_mismatched_target_is_refused_and_disk_untouched(tmp_path, target, message):
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(7, _tree())
        ckpt.wait()
        with pytest.raises(ValueError, match=message):
            ckpt.restore(target)
        assert ckpt.all_steps() == [7]
        np.testing.assert_array_equal(ckpt.restore(_tree())["w"], _tree()["w"])


def test_bad_max_to_keep(tmp_path):
    with pytest.raises(ValueError, match="max_to_keep"):
        Checkpointer(tmp_path, max_to_keep=0)
