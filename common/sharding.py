"""Device meshes and shardings with ``jax.sharding``: data parallel by default,
model-parallel parameters by rule (multi-process start-up and data: ``common.distributed``).

The same jitted train step runs on one device or many: shard the batch along the
mesh's ``data`` axis, place parameters by rule (replicated unless a rule says
otherwise), and let ``jax.jit`` (GSPMD) partition the computation and insert the
gradient all-reduce. No ``pmap``.

Example:
    >>> mesh = make_mesh()                        # all devices on "data"
    >>> state = shard_pytree(state, mesh)         # replicated parameters
    >>> batch = shard_batch(batch, mesh)          # [B, ...] split along "data"
    >>> state, metrics = step(state, batch)       # same step as on one device
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from common.tree import path_to_str

DATA_AXIS = "data"
MODEL_AXIS = "model"


def make_mesh(data: int | None = None, model: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 2D mesh ``(data, model)`` over ``devices`` (default: all devices).

    Args:
      data: size of the ``data`` axis; default ``len(devices) // model``.
      model: size of the ``model`` axis (1 for pure data parallelism).
      devices: the devices to use; default ``jax.devices()``.

    Returns:
      A ``jax.sharding.Mesh`` with axis names ``("data", "model")``.
    """
    devices = list(jax.devices() if devices is None else devices)
    if model < 1 or len(devices) % model:
        raise ValueError(f"model={model} must be >= 1 and divide the {len(devices)} devices")
    if data is None:
        data = len(devices) // model
    if data < 1 or data * model > len(devices):
        raise ValueError(f"data * model = {data} * {model} exceeds the {len(devices)} devices")
    grid = np.asarray(devices[: data * model], dtype=object).reshape(data, model)
    return Mesh(grid, (DATA_AXIS, MODEL_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """Leading axis split along ``data``; the remaining ``ndim - 1`` axes whole."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS, *([None] * (ndim - 1))))


def shard_batch(batch, mesh: Mesh):
    """Place every array of ``batch`` with its leading (batch) axis split along ``data``.

    Raises:
      ValueError: if a leaf is a scalar or its leading dimension is not divisible by
        the size of the ``data`` axis (naming the leaf and both sizes).
    """
    if DATA_AXIS not in mesh.shape:
        raise ValueError(f"shard_batch needs a mesh with a {DATA_AXIS!r} axis (make_mesh); "
                         f"this mesh has axes {tuple(mesh.shape)}")
    size = mesh.shape[DATA_AXIS]

    def place(path, x):
        if np.ndim(x) == 0:
            raise ValueError(f"batch leaf {jax.tree_util.keystr(path) or '<root>'} is a scalar; "
                             "every batch leaf needs a leading batch axis")
        if np.shape(x)[0] == 0:
            raise ValueError(f"batch leaf {jax.tree_util.keystr(path) or '<root>'} is empty "
                             "(leading dimension 0)")
        if np.shape(x)[0] % size:
            raise ValueError(
                f"batch leaf {jax.tree_util.keystr(path) or '<root>'} has leading dimension "
                f"{np.shape(x)[0]}, not divisible by the data axis size {size}")
        return jax.device_put(x, batch_sharding(mesh, np.ndim(x)))

    return jax.tree_util.tree_map_with_path(place, batch)


def param_shardings(tree, mesh: Mesh,
                    rules: Sequence[tuple[str, PartitionSpec]] = ()):
    """A ``NamedSharding`` for every leaf of ``tree``: the first rule whose regex
    matches the leaf's path (``"encoder/layers/0/mlp/kernel"``) gives its
    ``PartitionSpec``; leaves no rule matches are replicated.

    A rule whose spec names more axes than the leaf has dimensions, or splits a
    dimension not divisible by the mesh axis, raises ``ValueError``.

    Example:
        >>> rules = [(r"mlp/.*kernel", PartitionSpec(None, "model"))]
        >>> shardings = param_shardings(state.params, mesh, rules)
    """
    compiled = [(re.compile(pattern), spec) for pattern, spec in rules]

    def pick(path, leaf):
        name = path_to_str(path)
        for regex, spec in compiled:
            if regex.search(name):
                shape = np.shape(leaf)
                if len(spec) > len(shape):
                    raise ValueError(f"sharding rule {regex.pattern!r} gives {spec} to "
                                     f"{name} of shape {shape}: too many axes")
                for dim, axis in zip(shape, spec, strict=False):
                    if axis is not None:
                        names = axis if isinstance(axis, tuple) else (axis,)
                        unknown = [a for a in names if a not in mesh.shape]
                        if unknown:
                            raise ValueError(
                                f"sharding rule {regex.pattern!r} names mesh axis "
                                f"{unknown[0]!r}, which the mesh does not have; its axes: "
                                f"{tuple(mesh.shape)}")
                        parts = int(np.prod([mesh.shape[a] for a in names]))
                        if dim % parts:
                            raise ValueError(
                                f"sharding rule {regex.pattern!r}: {name} dimension {dim} is "
                                f"not divisible by mesh axis {axis} of size {parts}")
                return NamedSharding(mesh, spec)
        return replicated(mesh)

    return jax.tree_util.tree_map_with_path(pick, tree)


def state_shardings(state, mesh: Mesh, rules: Sequence[tuple[str, PartitionSpec]] = ()):
    """Shardings for a whole ``TrainState``: parameters by ``rules``, and the optimizer
    moments of a parameter like the parameter itself (their paths end the same, e.g.
    ``opt_state/0/mu/layers/0/kernel``, so the same regex matches); scalars such as
    the step and counters are replicated."""
    return param_shardings(state, mesh, rules)


def shard_pytree(tree, mesh: Mesh, rules: Sequence[tuple[str, PartitionSpec]] = ()):
    """``device_put`` every leaf of ``tree`` with :func:`param_shardings`."""
    return jax.device_put(tree, param_shardings(tree, mesh, rules))
