"""Functional training: a train state, a pure jitted step, and the one host loop.

The pattern is the flax.nnx "functional training loop": split a model once into
``graphdef`` (static structure), ``params`` (the trainable pytree) and ``rest``
(non-trainable variables: batch statistics, frozen statistics, RNG counters); train
with a pure ``jax.jit`` step that merges inside the loss.

* ``TrainState``: params, optimizer state, step, key, the non-trainable ``rest`` and
  optional EMA parameters (a ``flax.struct`` dataclass).
* ``train_step_fn(loss_fn, optimizer)``: the pure step
  ``step(state, batch) -> (state, metrics)``; ``loss_fn(params, rest, batch, key)``
  receives the non-trainable state explicitly, never through a closure.
* ``scan_chunk(step_fn, batch_fn, length)``: ``length`` steps under one ``lax.scan``,
  batches drawn inside the scan from device-resident data.
* ``fit(...)``: **the** host loop, for any state pytree with a ``step`` field (a
  ``TrainState``, or an RL carry holding environment state, a replay buffer and two
  optimizers). Runs chunks up to ``num_steps``, shows a progress bar, writes metrics
  (JSONL + TensorBoard), evaluates, checkpoints and resumes.

Donation. ``fit`` donates the state to every chunk, so a function built *before*
training must not close over arrays of the state (``state.rest`` included): after
the first chunk those buffers are deleted. Loss functions get ``rest`` as an
argument; evaluation functions get the current state.

Randomness: step ``t`` uses ``fold_in(state.key, t)``, so a resumed run draws the
same batches and noise as an uninterrupted one and ends bitwise equal on CPU.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct

from common.checks import check_int
from common.distributed import to_host

LossFn = Callable[[Any, Any, Any, jax.Array], tuple[jax.Array, Any]]
BatchFn = Callable[[Any, jax.Array], Any]
ChunkFn = Callable[[Any, Any], tuple[Any, Mapping[str, jax.Array]]]

__all__ = [
    "Interrupted",
    "TrainState",
    "deferred_interrupts",
    "ema_update",
    "fit",
    "make_train_chunk",
    "make_train_step",
    "scan_chunk",
    "state_step",
    "step_keys",
    "train_step_fn",
]


@struct.dataclass
class TrainState:
    """Everything a training step reads and writes.

    Attributes:
      params: the trainable pytree (an ``nnx.State`` of ``nnx.Param`` for nnx models).
      opt_state: the optax state of ``params``.
      step: int32 scalar, the number of updates applied.
      key: a ``jax.random.key``; step ``t`` derives its randomness from
        ``fold_in(key, t)`` and never changes ``key`` itself.
      rest: non-trainable model state from ``nnx.split`` (RNG counters, running or
        frozen statistics); passed to the loss, updated only by a step built with
        ``updates_rest=True``.
      ema: exponential moving average of ``params`` (same structure), or None when
        the run keeps none; updated by a step built with ``ema_decay``.
      graphdef: static model structure (not a pytree leaf), or None for plain pytrees.
    """

    params: Any
    opt_state: Any
    step: jax.Array
    key: jax.Array
    rest: Any = None
    ema: Any = None
    graphdef: Any = struct.field(pytree_node=False, default=None)

    @classmethod
    def create(cls, params_or_model, optimizer: optax.GradientTransformation,
               key: jax.Array, *, ema: bool = False) -> TrainState:
        """Start training ``params_or_model`` (an ``nnx.Module`` or any pytree) at step 0.

        Args:
          params_or_model: an ``nnx.Module`` (split into graphdef, params, rest) or a
            plain pytree of parameters.
          optimizer: an optax transformation.
          key: a typed key from ``jax.random.key``.
          ema: keep an exponential moving average of the parameters (initialised to
            a copy of them); the step must then be built with ``ema_decay``.
        """
        if not (hasattr(key, "dtype") and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)):
            raise TypeError("key must be a typed key from jax.random.key(seed), "
                            f"got {type(key).__name__} {getattr(key, 'dtype', '')}")
        graphdef, rest = None, None
        if isinstance(params_or_model, nnx.Module):
            graphdef, params, rest = nnx.split(params_or_model, nnx.Param, ...)
        else:
            params = params_or_model
        return cls(params=params, opt_state=optimizer.init(params),
                   step=jnp.zeros((), jnp.int32), key=key, rest=rest,
                   ema=jax.tree.map(jnp.copy, params) if ema else None, graphdef=graphdef)

    def model(self, *, ema: bool = False) -> nnx.Module:
        """The nnx model with the current parameters, or with the EMA ones (``ema=True``).

        Only for states made from a model."""
        if self.graphdef is None:
            raise ValueError("this TrainState was created from a plain pytree; it has no model")
        return nnx.merge(self.graphdef, self.eval_params(ema=ema), self.rest)

    def eval_params(self, *, ema: bool = False):
        """``params``, or the EMA parameters with ``ema=True`` (refused if there are none)."""
        if not ema:
            return self.params
        if self.ema is None:
            raise ValueError("this TrainState keeps no EMA parameters; create it with "
                             "TrainState.create(..., ema=True)")
        return self.ema


def ema_update(ema, params, decay):
    """One EMA step: ``ema ← decay · ema + (1 − decay) · params`` leaf by leaf.

    Args:
      ema, params: pytrees of the same structure.
      decay: scalar in ``[0, 1)``; 0 copies ``params``.
    """
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def state_step(state) -> int:
    """The step of a state as a Python int; for a batched state (``step [S]``, e.g.
    vmapped seeds) every entry must agree."""
    steps = to_host(state.step).reshape(-1)
    if steps.size == 0 or not np.all(steps == steps[0]):
        raise ValueError(f"state.step must be one value (or equal across a batch), got {steps}")
    return int(steps[0])


def step_keys(state: TrainState) -> tuple[jax.Array, jax.Array]:
    """``(batch_key, loss_key)`` for the step about to be taken: split of fold_in(key, step)."""
    batch_key, loss_key = jax.random.split(jax.random.fold_in(state.key, state.step))
    return batch_key, loss_key


def train_step_fn(loss_fn: LossFn, optimizer: optax.GradientTransformation, *,
                  ema_decay: float | None = None, updates_rest: bool = False):
    """The un-jitted pure step: gradient of ``loss_fn``, one optax update.

    Args:
      loss_fn: ``loss_fn(params, rest, batch, key) -> (loss, metrics)`` with a scalar
        loss and a dict of scalar metrics; ``rest`` is ``state.rest`` (the model's
        non-trainable variables, None for plain pytrees). With ``updates_rest`` it
        returns ``(loss, (metrics, new_rest))`` instead (batch-norm statistics).
      optimizer: an optax transformation (from ``common.optim.build_optimizer``).
      ema_decay: update ``state.ema`` with this decay after each step (the state must
        be created with ``ema=True``); None leaves a state without EMA.
      updates_rest: the loss returns the new non-trainable state.

    Returns:
      ``step(state, batch) -> (state, metrics)``; metrics gain ``loss`` and
      ``grad_norm`` (global L2 norm before the optimizer).

    Example:
        >>> def loss_fn(params, rest, batch, key):
        ...     pred = nnx.merge(graphdef, params, rest)(batch["x"])
        ...     return jnp.mean((pred - batch["y"]) ** 2), {}
        >>> step = jax.jit(train_step_fn(loss_fn, optax.adam(1e-3), ema_decay=0.999))
    """
    if ema_decay is not None and not 0.0 <= float(ema_decay) < 1.0:
        raise ValueError(f"ema_decay must lie in [0, 1), got {ema_decay}")

    def step(state: TrainState, batch) -> tuple[TrainState, dict[str, jax.Array]]:
        if (state.ema is None) != (ema_decay is None):
            raise ValueError(
                "the state keeps EMA parameters but the step has no ema_decay"
                if ema_decay is None else
                "ema_decay is set but the state keeps no EMA parameters; create it with "
                "TrainState.create(..., ema=True)")
        _, loss_key = step_keys(state)
        (loss, aux), grads = jax.value_and_grad(_fresh_rest(loss_fn), has_aux=True)(
            state.params, state.rest, batch, loss_key)
        metrics, rest = aux if updates_rest else (aux, state.rest)
        if jnp.ndim(loss) != 0:
            raise ValueError(f"loss_fn must return a scalar loss, got shape {jnp.shape(loss)}")
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = None if ema_decay is None else ema_update(state.ema, params, ema_decay)
        metrics = dict(metrics)
        metrics["loss"] = loss
        metrics["grad_norm"] = optax.tree_utils.tree_norm(grads)
        return state.replace(params=params, opt_state=opt_state, step=state.step + 1,
                             rest=rest, ema=ema), metrics

    return step


def _fresh_rest(loss_fn: LossFn) -> LossFn:
    """``loss_fn`` with ``rest`` rebuilt inside the differentiated function.

    ``jax.value_and_grad`` passes the non-differentiated ``rest`` through unchanged, so
    nnx variables in it belong to the enclosing trace, and a model merged from them
    inside the gradient cannot update them (batch norm's running averages raise
    ``TraceContextError``). Unflattening ``rest`` here makes variables of the
    gradient's own trace; for plain arrays it changes nothing.
    """

    def wrapped(params, rest, batch, key):
        return loss_fn(params, jax.tree.map(lambda leaf: leaf, rest), batch, key)

    return wrapped


def _jit_kwargs(donate: bool, state_shardings, input_shardings) -> dict:
    """jit keyword arguments: donation, and the state's sharding pinned on the way in
    and out so parameters keep the layout asked for (``common.sharding``)."""
    kwargs: dict = {"donate_argnums": (0,) if donate else ()}
    if state_shardings is not None:
        kwargs["in_shardings"] = (state_shardings, input_shardings)
        kwargs["out_shardings"] = (state_shardings, None)
    return kwargs


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, *,
                    donate: bool = True, state_shardings=None, batch_shardings=None,
                    ema_decay: float | None = None, updates_rest: bool = False):
    """``jax.jit`` of :func:`train_step_fn`, with the incoming state donated.

    Args:
      loss_fn, optimizer, ema_decay, updates_rest: as in :func:`train_step_fn`.
      donate: donate the incoming state's buffers to the new state.
      state_shardings: optional pytree of ``NamedSharding`` matching the state
        (``common.sharding.state_shardings``); the step then keeps that layout.
      batch_shardings: shardings of the batch (default: let jit follow the inputs).

    Example:
        >>> step = make_train_step(loss_fn, build_optimizer(name="adam"))
        >>> state, metrics = step(state, batch)
    """
    return jax.jit(train_step_fn(loss_fn, optimizer, ema_decay=ema_decay,
                                 updates_rest=updates_rest),
                   **_jit_kwargs(donate, state_shardings, batch_shardings))


def scan_chunk(step_fn, batch_fn: BatchFn, length: int) -> ChunkFn:
    """``length`` steps of ``step_fn`` under one ``lax.scan`` (un-jitted).

    Args:
      step_fn: ``step(state, batch) -> (state, metrics)``.
      batch_fn: ``batch_fn(data, key) -> batch``, drawing one batch from the
        device-resident ``data`` with the step's batch key (pure, jittable).
      length: steps per chunk (>= 1).

    Returns:
      ``chunk(state, data) -> (state, metrics)`` with every metric stacked ``[length]``.
    """
    check_int(length, "length", 1)

    def chunk(state: TrainState, data):
        def body(state, _):
            batch_key, _ = step_keys(state)
            return step_fn(state, batch_fn(data, batch_key))

        return jax.lax.scan(body, state, None, length=length)

    return chunk


def make_train_chunk(step_fn, batch_fn: BatchFn, length: int, *, donate: bool = True,
                     state_shardings=None, data_shardings=None):
    """``jax.jit`` of :func:`scan_chunk` with the state donated.

    Args:
      step_fn, batch_fn, length: as in :func:`scan_chunk`.
      donate: donate the incoming state's buffers.
      state_shardings, data_shardings: optional shardings pinned on the jit, as in
        :func:`make_train_step`.

    Returns:
      ``chunk(state, data) -> (state, metrics)`` with every metric stacked ``[length]``.
    """
    return jax.jit(scan_chunk(step_fn, batch_fn, length),
                   **_jit_kwargs(donate, state_shardings, data_shardings))


def _chunk_end(step: int, chunk_size: int, num_steps: int, every: tuple[int | None, ...]) -> int:
    """End of the chunk starting at ``step``: the next multiple of chunk_size or a
    checkpoint/eval boundary, whichever comes first. Boundaries are absolute, so a
    resumed run splits the remaining steps exactly as an uninterrupted one."""
    end = min(num_steps, (step // chunk_size + 1) * chunk_size)
    for period in every:
        if period:
            end = min(end, (step // period + 1) * period)
    return end


def fit(state, step_fn=None, batch_fn: BatchFn | None = None, data=None, *, num_steps: int,
        chunk_size: int = 100, chunk_fn: Callable[[int], ChunkFn] | None = None,
        steps_per_row: int = 1, on_chunk: Callable[[Any, int], Mapping | None] | None = None,
        state_shardings=None, data_shardings=None, logger=None, checkpointer=None,
        checkpoint_every: int | None = None, eval_fn: Callable[[Any], dict] | None = None,
        eval_every: int | None = None, progress: bool = True, desc: str = "train",
        progress_keys: tuple[str, ...] | None = None, history: list | None = None):
    """Train until ``state.step == num_steps``, resuming from ``checkpointer`` if it has
    a checkpoint. The one host loop of the project.

    The work between two host visits is a *chunk*: by default ``scan_chunk(step_fn,
    batch_fn, length)``; any other loop (an RL carry stepping environments and
    updating two networks) passes ``chunk_fn`` instead.

    Args:
      state: the initial state, any pytree with a ``step`` field (also the restore
        target's structure). A batched ``step [S]`` (vmapped seeds) must agree across
        the batch.
      step_fn: un-jitted step, e.g. ``train_step_fn(loss_fn, optimizer)`` (with
        ``batch_fn``; not with ``chunk_fn``).
      batch_fn: ``batch_fn(data, key) -> batch``.
      data: device-resident pytree passed to every chunk.
      num_steps: total steps of the run (not the remaining ones).
      chunk_size: steps per host call.
      chunk_fn: ``chunk_fn(length) -> chunk(state, data) -> (state, metrics)``,
        un-jitted; ``fit`` jits it with the state donated. Every metric is stacked
        ``[length // steps_per_row]`` (one row per ``steps_per_row`` steps).
      steps_per_row: steps between metric rows; chunk, checkpoint and eval
        boundaries and ``num_steps`` must be multiples of it.
      on_chunk: ``on_chunk(state, step) -> {name: float} | None`` after every chunk,
        before the checkpoint: raise to stop (the chunk is then not saved), return
        extra metrics to log at ``step``.
      state_shardings, data_shardings: shardings pinned on the chunk's jit
        (``common.sharding.state_shardings``), so parameters keep their layout.
      logger: a ``common.metrics.MetricsWriter`` or None; every row goes to it.
      checkpointer: a ``common.checkpoint.Checkpointer`` or None.
      checkpoint_every: save every this many steps (and at the end, and on Ctrl-C).
      eval_fn: ``eval_fn(state) -> {name: float}``, run every ``eval_every`` steps
        and at the end; logged with an ``eval/`` prefix.
      progress: show a tqdm bar (in steps) with the latest metrics.
      desc: the progress bar's label.
      progress_keys: the metrics the bar shows (default: ``loss`` and the first two
        others), so that it stays readable in an 80-column terminal.
      history: if given, a list that receives ``(step, metrics)`` tuples.

    Returns:
      The final state.

    Raises:
      Interrupted: (a ``KeyboardInterrupt``) on Ctrl-C: the first Ctrl-C stops at the
        end of the running chunk, logs it, evaluates if due and checkpoints; a second
        one stops at once, keeping the last completed chunk. ``saved_step`` says where
        the next run resumes.
      FloatingPointError: when a chunk's ``loss`` is not finite (naming the step),
        before that chunk is checkpointed.
    """
    check_int(num_steps, "num_steps", 0)
    check_int(chunk_size, "chunk_size", 1)
    check_int(steps_per_row, "steps_per_row", 1)
    for name, value in (("num_steps", num_steps), ("chunk_size", chunk_size),
                        ("checkpoint_every", checkpoint_every), ("eval_every", eval_every)):
        if value is not None and value % steps_per_row:
            raise ValueError(f"{name} ({value}) must be a multiple of steps_per_row "
                             f"({steps_per_row})")
    if chunk_fn is None:
        if step_fn is None or batch_fn is None:
            raise ValueError("fit needs step_fn and batch_fn, or chunk_fn")
        chunk_fn = lambda length: scan_chunk(step_fn, batch_fn, length)
    elif step_fn is not None or batch_fn is not None:
        raise ValueError("pass either chunk_fn or step_fn and batch_fn, not both")
    if checkpointer is not None:
        state = checkpointer.restore_or(state)
    step = state_step(state)
    if step > num_steps:
        raise ValueError(f"restored state is at step {step}, beyond num_steps={num_steps}")
    eval_due = (eval_fn is not None and bool(eval_every) and 0 < step < num_steps
                and step % eval_every == 0)  # an evaluation a stop may have cut short
    if logger is not None and hasattr(logger, "truncate"):
        # rows a stopped run wrote after its last checkpoint (and the evaluation at it,
        # which runs again below) would otherwise appear twice
        logger.truncate(step, eval_at_step=eval_due)
    jit_kwargs = _jit_kwargs(True, state_shardings, data_shardings)
    chunks: dict[int, Callable] = {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_steps, initial=step, desc=desc, dynamic_ncols=True, leave=False)
    saved_at = step
    logged = [step]  # the last step whose metrics were written (a cell, see _log_rows)
    metrics, chunk_start = None, step
    with deferred_interrupts() as interrupts:
        try:
            if eval_due:
                _run_eval(eval_fn, state, step, logger, history)
            while step < num_steps:
                end = _chunk_end(step, chunk_size, num_steps, (checkpoint_every, eval_every))
                length = end - step
                if length not in chunks:
                    chunks[length] = jax.jit(chunk_fn(length), **jit_kwargs)
                chunk_start = step
                state, metrics = chunks[length](state, data)
                last = _log_rows(metrics, chunk_start, steps_per_row, logged, logger, history)
                step = end
                _check_finite_loss(metrics, chunk_start, steps_per_row)
                if bar is not None:
                    bar.update(length)
                    bar.set_postfix(_progress_items(last, progress_keys), refresh=False)
                if on_chunk is not None:
                    _log_extra(on_chunk(state, step), step, logger, history)
                if (eval_fn is not None and eval_every
                        and (step % eval_every == 0 or step == num_steps)):
                    _run_eval(eval_fn, state, step, logger, history)
                if checkpointer is not None and checkpoint_every and step % checkpoint_every == 0:
                    checkpointer.save(step, state)
                    saved_at = step
                if interrupts.requested and step < num_steps:
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            # Keep what the device finished: the rest of the chunk's metrics, then the
            # state. The step label comes from the state itself; a state whose buffers
            # were already donated to a chunk still in flight is skipped (the last
            # checkpoint stands).
            if not _donated(state) and state_step(state) > logged[0] and metrics is not None:
                _log_rows(metrics, chunk_start, steps_per_row, logged, logger, history)
            if checkpointer is not None and not _donated(state) and state_step(state) != saved_at:
                checkpointer.save(state_step(state), state, force=True)
                saved_at = state_step(state)
            if checkpointer is not None:
                checkpointer.wait()
            raise Interrupted(saved_at if checkpointer is not None else None) from None
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


class Interrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C; ``saved_step`` is the step of the last checkpoint
    written (None without a checkpointer). Running the same code again resumes."""

    def __init__(self, saved_step: int | None):
        super().__init__(saved_step)
        self.saved_step = saved_step


class _InterruptFlag:
    """Set by the deferred SIGINT handler (see :func:`deferred_interrupts`)."""

    def __init__(self):
        self.requested = False


@contextlib.contextmanager
def deferred_interrupts():
    """Turn the first Ctrl-C into a request that ``fit`` honours at the next chunk
    boundary (after logging and checkpointing), so an interrupt never lands inside an
    XLA compilation or a donated step; a second Ctrl-C interrupts at once.

    Active only in the main thread; nested uses share the outer flag. Yields the flag
    (``.requested``).
    """
    current = signal.getsignal(signal.SIGINT)
    outer = getattr(current, "interrupt_flag", None)
    if outer is not None or threading.current_thread() is not threading.main_thread():
        yield outer or _InterruptFlag()
        return
    flag = _InterruptFlag()

    def handler(signum, frame):
        if flag.requested:
            raise KeyboardInterrupt
        flag.requested = True
        print("\ninterrupt: stopping after the current chunk (Ctrl-C again to stop now)",
              file=sys.stderr, flush=True)

    handler.interrupt_flag = flag
    signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, current)


def _progress_items(row: Mapping[str, float], keys) -> dict[str, str]:
    if keys is None:
        keys = ["loss", *[k for k in row if k != "loss"][:2]]
    return {k: f"{row[k]:.4g}" for k in keys if k in row}


def _check_finite_loss(metrics, first_step: int, steps_per_row: int) -> None:
    """Raise ``FloatingPointError`` naming the first step whose ``loss`` is not finite
    (checked before the chunk is checkpointed, so a diverged state is never saved)."""
    if "loss" not in metrics:
        return
    loss = to_host(metrics["loss"])
    bad = np.flatnonzero(~np.isfinite(loss))
    if bad.size:
        raise FloatingPointError(
            f"non-finite loss {loss[bad[0]]} at step {first_step + (bad[0] + 1) * steps_per_row}; "
            "the state of this chunk was not checkpointed (lower the learning rate, check the "
            "data, or look for invalid inputs: bad traced values are poisoned with NaN)")


def _log_rows(metrics, first_step: int, steps_per_row: int, logged: list[int], logger,
              history) -> dict:
    """Write the rows of a chunk's stacked metrics that are not written yet.

    Row ``i`` is labelled ``first_step + (i + 1) · steps_per_row``. ``logged[0]`` is
    advanced row by row, so an interrupted call can be repeated without losing or
    duplicating rows. Returns the chunk's last row.
    """
    host = to_host(dict(metrics))  # gathered across processes where a metric spans them
    if not host:
        return {}
    length = len(next(iter(host.values())))
    row = {}
    for i in range(length):
        row = {k: float(v[i]) for k, v in host.items()}
        step = first_step + (i + 1) * steps_per_row
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


def _log_extra(result, step, logger, history):
    if not result:
        return
    result = {k: float(v) for k, v in result.items()}
    if logger is not None:
        logger.write(step, result)
    if history is not None:
        history.append((step, result))


def _run_eval(eval_fn, state, step, logger, history):
    t0 = time.perf_counter()
    result = {f"eval/{k}": float(v) for k, v in eval_fn(state).items()}
    result["eval/seconds"] = time.perf_counter() - t0
    _log_extra(result, step, logger, history)
