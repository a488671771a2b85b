"""Multi-process runs: one program, many processes, each owning a few devices.

On a TPU pod slice or a multi-node GPU cluster every host runs the same program;
``jax.distributed.initialize`` joins them and ``jax.devices()`` then lists the devices
of *all* processes, of which ``jax.local_devices()`` are this process's own. A global
``jax.Array`` spans them all; each process holds (and can read) only its addressable
shards. The rules jaxatlas follows, whatever the process count:

* every process runs the same jitted code on global arrays (meshes from
  ``common.sharding.make_mesh`` cover all devices);
* each process loads or generates only its rows of the data and builds the global
  array with :func:`global_batch` (``jax.make_array_from_process_local_data``);
  arrays every process can compute whole (initial parameters from a seed, a small
  evaluation set) are placed with :func:`global_array`;
* results come back to every process with :func:`to_host` (an all-gather when the
  array spans processes);
* only the primary process (:func:`is_primary`) writes metrics, figures and
  summaries; checkpoints are written and restored by all processes together (orbax
  coordinates them);
* choices made on one process (a new run folder's name) reach the others through
  :func:`broadcast_text`.

On one process all of these reduce to the single-host behaviour, so recipes need
no branches. Local multi-process runs (2 processes × 4 simulated CPU devices, gloo
collectives) are started by ``jaxatlas launch`` (``common.launch``).

Example:
    >>> initialize_distributed()          # no-op on one host; reads the cluster's environment
    >>> mesh = make_mesh()                # all devices of all processes
    >>> rows = process_rows(len(x), mesh) # this process's slice of the data
    >>> xs = global_batch(x[rows], mesh)  # one global array [N, ...] split along "data"
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from common.sharding import DATA_AXIS, batch_sharding

__all__ = [
    "broadcast_text",
    "global_array",
    "global_batch",
    "initialize_distributed",
    "is_primary",
    "process_rows",
    "sync",
    "to_host",
]

# Set by the cluster managers that jax.distributed.initialize() auto-detects.
_CLUSTER_VARIABLES = ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES",
                      "MEGASCALE_COORDINATOR_ADDRESS")
_initialized = False


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None, **kwargs) -> bool:
    """Start multi-process JAX (``jax.distributed.initialize``) when there is more than
    one process; a no-op returning False on a single host.

    With no arguments JAX auto-detects the cluster (Cloud TPU, SLURM, Open MPI,
    Kubernetes) when its variables are set; the arguments override it. Environment
    overrides (what ``jaxatlas launch`` sets): ``JAXATLAS_COORDINATOR``,
    ``JAXATLAS_NUM_PROCESSES``, ``JAXATLAS_PROCESS_ID``; with
    ``JAXATLAS_CPU_COLLECTIVES=gloo`` CPU devices of different processes exchange data
    through gloo. Call once per process, before any other JAX computation; a second
    call is a no-op.

    Returns:
      True if the distributed runtime is (now) initialised.
    """
    global _initialized
    if _initialized:
        return True
    coordinator_address = coordinator_address or os.environ.get("JAXATLAS_COORDINATOR")
    if num_processes is None and "JAXATLAS_NUM_PROCESSES" in os.environ:
        num_processes = int(os.environ["JAXATLAS_NUM_PROCESSES"])
    if process_id is None and "JAXATLAS_PROCESS_ID" in os.environ:
        process_id = int(os.environ["JAXATLAS_PROCESS_ID"])
    explicit = coordinator_address is not None or (num_processes or 1) > 1
    cluster_env = any(v in os.environ for v in _CLUSTER_VARIABLES)
    if not explicit and not cluster_env:
        return False
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"process_id must lie in [0, {num_processes}), got {process_id}")
    collectives = os.environ.get("JAXATLAS_CPU_COLLECTIVES")
    if collectives:
        jax.config.update("jax_cpu_collectives_implementation", collectives)
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id, **kwargs)
    _initialized = True
    return True


def is_primary() -> bool:
    """True on the process that writes files (process 0; the only one on a single host)."""
    return jax.process_index() == 0


def _data_size(mesh: Mesh) -> int:
    if DATA_AXIS not in mesh.shape:
        raise ValueError(f"mesh needs a {DATA_AXIS!r} axis (common.sharding.make_mesh); it has "
                         f"{tuple(mesh.shape)}")
    return mesh.shape[DATA_AXIS]


def process_rows(num_rows: int, mesh: Mesh) -> slice:
    """The rows ``[start, stop)`` of a global ``[num_rows, ...]`` array split along the
    mesh's ``data`` axis that live on this process's devices.

    Args:
      num_rows: the global leading size; a multiple of the ``data`` axis size.
      mesh: the mesh the array will be sharded over.

    Returns:
      A ``slice`` of the global rows (contiguous: ``make_mesh`` orders devices by
      process, so each process owns one block).

    Raises:
      ValueError: if ``num_rows`` is not divisible by the ``data`` axis size, or this
        process's rows are not one contiguous block of the mesh.
    """
    size = _data_size(mesh)
    if num_rows % size:
        raise ValueError(f"num_rows ({num_rows}) must be divisible by the data axis size "
                         f"({size})")
    sharding = batch_sharding(mesh, 1)
    index_map = sharding.addressable_devices_indices_map((num_rows,))
    starts = sorted({idx[0].start or 0 for idx in index_map.values()})
    stops = sorted({idx[0].stop if idx[0].stop is not None else num_rows
                    for idx in index_map.values()})
    start, stop = starts[0], stops[-1]
    if (stop - start) != len(starts) * (num_rows // size):
        raise ValueError("this process's devices do not hold one contiguous block of rows on "
                         "the mesh's data axis; build the mesh with common.sharding.make_mesh")
    return slice(start, stop)


def global_batch(local, mesh: Mesh):
    """A global array split along ``data`` from this process's rows of it.

    Args:
      local: a pytree of host arrays ``[n_local, ...]``: the rows
        :func:`process_rows` names for this process (all of them on one process).
      mesh: the mesh; the global leading size is ``n_local × process count``.

    Returns:
      The pytree of global ``jax.Array`` ``[N, ...]`` sharded along ``data``.
    """
    def place(x):
        x = np.asarray(x)
        if x.ndim == 0:
            raise ValueError("global_batch needs arrays with a leading batch axis, got a scalar")
        return jax.make_array_from_process_local_data(batch_sharding(mesh, x.ndim), x)

    return jax.tree.map(place, local)


def global_array(value, sharding):
    """Global arrays from host values every process holds whole (initial parameters
    drawn from a shared seed, a small evaluation set); each process materialises only
    its own shards. Typed PRNG keys are placed as their key data and re-wrapped.

    Args:
      value: a pytree of arrays (numpy, or ``jax.Array`` on this process's devices),
        identical on every process.
      sharding: a mesh (everything replicated on all its devices), one
        ``NamedSharding`` for every leaf, or a pytree of them matching ``value``
        (e.g. ``common.sharding.state_shardings(state, mesh)``).

    Returns:
      ``value`` with every leaf a global ``jax.Array``.
    """
    if isinstance(sharding, Mesh):
        sharding = NamedSharding(sharding, PartitionSpec())
    if isinstance(sharding, jax.sharding.Sharding):
        sharding = jax.tree.map(lambda _: sharding, value)

    def place(x, where):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            impl = jax.random.key_impl(x)
            data = place(jax.random.key_data(x), where)
            return jax.random.wrap_key_data(data, impl=impl)
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, where, lambda index: x[index])

    return jax.tree.map(place, value, sharding)


def to_host(tree):
    """Every leaf as a whole numpy array on every process (an all-gather across
    processes when a leaf spans several; a plain copy otherwise)."""
    from jax.experimental import multihost_utils

    def fetch(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(fetch, tree)


def broadcast_text(text: str | None, *, max_bytes: int = 4096) -> str:
    """``text`` from the primary process, on every process (the others pass anything,
    e.g. None). Used to agree on names chosen on one process, such as a run folder."""
    if jax.process_count() == 1:
        return "" if text is None else text
    from jax.experimental import multihost_utils

    buffer = np.zeros(max_bytes + 4, np.uint8)
    if is_primary():
        data = (text or "").encode("utf-8")
        if len(data) > max_bytes:
            raise ValueError(f"text of {len(data)} bytes exceeds max_bytes={max_bytes}")
        buffer[:4] = np.frombuffer(np.uint32(len(data)).tobytes(), np.uint8)
        buffer[4:4 + len(data)] = np.frombuffer(data, np.uint8)
    buffer = np.asarray(multihost_utils.broadcast_one_to_all(buffer))
    length = int(np.frombuffer(buffer[:4].tobytes(), np.uint32)[0])
    return buffer[4:4 + length].tobytes().decode("utf-8")


def sync(name: str) -> None:
    """Wait until every process reaches the barrier ``name`` (a no-op on one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
