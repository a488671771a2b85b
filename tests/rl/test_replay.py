"""rl.replay: ring overwrite, add_batch ≡ repeated add, uniform sampling among filled
slots (chi-square), the too-large-batch behaviour eager and under jit, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from rl import replay
from tests.tolerances import BITWISE, assert_close


def _example():
    return {"obs": jnp.zeros(3, jnp.float32), "reward": jnp.zeros((), jnp.float32),
            "id": jnp.zeros((), jnp.int32)}


def _item(i):
    return {"obs": jnp.full(3, i, jnp.float32), "reward": jnp.asarray(i, jnp.float32),
            "id": jnp.asarray(i, jnp.int32)}


def _fill(buf, ids):
    for i in ids:
        buf = replay.add(buf, _item(i))
    return buf


def test_init_shapes_and_bad_capacity():
    buf = replay.init(_example(), 7)
    assert buf.capacity == 7
    assert buf.storage["obs"].shape == (7, 3) and buf.storage["obs"].dtype == jnp.float32
    assert buf.storage["id"].dtype == jnp.int32
    assert int(buf.size) == 0 and int(buf.position) == 0
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        replay.init(_example(), 0)
    with pytest.raises(ValueError, match="at least one array leaf"):
        replay.init({}, 4)


@pytest.mark.parametrize("jit", [False, True])
def test_ring_overwrite_keeps_the_last_capacity_items(jit):
    buf = replay.init(_example(), 5)
    if jit:
        def body(b, i):
            return replay.add(b, {"obs": jnp.full(3, i, jnp.float32),
                                  "reward": i.astype(jnp.float32), "id": i}), None
        buf, _ = jax.jit(lambda b: jax.lax.scan(body, b, jnp.arange(12, dtype=jnp.int32)))(buf)
    else:
        buf = _fill(buf, range(12))
    # item i lives in slot i mod 5; the last write (11) was at slot 1
    np.testing.assert_array_equal(np.asarray(buf.storage["id"]), [10, 11, 7, 8, 9])
    np.testing.assert_array_equal(np.asarray(buf.storage["obs"][:, 0]), [10, 11, 7, 8, 9])
    assert int(buf.position) == 12 % 5 and int(buf.size) == 5


def test_partial_fill_counts():
    buf = _fill(replay.init(_example(), 5), range(3))
    assert int(buf.size) == 3 and int(buf.position) == 3
    np.testing.assert_array_equal(np.asarray(buf.storage["id"]), [0, 1, 2, 0, 0])


@pytest.mark.parametrize("start, n", [(0, 0), (0, 3), (2, 4), (3, 5), (1, 13)])
def test_add_batch_equals_repeated_add(start, n):
    base = _fill(replay.init(_example(), 5), range(100, 100 + start))
    ids = np.arange(n, dtype=np.int32)
    batch = {"obs": jnp.repeat(jnp.asarray(ids, jnp.float32)[:, None], 3, axis=1),
             "reward": jnp.asarray(ids, jnp.float32), "id": jnp.asarray(ids)}
    got = jax.jit(replay.add_batch)(base, batch)
    want = _fill(base, ids)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert_close(a, b, BITWISE)


def test_uniform_sampling_among_filled_slots_chi_square():
    buf = _fill(replay.init(_example(), 10), range(25))  # holds 15..24 after wrapping
    # 5,000 batches of 4 (a batch may not exceed the stored transitions)
    many = jax.jit(jax.vmap(replay.sample, in_axes=(None, 0, None)), static_argnums=2)
    batch = many(buf, jax.random.split(jax.random.key(0), 5000), 4)
    batch = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), batch)
    ids = np.asarray(batch["id"])
    assert set(ids.tolist()) == set(range(15, 25))
    # the sampled transitions are whole: every leaf comes from the same slot
    np.testing.assert_array_equal(np.asarray(batch["obs"][:, 2]), ids.astype(np.float32))
    counts = np.bincount(ids - 15, minlength=10)
    assert stats.chisquare(counts).pvalue > 1e-3

    # partially filled: only the 4 written slots, uniformly
    part = _fill(replay.init(_example(), 10), range(4))
    ids = np.asarray(many(part, jax.random.split(jax.random.key(1), 5000), 4)["id"]).ravel()
    counts = np.bincount(ids, minlength=10)
    assert counts[4:].sum() == 0
    assert stats.chisquare(counts[:4]).pvalue > 1e-3


def test_sample_is_deterministic_in_the_key_and_vmaps_over_buffers():
    bufs = jax.vmap(lambda off: jax.lax.fori_loop(
        0, 6, lambda i, b: replay.add(b, {"obs": jnp.full(3, i + off, jnp.float32),
                                          "reward": (i + off).astype(jnp.float32),
                                          "id": i + off}),
        replay.init(_example(), 8)))(jnp.array([0, 100], jnp.int32))
    keys = jax.random.split(jax.random.key(3), 2)
    batch = jax.vmap(replay.sample, in_axes=(0, 0, None))(bufs, keys, 16)
    assert batch["id"].shape == (2, 16)
    assert np.all(np.asarray(batch["id"][0]) < 6) and np.all(np.asarray(batch["id"][1]) >= 100)
    again = jax.vmap(replay.sample, in_axes=(0, 0, None))(bufs, keys, 16)
    assert_close(batch["id"], again["id"], BITWISE)


def test_batch_larger_than_contents_raises_eagerly():
    buf = _fill(replay.init(_example(), 10), range(3))
    with pytest.raises(ValueError, match="batch_size 4 exceeds the 3 transitions"):
        replay.sample(buf, jax.random.key(0), 4)
    with pytest.raises(ValueError, match="exceeds the 0 transitions"):
        replay.sample(replay.init(_example(), 10), jax.random.key(0), 1)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        replay.sample(buf, jax.random.key(0), 0)
    assert not bool(replay.can_sample(buf, 4)) and bool(replay.can_sample(buf, 3))


def test_batch_larger_than_contents_is_nan_poisoned_under_jit():
    sample = jax.jit(replay.sample, static_argnums=2)
    buf = _fill(replay.init(_example(), 10), range(3))
    bad = sample(buf, jax.random.key(0), 4)
    assert np.all(np.isnan(np.asarray(bad["obs"]))) and np.all(np.isnan(np.asarray(bad["reward"])))
    good = sample(buf, jax.random.key(0), 3)
    assert np.all(np.isfinite(np.asarray(good["obs"])))
    assert set(np.asarray(good["id"]).tolist()) <= {0, 1, 2}


def test_bad_transitions_are_refused_by_name():
    buf = replay.init(_example(), 4)
    wrong_shape = {**_item(0), "obs": jnp.zeros(4, jnp.float32)}
    with pytest.raises(ValueError, match=r"transition leaf \['obs'\] must have shape \[3\]"):
        replay.add(buf, wrong_shape)
    wrong_dtype = {**_item(0), "reward": jnp.zeros((), jnp.int32)}
    with pytest.raises(ValueError, match=r"\['reward'\] must have dtype float32"):
        replay.add(buf, wrong_dtype)
    with pytest.raises(ValueError, match="tree structure"):
        replay.add(buf, {"obs": jnp.zeros(3)})
    with pytest.raises(ValueError, match=r"transitions leaf \['obs'\] must have shape \[2, 3\]"):
        replay.add_batch(buf, {"obs": jnp.zeros((2, 4)), "reward": jnp.zeros(2),
                               "id": jnp.zeros(2, jnp.int32)})
