"""Checkpoints through orbax: atomic saves, keep-last-N, restore-latest.

Orbax writes each step into a temporary directory and renames it when complete,
so a run killed mid-save leaves the previous checkpoint intact; a restore only ever
sees finished steps. This wrapper adds what every recipe needs on top:

* typed PRNG keys (``jax.random.key``) are stored as their raw key data and
  re-wrapped on restore, since array checkpoints hold plain dtypes;
* restoring into a state of different structure, shapes or dtypes raises a
  ``ValueError`` naming the first mismatching leaf (orbax would otherwise pad,
  truncate or cast silently), and nothing on disk is touched;
* ``restore_or(state)`` returns the latest checkpoint or ``state`` unchanged, the
  one call a resumable loop needs.

Example:
    >>> ckpt = Checkpointer(run_dir / "checkpoints", max_to_keep=3)
    >>> state = ckpt.restore_or(initial_state)   # resume if anything was saved
    >>> ckpt.save(int(state.step), state)
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp


def _is_typed_key(x) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_storable(tree):
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_typed_key(x) else x, tree)


def _from_storable(restored, target):
    def wrap(r, t):
        if _is_typed_key(t):
            return jax.random.wrap_key_data(r, impl=jax.random.key_impl(t))
        return r

    return jax.tree.map(wrap, restored, target)


def _key_name(entry) -> str:
    for attr in ("name", "key", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def _leaf_table(tree, *, metadata: bool = False) -> dict[str, tuple]:
    """``{"params/kernel/value": (shape, dtype)}`` for a state or orbax metadata tree.

    Paths are normalised to strings so that a dataclass state (attribute keys) and
    its on-disk metadata (dict keys) compare entry by entry.
    """
    is_leaf = (lambda x: hasattr(x, "shape") and hasattr(x, "dtype")) if metadata else None
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]
    table = {}
    for path, leaf in leaves:
        name = "/".join(_key_name(e) for e in path) or "<root>"
        dtype = getattr(leaf, "dtype", None)
        shape = tuple(getattr(leaf, "shape", ()))
        table[name] = (shape, None if dtype is None else np.dtype(dtype))
    return table


class CheckpointMismatch(ValueError):
    """A readable checkpoint whose tree (leaf names, shapes, dtypes) differs from the
    restore target: the model or the config changed since it was written."""


class CheckpointUnreadable(RuntimeError):
    """A checkpoint whose files are damaged or incomplete."""


class Checkpointer:
    """An orbax ``CheckpointManager`` for one pytree (usually a ``TrainState``).

    Args:
      directory: where step folders live (created if missing).
      max_to_keep: keep only the newest N checkpoints (None keeps all).
      async_save: write in a background thread after the device-to-host copy.
    """

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int | None = 3,
                 async_save: bool = True):
        if max_to_keep is not None and max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1 or None, got {max_to_keep}")
        self.directory = os.path.abspath(os.fspath(directory))
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               enable_async_checkpointing=async_save)
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_handlers=ocp.StandardCheckpointHandler())

    def save(self, step: int, state: Any, *, force: bool = False) -> bool:
        """Save ``state`` as step ``step``; returns whether a save was started."""
        return self._manager.save(int(step), args=ocp.args.StandardSave(_to_storable(state)),
                                  force=force)

    def wait(self) -> None:
        """Block until background writes are on disk."""
        self._manager.wait_until_finished()

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def _check_compatible(self, step: int, storable_target) -> None:
        try:
            meta = self._manager.item_metadata(step)
            meta_tree = getattr(meta, "tree", meta)
            on_disk = _leaf_table(meta_tree, metadata=True) if meta_tree is not None else {}
        except Exception as err:  # orbax raises many types on damaged files
            raise CheckpointUnreadable(f"checkpoint step {step} in {self.directory}: its "
                                       f"metadata cannot be read ({err})") from err
        if not on_disk:
            raise CheckpointUnreadable(f"checkpoint step {step} in {self.directory} has no "
                                       "readable metadata (an interrupted or damaged write)")
        wanted = _leaf_table(storable_target)
        missing = sorted(set(wanted) - set(on_disk))
        extra = sorted(set(on_disk) - set(wanted))
        if missing or extra:
            raise CheckpointMismatch(
                f"checkpoint step {step} in {self.directory} has a different tree structure "
                f"from the restore target: missing on disk {missing[:5]}, "
                f"not in target {extra[:5]}")
        for name, (want_shape, want_dtype) in wanted.items():
            have_shape, have_dtype = on_disk[name]
            if have_shape != want_shape:
                raise CheckpointMismatch(
                    f"checkpoint step {step}: leaf {name} has shape {have_shape} on disk "
                    f"but {want_shape} in the restore target")
            if have_dtype is not None and have_dtype != want_dtype:
                raise CheckpointMismatch(
                    f"checkpoint step {step}: leaf {name} has dtype {have_dtype} on disk "
                    f"but {want_dtype} in the restore target")

    def restore(self, target: Any, step: int | None = None) -> Any:
        """Restore step ``step`` (default: the latest) into the structure of ``target``.

        ``target`` supplies structure, shapes, dtypes and shardings (arrays or
        ``jax.ShapeDtypeStruct`` leaves). Raises ``FileNotFoundError`` when there is
        no checkpoint and ``ValueError`` when the stored tree does not match.
        """
        self.wait()
        if step is None:
            step = self.latest_step()
            if step is None:
                raise FileNotFoundError(f"no checkpoint in {self.directory}")
        elif step not in self._manager.all_steps():
            raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory}; "
                                    f"available: {self.all_steps()}")
        storable = _to_storable(target)
        self._check_compatible(step, storable)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, storable)
        try:
            restored = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as err:  # orbax and tensorstore raise many types
            raise CheckpointUnreadable(f"checkpoint step {step} in {self.directory} cannot "
                                       f"be read: {type(err).__name__}: {err}") from err
        return _from_storable(restored, target)

    def restore_or(self, target: Any) -> Any:
        """The newest checkpoint that restores into ``target``'s structure, or ``target``
        when there is none.

        A damaged newer checkpoint (truncated or missing files, say from a machine that
        died mid-write) is skipped with a warning naming it and moved aside to
        ``<step>.unreadable``, so training continues from the newest good one and can
        write that step again.

        Raises:
          CheckpointMismatch: a readable checkpoint of another structure (the model or
            config changed): never silently skipped.
          CheckpointUnreadable: checkpoints exist but none can be read.
        """
        self.wait()  # a save still in flight is not a damaged checkpoint
        steps = sorted(self._manager.all_steps(), reverse=True)
        if not steps:
            return target
        bad: list[tuple[int, CheckpointUnreadable]] = []
        for step in steps:
            try:
                restored = self.restore(target, step)
            except CheckpointUnreadable as err:
                bad.append((step, err))
                continue
            if bad:
                self._set_aside([s for s, _ in bad])
                names = "; ".join(str(err) for _, err in bad)
                warnings.warn(f"resuming from checkpoint step {step}: newer checkpoints "
                              f"could not be read and were moved aside ({names})",
                              stacklevel=2)
            return restored
        raise CheckpointUnreadable(
            f"no checkpoint in {self.directory} can be read (steps {steps}): "
            + "; ".join(str(err) for _, err in bad)
            + "; move the folder away (or run with --fresh) to start over")

    def _set_aside(self, steps: list[int]) -> None:
        """Rename unreadable step folders to ``<step>.unreadable[-k]``, out of orbax's view."""
        from common.distributed import is_primary, sync

        for step in steps if is_primary() else ():  # one process renames, all wait for it
            path = os.path.join(self.directory, str(step))
            target, k = f"{path}.unreadable", 1
            while os.path.exists(target):
                target, k = f"{path}.unreadable-{k}", k + 1
            if os.path.exists(path):
                os.replace(path, target)
        sync(f"jaxatlas-set-aside:{self.directory}")
        self._manager.reload()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
