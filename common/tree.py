"""Pytree helpers shared by the optimizer builder, sharding rules and checkpoints."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax


def path_to_str(path: Sequence[Any]) -> str:
    """A pytree key path as ``"encoder/layers/0/kernel"``.

    Attribute, dict and sequence keys become path parts; the ``.value`` attribute of
    ``nnx.Variable`` leaves is dropped so paths read like module attributes.
    """
    parts = []
    for entry in path:
        if isinstance(entry, jax.tree_util.GetAttrKey):
            if entry.name == "value":
                continue
            parts.append(entry.name)
        elif isinstance(entry, jax.tree_util.DictKey):
            parts.append(str(entry.key))
        elif isinstance(entry, jax.tree_util.SequenceKey):
            parts.append(str(entry.idx))
        elif isinstance(entry, jax.tree_util.FlattenedIndexKey):
            parts.append(str(entry.key))
        else:
            parts.append(str(entry))
    return "/".join(parts)
