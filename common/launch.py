"""``jaxatlas launch``: several local processes joined by ``jax.distributed``, as on a
cluster, for testing multi-process code on one machine.

Each process is ``python -m common.cli <command...>`` with its rank in the
environment (``JAXATLAS_COORDINATOR``, ``JAXATLAS_NUM_PROCESSES``,
``JAXATLAS_PROCESS_ID``), ``--devices-per-process`` simulated CPU devices
(``--xla_force_host_platform_device_count``) and gloo CPU collectives. The CLI calls
``common.distributed.initialize_distributed()`` first, which reads them. On a real
cluster the cluster's launcher (SLURM's ``srun``, a TPU pod's per-host start,
Kubernetes) starts the same command instead, and ``jax.distributed.initialize()``
reads its environment: nothing in the recipe changes.

If a process fails, the others are stopped and the launcher says which rank failed
with which exit code; the launcher's own exit code is that process's.

Example:
    $ jaxatlas launch --processes 2 --devices-per-process 4 -- run digits-mlp
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

from common.checks import check_int


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(rank: int, processes: int, devices_per_process: int, port: int,
                base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of local process ``rank``: coordinator, rank, count, simulated
    CPU devices and gloo collectives (other XLA flags of ``base`` are kept)."""
    env = dict(os.environ if base is None else base)
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    flags.append(f"--xla_force_host_platform_device_count={devices_per_process}")
    env.update({
        "XLA_FLAGS": " ".join(flags),
        "JAX_PLATFORMS": "cpu",
        "JAXATLAS_COORDINATOR": f"127.0.0.1:{port}",
        "JAXATLAS_NUM_PROCESSES": str(processes),
        "JAXATLAS_PROCESS_ID": str(rank),
        "JAXATLAS_CPU_COLLECTIVES": "gloo",
    })
    return env


def launch(command: Sequence[str], *, processes: int = 2, devices_per_process: int = 4,
           port: int | None = None, python: str | None = None, module: str = "common.cli",
           timeout: float | None = None, poll: float = 0.2) -> int:
    """Run ``python -m <module> *command`` (the CLI by default) as ``processes`` local
    processes.

    Args:
      command: the CLI arguments, e.g. ``["run", "digits-mlp"]``.
      processes: how many processes (ranks ``0 .. processes − 1``).
      devices_per_process: simulated CPU devices per process.
      port: the coordinator's port on 127.0.0.1 (default: a free one).
      python: the interpreter (default: this one).
      module: the module each process runs; it calls
        ``common.distributed.initialize_distributed()`` before any JAX computation.
      timeout: seconds after which all processes are stopped (default: none).
      poll: seconds between checks of the processes.

    Returns:
      0 when every process exited 0; otherwise the exit code of the first process
      that failed (the others are stopped, and stderr names the rank), or 124 on
      timeout.
    """
    check_int(processes, "processes", 1)
    check_int(devices_per_process, "devices_per_process", 1)
    if not command:
        raise ValueError("command is empty: say what to run, e.g. -- run digits-mlp")
    port = free_port() if port is None else port
    python = python or sys.executable
    procs = [subprocess.Popen([python, "-m", module, *command],
                              env=process_env(rank, processes, devices_per_process, port))
             for rank in range(processes)]
    start = time.monotonic()
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [(rank, code) for rank, code in enumerate(codes)
                      if code is not None and code != 0]
            if failed:
                rank, code = failed[0]
                print(f"jaxatlas launch: rank {rank} of {processes} failed with exit code "
                      f"{code}; stopping the others", file=sys.stderr, flush=True)
                _stop(procs)
                return code
            if all(code == 0 for code in codes):
                return 0
            if timeout is not None and time.monotonic() - start > timeout:
                print(f"jaxatlas launch: timed out after {timeout:.0f} s; stopping all "
                      f"{processes} processes", file=sys.stderr, flush=True)
                _stop(procs)
                return 124
            time.sleep(poll)
    except KeyboardInterrupt:
        for p in procs:  # pass Ctrl-C on: each process checkpoints and exits 130
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        return 130


def _stop(procs: list[subprocess.Popen], grace: float = 10.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
