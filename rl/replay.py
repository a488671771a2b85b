"""A pure-functional ring replay buffer over pytree transitions.

The buffer is a pytree (:class:`ReplayState`) whose ``storage`` has the structure of
one transition with every leaf given a leading ``[capacity]`` axis, plus a write
position and a fill count. ``init``, ``add``, ``add_batch`` and ``sample`` are pure
functions: they jit, vmap (one buffer per seed) and scan with no host round trip.

* ``add`` writes at ``position`` and advances it modulo ``capacity`` (ring
  overwrite: once full, the oldest transition is replaced).
* ``sample`` draws ``batch_size`` slots uniformly **with replacement** among the
  ``size`` filled ones, ``i ~ U{0, …, size − 1}``, so a slot that has not been
  written is never returned.

A batch larger than the buffer's contents (``batch_size > size``) is refused: called
outside ``jit`` (``size`` concrete) ``sample`` raises ``ValueError``; inside ``jit``
it cannot raise, so every floating-point leaf of the returned batch is filled with
NaN, a poison that any loss turns into a non-finite value (the DDPG trainer checks
its losses and raises on the host). Use :func:`can_sample` to gate updates in-jit.

Example:
    >>> example = {"obs": jnp.zeros(3), "reward": jnp.zeros(())}
    >>> buf = init(example, capacity=1000)
    >>> buf = add(buf, {"obs": jnp.ones(3), "reward": jnp.array(1.0)})
    >>> batch = sample(buf, jax.random.key(0), 4)        # {"obs": [4, 3], "reward": [4]}

Reference: L.-J. Lin, "Self-improving reactive agents based on reinforcement
learning, planning and teaching", Machine Learning 8 (1992) (experience replay);
V. Mnih et al., "Human-level control through deep reinforcement learning", Nature
518 (2015) (uniform replay of the last N transitions).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from common.checks import is_concrete, shape_of

__all__ = ["ReplayState", "add", "add_batch", "can_sample", "init", "sample"]


@struct.dataclass
class ReplayState:
    """The buffer: a pytree, so it lives inside train states and checkpoints.

    Attributes:
      storage: the transition pytree with each leaf ``[capacity, *leaf_shape]``.
      position: int32 scalar, the slot the next ``add`` writes.
      size: int32 scalar, the number of filled slots, ``min(adds, capacity)``.
    """

    storage: Any
    position: jax.Array
    size: jax.Array

    @property
    def capacity(self) -> int:
        """The number of slots (static: the leading size of the storage leaves)."""
        return int(jax.tree.leaves(self.storage)[0].shape[0])


def init(example: Any, capacity: int) -> ReplayState:
    """An empty buffer holding up to ``capacity`` transitions shaped like ``example``.

    Args:
      example: one transition (a pytree of arrays; only shapes and dtypes are used).
      capacity: the number of slots, ``>= 1``.

    Returns:
      A :class:`ReplayState` with zero-filled storage, ``position = size = 0``.

    Example:
        >>> buf = init({"obs": jnp.zeros(3)}, capacity=100)
        >>> buf.storage["obs"].shape
        (100, 3)
    """
    capacity = int(capacity)
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity}")
    leaves = jax.tree.leaves(example)
    if not leaves:
        raise ValueError("example must be a pytree with at least one array leaf")
    storage = jax.tree.map(
        lambda x: jnp.zeros((capacity, *jnp.shape(x)), jnp.result_type(x)), example)
    return ReplayState(storage=storage, position=jnp.zeros((), jnp.int32),
                       size=jnp.zeros((), jnp.int32))


def _check_structure(state: ReplayState, transition: Any, leading: tuple[int, ...],
                     name: str) -> None:
    """Trace-time check that ``transition`` matches the storage (structure, shapes, dtypes)."""
    want = jax.tree.structure(state.storage)
    have = jax.tree.structure(transition)
    if want != have:
        raise ValueError(f"{name} has tree structure {have}, but the buffer stores {want}")
    paths = jax.tree_util.tree_flatten_with_path(state.storage)[0]
    for (path, slot), leaf in zip(paths, jax.tree.leaves(transition), strict=True):
        expected = (*leading, *slot.shape[1:])
        label = jax.tree_util.keystr(path) or "<root>"
        if shape_of(leaf) != expected:
            dims = ", ".join(str(d) for d in expected)
            raise ValueError(f"{name} leaf {label} must have shape [{dims}], "
                             f"got {shape_of(leaf)}")
        if jnp.result_type(leaf) != slot.dtype:
            raise ValueError(f"{name} leaf {label} must have dtype {slot.dtype}, "
                             f"got {jnp.result_type(leaf)}")


def add(state: ReplayState, transition: Any) -> ReplayState:
    """Write one transition at ``position``; ring overwrite once full.

    ``storage[position] ← transition``, ``position ← (position + 1) mod capacity``,
    ``size ← min(size + 1, capacity)``.

    Args:
      state: the buffer.
      transition: a pytree of the buffer's structure, each leaf of the per-slot
        shape and dtype (checked at trace time; the error names the leaf).

    Returns:
      The updated buffer.
    """
    _check_structure(state, transition, (), "transition")
    capacity = state.capacity
    storage = jax.tree.map(lambda s, x: s.at[state.position].set(x), state.storage, transition)
    return ReplayState(storage=storage,
                       position=(state.position + 1) % capacity,
                       size=jnp.minimum(state.size + 1, capacity).astype(jnp.int32))


def add_batch(state: ReplayState, transitions: Any) -> ReplayState:
    """Write ``N`` transitions (leading axis ``[N]``) in order, as ``N`` calls of :func:`add`.

    When ``N > capacity`` only the last ``capacity`` of them survive, exactly as with
    repeated ``add`` (the earlier ones are dropped before the scatter, so no two
    writes target the same slot).

    Args:
      state: the buffer.
      transitions: the buffer's structure with each leaf ``[N, *slot_shape]``.

    Returns:
      The updated buffer.
    """
    leaves = jax.tree.leaves(transitions)
    if not leaves or jnp.ndim(leaves[0]) < 1:
        raise ValueError("transitions must have a leading [N] axis on every leaf")
    n = int(jnp.shape(leaves[0])[0])
    _check_structure(state, transitions, (n,), "transitions")
    capacity = state.capacity
    if n == 0:
        return state
    keep = min(n, capacity)
    skipped = n - keep
    kept = jax.tree.map(lambda x: x[skipped:], transitions)
    slots = (state.position + skipped + jnp.arange(keep)) % capacity  # [keep], distinct
    storage = jax.tree.map(lambda s, x: s.at[slots].set(x), state.storage, kept)
    return ReplayState(storage=storage,
                       position=((state.position + n) % capacity).astype(jnp.int32),
                       size=jnp.minimum(state.size + n, capacity).astype(jnp.int32))


def can_sample(state: ReplayState, batch_size: int) -> jax.Array:
    """Boolean scalar: the buffer holds at least ``batch_size`` transitions."""
    return state.size >= batch_size


def sample(state: ReplayState, key: jax.Array, batch_size: int) -> Any:
    """Draw ``batch_size`` transitions uniformly with replacement from the filled slots.

    ``i_b ~ U{0, …, size − 1}`` independently for ``b = 1..B``; returns
    ``storage[i]``.

    Args:
      state: the buffer.
      key: a PRNG key.
      batch_size: ``B >= 1`` (static).

    Returns:
      The buffer's transition structure with each leaf ``[B, *slot_shape]``.

    Raises:
      ValueError: outside ``jit``, if ``batch_size`` exceeds the filled size (an
        empty buffer included). Inside ``jit`` the same condition yields a batch whose
        floating-point leaves are all NaN (see the module docstring).

    Example:
        >>> batch = sample(buf, jax.random.key(0), 32)
    """
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if is_concrete(state.size) and int(state.size) < batch_size:
        raise ValueError(f"batch_size {batch_size} exceeds the {int(state.size)} transitions "
                         f"in the buffer (capacity {state.capacity}); add more first or "
                         "sample a smaller batch")
    idx = jax.random.randint(key, (batch_size,), 0, jnp.maximum(state.size, 1))  # [B]
    enough = can_sample(state, batch_size)

    def take(s):
        x = s[idx]
        if jnp.issubdtype(s.dtype, jnp.floating):
            x = jnp.where(enough, x, jnp.asarray(np.nan, s.dtype))
        return x

    return jax.tree.map(take, state.storage)
