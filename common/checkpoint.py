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
        meta = self._manager.item_metadata(step)
        meta_tree = getattr(meta, "tree", meta)
        on_disk = _leaf_table(meta_tree, metadata=True)
        wanted = _leaf_table(storable_target)
        missing = sorted(set(wanted) - set(on_disk))
        extra = sorted(set(on_disk) - set(wanted))
        if missing or extra:
            raise ValueError(
                f"checkpoint step {step} in {self.directory} has a different tree structure "
                f"from the restore target: missing on disk {missing[:5]}, "
                f"not in target {extra[:5]}")
        for name, (want_shape, want_dtype) in wanted.items():
            have_shape, have_dtype = on_disk[name]
            if have_shape != want_shape:
                raise ValueError(
                    f"checkpoint step {step}: leaf {name} has shape {have_shape} on disk "
                    f"but {want_shape} in the restore target")
            if have_dtype is not None and have_dtype != want_dtype:
                raise ValueError(
                    f"checkpoint step {step}: leaf {name} has dtype {have_dtype} on disk "
                    f"but {want_dtype} in the restore target")

    def restore(self, target: Any, step: int | None = None) -> Any:
        """Restore step ``step`` (default: the latest) into the structure of ``target``.

        ``target`` supplies structure, shapes, dtypes and shardings (arrays or
        ``jax.ShapeDtypeStruct`` leaves). Raises ``FileNotFoundError`` when there is
        no checkpoint and ``ValueError`` when the stored tree does not match.
        """
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
        restored = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        return _from_storable(restored, target)

    def restore_or(self, target: Any) -> Any:
        """The latest checkpoint restored into ``target``'s structure, or ``target``."""
        if self.latest_step() is None:
            return target
        return self.restore(target)

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
