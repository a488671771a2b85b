"""Functional training: a train state, a pure jitted step, and a scanned host loop.

The pattern is the flax.nnx "functional training loop": split a model once into
``graphdef`` (static structure) and ``params`` (a pytree), train the pytree with a
pure ``jax.jit`` step, merge inside the loss when the model is needed.

* ``TrainState``: params, optimizer state, step and key (a ``flax.struct`` dataclass).
* ``make_train_step(loss_fn, optimizer)``: ``step(state, batch) -> (state, metrics)``,
  jitted with the state donated.
* ``make_train_chunk(step, batch_fn, length)``: ``length`` steps under one
  ``lax.scan``, the batches drawn inside the scan from device-resident data, so the
  host is visited once per chunk.
* ``fit(...)``: the host loop. Runs chunks up to ``num_steps``, shows a progress bar,
  writes metrics (JSONL + TensorBoard), checkpoints every ``checkpoint_every`` steps
  and on interruption, and resumes from the latest checkpoint.

Randomness: step ``t`` uses ``fold_in(state.key, t)``, so a resumed run draws the
same batches and noise as an uninterrupted one and ends bitwise equal on CPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct

LossFn = Callable[[Any, Any, jax.Array], tuple[jax.Array, Mapping[str, jax.Array]]]
BatchFn = Callable[[Any, jax.Array], Any]


@struct.dataclass
class TrainState:
    """Everything a training step reads and writes.

    Attributes:
      params: the trainable pytree (an ``nnx.State`` of ``nnx.Param`` for nnx models).
      opt_state: the optax state of ``params``.
      step: int32 scalar, the number of updates applied.
      key: a ``jax.random.key``; step ``t`` derives its randomness from
        ``fold_in(key, t)`` and never changes ``key`` itself.
      graphdef: static model structure (not a pytree leaf), or None for plain pytrees.
      rest: non-trainable model state from ``nnx.split`` (RNG counters, running
        statistics), carried along unchanged by the default step.
    """

    params: Any
    opt_state: Any
    step: jax.Array
    key: jax.Array
    rest: Any = None
    graphdef: Any = struct.field(pytree_node=False, default=None)

    @classmethod
    def create(cls, params_or_model, optimizer: optax.GradientTransformation,
               key: jax.Array) -> TrainState:
        """Start training ``params_or_model`` (an ``nnx.Module`` or any pytree) at step 0."""
        if not (hasattr(key, "dtype") and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)):
            raise TypeError("key must be a typed key from jax.random.key(seed), "
                            f"got {type(key).__name__} {getattr(key, 'dtype', '')}")
        graphdef, rest = None, None
        if isinstance(params_or_model, nnx.Module):
            graphdef, params, rest = nnx.split(params_or_model, nnx.Param, ...)
        else:
            params = params_or_model
        return cls(params=params, opt_state=optimizer.init(params),
                   step=jnp.zeros((), jnp.int32), key=key, rest=rest, graphdef=graphdef)

    def model(self) -> nnx.Module:
        """The nnx model with the current parameters (only for states made from a model)."""
        if self.graphdef is None:
            raise ValueError("this TrainState was created from a plain pytree; it has no model")
        return nnx.merge(self.graphdef, self.params, self.rest)


def step_keys(state: TrainState) -> tuple[jax.Array, jax.Array]:
    """``(batch_key, loss_key)`` for the step about to be taken: split of fold_in(key, step)."""
    batch_key, loss_key = jax.random.split(jax.random.fold_in(state.key, state.step))
    return batch_key, loss_key


def train_step_fn(loss_fn: LossFn, optimizer: optax.GradientTransformation):
    """The un-jitted pure step: gradient of ``loss_fn``, one optax update.

    Args:
      loss_fn: ``loss_fn(params, batch, key) -> (loss, metrics)`` with a scalar loss
        and a dict of scalar metrics.
      optimizer: an optax transformation (from ``common.optim.build_optimizer``).

    Returns:
      ``step(state, batch) -> (state, metrics)``; metrics gain ``loss`` and
      ``grad_norm`` (global L2 norm before the optimizer).
    """

    def step(state: TrainState, batch) -> tuple[TrainState, dict[str, jax.Array]]:
        _, loss_key = step_keys(state)
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, batch, loss_key)
        if jnp.ndim(loss) != 0:
            raise ValueError(f"loss_fn must return a scalar loss, got shape {jnp.shape(loss)}")
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics)
        metrics["loss"] = loss
        metrics["grad_norm"] = optax.tree_utils.tree_norm(grads)
        return state.replace(params=params, opt_state=opt_state, step=state.step + 1), metrics

    return step


def _sharding_kwargs(state_shardings, input_shardings) -> dict:
    """jit keyword arguments pinning the state's sharding on the way in and out, so
    parameters keep the layout asked for (``common.sharding.state_shardings``)."""
    if state_shardings is None:
        return {}
    return {"in_shardings": (state_shardings, input_shardings),
            "out_shardings": (state_shardings, None)}


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, *,
                    donate: bool = True, state_shardings=None, batch_shardings=None):
    """``jax.jit`` of :func:`train_step_fn`, with the incoming state donated.

    Args:
      loss_fn, optimizer: as in :func:`train_step_fn`.
      donate: donate the incoming state's buffers to the new state.
      state_shardings: optional pytree of ``NamedSharding`` matching the state
        (``common.sharding.state_shardings``); the step then keeps that layout.
      batch_shardings: shardings of the batch (default: let jit follow the inputs).

    Example:
        >>> step = make_train_step(loss_fn, build_optimizer(name="adam"))
        >>> state, metrics = step(state, batch)
    """
    return jax.jit(train_step_fn(loss_fn, optimizer), donate_argnums=(0,) if donate else (),
                   **_sharding_kwargs(state_shardings, batch_shardings))


def make_train_chunk(step_fn, batch_fn: BatchFn, length: int, *, donate: bool = True,
                     state_shardings=None, data_shardings=None):
    """``length`` training steps inside one jitted ``lax.scan``.

    Args:
      step_fn: an un-jitted ``step(state, batch) -> (state, metrics)``.
      batch_fn: ``batch_fn(data, key) -> batch``, drawing one batch from the
        device-resident ``data`` with the step's batch key (pure, jittable).
      length: steps per chunk (>= 1).
      donate: donate the incoming state's buffers.
      state_shardings, data_shardings: optional shardings pinned on the jit, as in
        :func:`make_train_step`.

    Returns:
      ``chunk(state, data) -> (state, metrics)`` with every metric stacked ``[length]``.
    """
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")

    def chunk(state: TrainState, data):
        def body(state, _):
            batch_key, _ = step_keys(state)
            return step_fn(state, batch_fn(data, batch_key))

        return jax.lax.scan(body, state, None, length=length)

    return jax.jit(chunk, donate_argnums=(0,) if donate else (),
                   **_sharding_kwargs(state_shardings, data_shardings))


def _chunk_end(step: int, chunk_size: int, num_steps: int, every: tuple[int | None, ...]) -> int:
    """End of the chunk starting at ``step``: the next multiple of chunk_size or a
    checkpoint/eval boundary, whichever comes first. Boundaries are absolute, so a
    resumed run splits the remaining steps exactly as an uninterrupted one."""
    end = min(num_steps, (step // chunk_size + 1) * chunk_size)
    for period in every:
        if period:
            end = min(end, (step // period + 1) * period)
    return end


def fit(state: TrainState, step_fn, batch_fn: BatchFn, data, *, num_steps: int,
        chunk_size: int = 100, logger=None, checkpointer=None,
        checkpoint_every: int | None = None, eval_fn: Callable[[TrainState], dict] | None = None,
        eval_every: int | None = None, progress: bool = True, desc: str = "train",
        history: list | None = None) -> TrainState:
    """Train until ``state.step == num_steps``, resuming from ``checkpointer`` if it has
    a checkpoint.

    Args:
      state: the initial state (also the restore target's structure).
      step_fn: un-jitted step, e.g. ``train_step_fn(loss_fn, optimizer)``.
      batch_fn: ``batch_fn(data, key) -> batch``.
      data: device-resident dataset pytree passed to every chunk.
      num_steps: total steps of the run (not the remaining ones).
      chunk_size: steps per host call (one ``lax.scan``).
      logger: a ``common.metrics.MetricsWriter`` or None; every step's metrics go to it.
      checkpointer: a ``common.checkpoint.Checkpointer`` or None.
      checkpoint_every: save every this many steps (and at the end, and on Ctrl-C).
      eval_fn: ``eval_fn(state) -> {name: float}``, run every ``eval_every`` steps
        and at the end; logged with an ``eval/`` prefix.
      progress: show a tqdm bar with the latest metrics.
      history: if given, a list that receives ``(step, metrics)`` tuples.

    Returns:
      The final state. Interrupting (KeyboardInterrupt) saves a checkpoint at the last
      completed chunk and re-raises.
    """
    if num_steps < 0 or chunk_size < 1:
        raise ValueError(f"need num_steps >= 0 and chunk_size >= 1, got {num_steps}, "
                         f"{chunk_size}")
    if checkpointer is not None:
        state = checkpointer.restore_or(state)
    step = int(state.step)
    if step > num_steps:
        raise ValueError(f"restored state is at step {step}, beyond num_steps={num_steps}")
    chunks: dict[int, Callable] = {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_steps, initial=step, desc=desc, dynamic_ncols=True, leave=False)
    saved_at = step
    logged = [step]  # the last step whose metrics were written (a cell, see _log_rows)
    metrics, chunk_start = None, step
    try:
        while step < num_steps:
            end = _chunk_end(step, chunk_size, num_steps, (checkpoint_every, eval_every))
            length = end - step
            if length not in chunks:
                chunks[length] = make_train_chunk(step_fn, batch_fn, length)
            chunk_start = step
            state, metrics = chunks[length](state, data)
            last = _log_rows(metrics, chunk_start, logged, logger, history)
            step = end
            if bar is not None:
                bar.update(length)
                bar.set_postfix({k: f"{v:.4g}" for k, v in last.items()})
            if eval_fn is not None and eval_every and (step % eval_every == 0 or step == num_steps):
                _run_eval(eval_fn, state, step, logger, history)
            if checkpointer is not None and checkpoint_every and step % checkpoint_every == 0:
                checkpointer.save(step, state)
                saved_at = step
    except KeyboardInterrupt:
        # Keep what the device finished: the rest of the chunk's metrics, then the state.
        # The step label comes from the state itself; a state whose buffers were already
        # donated to a chunk still in flight is skipped (the last checkpoint stands).
        if not _donated(state) and int(state.step) > logged[0] and metrics is not None:
            _log_rows(metrics, chunk_start, logged, logger, history)
        if checkpointer is not None and not _donated(state) and int(state.step) != saved_at:
            checkpointer.save(int(state.step), state, force=True)
            checkpointer.wait()
        raise
    finally:
        if bar is not None:
            bar.close()
    if eval_fn is not None and not eval_every:
        _run_eval(eval_fn, state, step, logger, history)
    if checkpointer is not None:
        if saved_at != step or checkpointer.latest_step() != step:
            checkpointer.save(step, state, force=True)
        checkpointer.wait()
    return state


def _log_rows(metrics, first_step: int, logged: list[int], logger, history) -> dict:
    """Write the per-step rows of a chunk's stacked metrics that are not written yet.

    ``logged[0]`` is advanced row by row, so an interrupted call can be repeated
    without losing or duplicating rows. Returns the chunk's last row.
    """
    host = {k: np.asarray(v) for k, v in jax.device_get(metrics).items()}
    length = len(next(iter(host.values())))
    row = {}
    for i in range(length):
        row = {k: float(v[i]) for k, v in host.items()}
        step = first_step + i + 1
        if step <= logged[0]:
            continue
        if logger is not None:
            logger.write(step, row)
        if history is not None:
            history.append((step, row))
        logged[0] = step
    return row


def _donated(tree) -> bool:
    return any(getattr(x, "is_deleted", lambda: False)() for x in jax.tree.leaves(tree))


def _run_eval(eval_fn, state, step, logger, history):
    t0 = time.perf_counter()
    result = {f"eval/{k}": float(v) for k, v in eval_fn(state).items()}
    result["eval/seconds"] = time.perf_counter() - t0
    if logger is not None:
        logger.write(step, result)
    if history is not None:
        history.append((step, result))
