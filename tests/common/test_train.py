"""The train step against a hand-written optax update, the scanned chunk against the
step loop, and the host loop's logging, checkpointing and bitwise resume."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx, struct

from common.checkpoint import Checkpointer
from common.data import sample_batch
from common.metrics import MetricsWriter, read_metrics, series
from common.nn import MLP
from common.optim import build_optimizer
from common.train import (
    TrainState,
    fit,
    make_train_chunk,
    make_train_step,
    step_keys,
    train_step_fn,
)
from tests.tolerances import BITWISE, assert_close


def _problem(seed=0):
    """A small regression task with dropout, so the loss key matters."""
    model = MLP([5, 16, 2], activation="tanh", dropout_rate=0.1, rngs=nnx.Rngs(seed))
    tx = build_optimizer(name="adam", learning_rate=1e-2)
    state = TrainState.create(model, tx, jax.random.key(seed + 1))
    x = jax.random.normal(jax.random.key(7), (64, 5))
    y = jnp.stack([jnp.sin(x[:, 0]), x[:, 1] * x[:, 2]], axis=-1)
    data = {"x": x, "y": y}

    def loss_fn(params, rest, batch, key):
        model = nnx.merge(state.graphdef, params, rest)
        pred = model(batch["x"], deterministic=False, rngs=nnx.Rngs(dropout=key))
        return jnp.mean((pred - batch["y"]) ** 2), {"pred_mean": jnp.mean(pred)}

    batch_fn = lambda data, key: sample_batch(data, key, 16)
    return state, tx, loss_fn, batch_fn, data


def _leaves_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_train_state_requires_typed_key():
    with pytest.raises(TypeError, match="key must be a typed key"):
        TrainState.create({"w": jnp.zeros(2)}, optax.sgd(0.1), jax.random.PRNGKey(0))


def test_step_matches_hand_written_update():
    state, tx, loss_fn, _batch_fn, data = _problem()
    batch = jax.tree.map(lambda a: a[:16], data)
    new_state, metrics = make_train_step(loss_fn, tx, donate=False)(state, batch)
    _, loss_key = step_keys(state)
    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, state.rest, batch,
                                                                    loss_key)
    updates, _ = tx.update(grads, tx.init(state.params), state.params)
    expected = optax.apply_updates(state.params, updates)
    for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(expected), strict=True):
        assert_close(a, b)
    assert_close(metrics["loss"], loss)
    assert_close(metrics["grad_norm"], optax.tree_utils.tree_norm(grads))
    assert int(new_state.step) == 1
    assert set(metrics) == {"loss", "grad_norm", "pred_mean"}


def test_loss_must_be_scalar():
    state = TrainState.create({"w": jnp.ones(3)}, optax.sgd(0.1), jax.random.key(0))
    step = make_train_step(lambda p, r, b, k: (p["w"] * b, {}), optax.sgd(0.1))
    with pytest.raises((ValueError, TypeError)):
        step(state, jnp.ones(3))


def test_chunk_equals_step_loop():
    """One scanned chunk of n steps = n jitted steps with the same batch keys."""
    state, tx, loss_fn, batch_fn, data = _problem()
    chunk = make_train_chunk(train_step_fn(loss_fn, tx), batch_fn, 5, donate=False)
    chunked, metrics = chunk(state, data)
    step = make_train_step(loss_fn, tx, donate=False)
    looped = state
    losses = []
    for _ in range(5):
        batch_key, _ = step_keys(looped)
        looped, m = step(looped, batch_fn(data, batch_key))
        losses.append(m["loss"])
    for a, b in zip(jax.tree.leaves(chunked.params), jax.tree.leaves(looped.params), strict=True):
        assert_close(a, b)
    assert metrics["loss"].shape == (5,)
    assert_close(metrics["loss"], np.array(losses))


def test_training_reduces_the_loss():
    state, tx, loss_fn, batch_fn, data = _problem()
    history = []
    final = fit(state, train_step_fn(loss_fn, tx), batch_fn, data, num_steps=300,
                chunk_size=50, progress=False, history=history)
    losses = [m["loss"] for _, m in history]
    assert int(final.step) == 300 and len(losses) == 300
    assert np.mean(losses[-30:]) < 0.3 * np.mean(losses[:30])


def test_fit_logs_every_step_and_evaluates(tmp_path):
    state, tx, loss_fn, batch_fn, data = _problem()
    with MetricsWriter(tmp_path) as log:
        fit(state, train_step_fn(loss_fn, tx), batch_fn, data, num_steps=30, chunk_size=8,
            logger=log, eval_fn=lambda s: {"step_seen": float(s.step)}, eval_every=10,
            progress=False)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    steps, losses = series(rows, "loss")
    assert steps == list(range(1, 31)) and all(np.isfinite(losses))
    assert series(rows, "eval/step_seen") == ([10, 20, 30], [10.0, 20.0, 30.0])
    assert (tmp_path / "tensorboard").is_dir() and any((tmp_path / "tensorboard").iterdir())


def _fit_with(ckpt_dir, num_steps, logger=None):
    state, tx, loss_fn, batch_fn, data = _problem()
    ckpt = Checkpointer(ckpt_dir, max_to_keep=2)
    try:
        return fit(state, train_step_fn(loss_fn, tx), batch_fn, data, num_steps=num_steps,
                   chunk_size=7, checkpointer=ckpt, checkpoint_every=14, logger=logger,
                   progress=False)
    finally:
        ckpt.close()


def test_resume_is_bitwise_equal_to_an_uninterrupted_run(tmp_path):
    uninterrupted = _fit_with(tmp_path / "a", 50)
    stopped = _fit_with(tmp_path / "b", 21)        # a run stopped after 21 steps ...
    assert int(stopped.step) == 21
    resumed = _fit_with(tmp_path / "b", 50)        # ... and started again
    assert int(resumed.step) == 50
    _leaves_equal(resumed.params, uninterrupted.params)
    _leaves_equal(resumed.opt_state, uninterrupted.opt_state)
    assert Checkpointer(tmp_path / "b").all_steps() == [42, 50]  # keep-last-2


class _InterruptAt:
    """A logger that raises KeyboardInterrupt once, when step ``at`` is written (Ctrl-C)."""

    def __init__(self, at):
        self.at = at
        self.raised = False
        self.steps = []

    def write(self, step, metrics):
        if step == self.at and not self.raised:
            self.raised = True
            raise KeyboardInterrupt
        self.steps.append(step)


def test_interrupt_saves_and_resume_loses_nothing(tmp_path):
    uninterrupted = _fit_with(tmp_path / "a", 40)
    logger = _InterruptAt(19)
    with pytest.raises(KeyboardInterrupt):
        _fit_with(tmp_path / "b", 40, logger=logger)  # while logging the chunk 15..21
    # The chunk had finished on device: its remaining rows are written, step 21 is saved.
    assert logger.steps == list(range(1, 22))
    assert Checkpointer(tmp_path / "b").latest_step() == 21
    resumed = _fit_with(tmp_path / "b", 40)
    _leaves_equal(resumed.params, uninterrupted.params)


def test_bad_loop_arguments():
    state, tx, loss_fn, batch_fn, data = _problem()
    with pytest.raises(ValueError, match="chunk_size"):
        fit(state, train_step_fn(loss_fn, tx), batch_fn, data, num_steps=5, chunk_size=0,
            progress=False)
    with pytest.raises(ValueError, match="length"):
        make_train_chunk(train_step_fn(loss_fn, tx), batch_fn, 0)


def test_state_of_plain_pytree_has_no_model():
    state = TrainState.create({"w": jnp.zeros(2)}, optax.sgd(0.1), jax.random.key(0))
    with pytest.raises(ValueError, match="no model"):
        state.model()
    assert_close(state.params["w"], np.zeros(2), BITWISE)


# ----------------------------------------------------------------------------- non-trainable
# state, EMA, and fit over other state pytrees


class _Frozen(nnx.Variable):
    """A non-trainable variable (like frozen batch-norm statistics)."""


class _ScaledLinear(nnx.Module):
    """A linear layer whose output is scaled by a non-Param variable read in ``__call__``."""

    def __init__(self, rngs):
        self.linear = nnx.Linear(3, 1, rngs=rngs)
        self.scale = _Frozen(jnp.full((1, 1), 2.0))

    def __call__(self, x):
        return self.linear(x) * self.scale[...]


def test_non_param_variable_survives_training_by_fit():
    """Regression: a loss that closed over ``state.rest`` read donated (deleted) buffers
    once ``fit`` had run a chunk. ``rest`` is now passed to the loss explicitly."""
    model = _ScaledLinear(nnx.Rngs(0))
    tx = optax.sgd(0.1)
    state = TrainState.create(model, tx, jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (32, 3))
    data = {"x": x, "y": x @ jnp.array([[1.0], [-2.0], [0.5]])}
    graphdef = state.graphdef

    def loss_fn(params, rest, batch, key):
        pred = nnx.merge(graphdef, params, rest)(batch["x"])
        return jnp.mean((pred - batch["y"]) ** 2), {}

    final = fit(state, train_step_fn(loss_fn, tx), lambda d, k: d, data, num_steps=40,
                chunk_size=10, progress=False)
    assert state.rest is not None and jax.tree.leaves(state.rest)[0].is_deleted()
    pred = final.model()(x)                      # evaluation after training: live buffers
    assert float(jnp.mean((pred - data["y"]) ** 2)) < 0.05
    assert_close(jax.tree.leaves(final.rest)[0], np.full((1, 1), 2.0), BITWISE)


def test_updates_rest_carries_new_statistics():
    state = TrainState.create({"w": jnp.ones(2)}, optax.sgd(0.1), jax.random.key(0))
    state = state.replace(rest={"count": jnp.zeros((), jnp.int32)})

    def loss_fn(params, rest, batch, key):
        return jnp.sum(params["w"] ** 2), ({}, {"count": rest["count"] + 1})

    step = make_train_step(loss_fn, optax.sgd(0.1), updates_rest=True)
    for _ in range(3):
        state, _ = step(state, None)
    assert int(state.rest["count"]) == 3


def test_ema_is_updated_checkpointed_and_resumed(tmp_path):
    """The EMA equals its recurrence computed by hand, and resumes bitwise."""
    def run(ckpt_dir, num_steps):
        state, tx, loss_fn, batch_fn, data = _problem()
        state = TrainState.create(MLP([5, 16, 2], activation="tanh", dropout_rate=0.1,
                                      rngs=nnx.Rngs(0)), tx, jax.random.key(1), ema=True)
        ckpt = Checkpointer(ckpt_dir)
        try:
            return fit(state, train_step_fn(loss_fn, tx, ema_decay=0.9), batch_fn, data,
                       num_steps=num_steps, chunk_size=4, checkpointer=ckpt,
                       checkpoint_every=4, progress=False)
        finally:
            ckpt.close()

    state, tx, loss_fn, batch_fn, data = _problem()
    ema = jax.tree.map(jnp.copy, state.params)
    step = make_train_step(loss_fn, tx, donate=False)
    for _ in range(10):
        batch_key, _ = step_keys(state)
        state, _ = step(state, batch_fn(data, batch_key))
        ema = jax.tree.map(lambda e, p: 0.9 * e + 0.1 * p, ema, state.params)
    full = run(tmp_path / "a", 10)
    for a, b in zip(jax.tree.leaves(full.ema), jax.tree.leaves(ema), strict=True):
        assert_close(a, b)
    run(tmp_path / "b", 6)
    resumed = run(tmp_path / "b", 10)
    _leaves_equal(resumed.ema, full.ema)
    assert resumed.model(ema=True) is not None


def test_ema_misuse_is_refused():
    state = TrainState.create({"w": jnp.ones(2)}, optax.sgd(0.1), jax.random.key(0))
    loss = lambda p, r, b, k: (jnp.sum(p["w"] ** 2), {})
    with pytest.raises(ValueError, match="keeps no EMA"):
        make_train_step(loss, optax.sgd(0.1), ema_decay=0.9)(state, None)
    with pytest.raises(ValueError, match="ema_decay must lie"):
        train_step_fn(loss, optax.sgd(0.1), ema_decay=1.0)
    with pytest.raises(ValueError, match="keeps no EMA"):
        state.eval_params(ema=True)
    with_ema = TrainState.create({"w": jnp.ones(2)}, optax.sgd(0.1), jax.random.key(0), ema=True)
    with pytest.raises(ValueError, match="no ema_decay"):
        make_train_step(loss, optax.sgd(0.1))(with_ema, None)


@struct.dataclass
class _Carry:
    """A non-TrainState loop state: batched ``step [S]`` and ``total [S]``."""

    step: jax.Array
    total: jax.Array


def _counter_chunk(length):
    """``length`` steps of ``total += data · step``, one metric row per 5 steps."""
    def chunk(carry, data):
        def one(c, _):
            return _Carry(c.step + 1, c.total + data * c.step), None

        def row(c, _):
            c, _ = jax.lax.scan(one, c, None, length=5)
            return c, jnp.mean(c.total)

        carry, totals = jax.lax.scan(row, carry, None, length=length // 5)
        return carry, {"total_mean": totals}

    return chunk


def test_fit_drives_any_state_with_a_step(tmp_path):
    """A batched non-TrainState carry, rows every 5 steps, on_chunk, resume."""
    def run(ckpt_dir, num_steps, seen):
        carry = _Carry(jnp.zeros(3, jnp.int32), jnp.zeros(3))
        ckpt = Checkpointer(ckpt_dir)
        history = []
        try:
            out = fit(carry, chunk_fn=_counter_chunk, data=jnp.float32(2.0), num_steps=num_steps,
                      chunk_size=10, steps_per_row=5, checkpointer=ckpt,
                      checkpoint_every=10, progress=False, history=history,
                      on_chunk=lambda s, step: seen.append(step) or {"seen": step})
        finally:
            ckpt.close()
        return out, history

    seen = []
    out, history = run(tmp_path / "a", 30, seen)
    expected = 2.0 * sum(range(30))
    assert_close(out.total, np.full(3, expected))
    assert [s for s, row in history if "total_mean" in row] == [5, 10, 15, 20, 25, 30]
    assert seen == [10, 20, 30]
    run(tmp_path / "b", 20, [])
    resumed, history = run(tmp_path / "b", 30, [])
    assert_close(resumed.total, out.total, BITWISE)
    assert [s for s, row in history if "total_mean" in row] == [25, 30]


def test_fit_refuses_bad_row_multiples_and_mixed_arguments():
    carry = _Carry(jnp.zeros(3, jnp.int32), jnp.zeros(3))
    with pytest.raises(ValueError, match="multiple of steps_per_row"):
        fit(carry, chunk_fn=_counter_chunk, num_steps=12, chunk_size=10, steps_per_row=5,
            progress=False)
    with pytest.raises(ValueError, match="not both"):
        fit(carry, lambda s, b: (s, {}), lambda d, k: d, chunk_fn=_counter_chunk,
            num_steps=10, progress=False)
    with pytest.raises(ValueError, match="step must be one value"):
        fit(_Carry(jnp.arange(3, dtype=jnp.int32), jnp.zeros(3)), chunk_fn=_counter_chunk,
            num_steps=10, chunk_size=10, steps_per_row=5, progress=False)


def test_batch_norm_running_averages_update_inside_the_gradient():
    """An nnx BatchNorm merged inside the loss updates its running averages (the
    variables of ``rest`` are rebuilt in the gradient's trace); after n steps on data of
    mean 3 the running mean is 3 · (1 − momentumⁿ)."""
    model = nnx.BatchNorm(2, momentum=0.5, rngs=nnx.Rngs(0))
    tx = optax.sgd(0.0)
    state = TrainState.create(model, tx, jax.random.key(0))
    graphdef = state.graphdef

    def loss_fn(params, rest, batch, key):
        bn = nnx.merge(graphdef, params, rest)
        out = bn(batch, use_running_average=False)
        return jnp.mean(out**2), ({}, nnx.split(bn, nnx.Param, ...)[2])

    data = 3.0 + jnp.array([[1.0, -1.0], [-1.0, 1.0]])
    final = fit(state, train_step_fn(loss_fn, tx, updates_rest=True), lambda d, k: d, data,
                num_steps=4, chunk_size=2, progress=False)
    assert_close(final.model().mean[...], np.full(2, 3.0 * (1 - 0.5**4)))
