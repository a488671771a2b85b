"""The train step against a hand-written optax update, the scanned chunk against the
step loop, and the host loop's logging, checkpointing and bitwise resume."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

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

    def loss_fn(params, batch, key):
        model = nnx.merge(state.graphdef, params, state.rest)
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
    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, loss_key)
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
    step = make_train_step(lambda p, b, k: (p["w"] * b, {}), optax.sgd(0.1))
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
