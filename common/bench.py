"""Benchmarks: honest timing of jitted code and the machine's matmul ceiling.

* ``time_call(fn, *args)``: warm-up calls (compilation), then the median wall time
  of repeated calls, each ending in ``jax.block_until_ready``.
* ``CeilingProbe``: the GFLOP/s of a large jitted matmul in the benchmark's dtype on
  the default device, the yardstick every benchmark reports its fraction of, sampled
  between the benchmark's own timings and reported as the median of the samples
  (``matmul_ceiling()`` measures it once).
* ``BENCHMARKS``: the registry ``jaxatlas bench`` runs. A benchmark receives a
  :class:`BenchContext` and returns a dict of figures; speed-ups are always ratios
  against a reference path timed in the same run, never absolute thresholds.

Results are written to ``runs/bench/<name>.json`` with the device kind and count,
the process count, the dtype, the JAX version and the ceiling (median, spread and
number of samples), so numbers from CPU and GPU hosts can be set side by side.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from common.registry import Registry


@dataclasses.dataclass(frozen=True)
class Timing:
    """Wall times of repeated calls, in seconds."""

    median: float
    minimum: float
    times: tuple[float, ...]

    def per_second(self, work: float) -> float:
        """Throughput: ``work`` units per call divided by the median time."""
        return work / self.median


class CeilingProbe:
    """Samples of the matmul ceiling taken *between* a benchmark's own timings.

    On a shared or throttling machine the ceiling drifts as much as the code under
    test (on a quiet 2-core machine one 2048² float32 matmul measured 200–437 GFLOP/s
    across 23 runs), so a single measurement can put a reported fraction off by 2×.
    While a probe is active (``run_benchmarks`` activates one per benchmark),
    :func:`time_interleaved` takes one ceiling sample per round and :func:`time_call`
    one per call; the benchmark's ceiling is the median of all of them.

    Args:
      dtype: the matmul's dtype (the benchmark's compute dtype).
      n: matrix side.
    """

    def __init__(self, dtype=jnp.float32, n: int = 2048):
        self.dtype, self.n = jnp.dtype(dtype), n
        self.samples: list[float] = []
        self._matmul = jax.jit(jnp.matmul)
        self._a = jax.random.normal(jax.random.key(0), (n, n), self.dtype)
        self._b = jax.random.normal(jax.random.key(1), (n, n), self.dtype)
        jax.block_until_ready(self._matmul(self._a, self._b))  # compile once

    def sample(self) -> float:
        """Time one matmul; returns (and records) its GFLOP/s."""
        t0 = time.perf_counter()
        jax.block_until_ready(self._matmul(self._a, self._b))
        gflops = 2.0 * self.n**3 / (time.perf_counter() - t0) / 1e9
        self.samples.append(gflops)
        return gflops

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    def summary(self) -> dict[str, Any]:
        s = self.samples
        return {"matmul_ceiling_gflops": self.median, "ceiling_dtype": self.dtype.name,
                "ceiling_samples": len(s), "ceiling_min_gflops": min(s) if s else None,
                "ceiling_max_gflops": max(s) if s else None}


_ACTIVE_PROBE: list[CeilingProbe] = []


@contextlib.contextmanager
def ceiling_probe(probe: CeilingProbe):
    """Make ``probe`` sample the ceiling between the timings made inside the block."""
    _ACTIVE_PROBE.append(probe)
    try:
        yield probe
    finally:
        _ACTIVE_PROBE.remove(probe)


def _probe_sample() -> None:
    if _ACTIVE_PROBE:
        _ACTIVE_PROBE[-1].sample()


def time_call(fn: Callable, *args, warmup: int = 2, repeats: int = 7,
              min_seconds: float = 0.0, **kwargs) -> Timing:
    """Median wall time of ``fn(*args, **kwargs)`` after ``warmup`` calls.

    Every call is followed by ``jax.block_until_ready`` on its output, so
    asynchronous dispatch is not mistaken for speed. With ``min_seconds``, repeats
    continue until that much time has been measured (for very fast calls).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        jax.block_until_ready(fn(*args, **kwargs))
    times: list[float] = []
    while len(times) < repeats or sum(times) < min_seconds:
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args, **kwargs))
        times.append(time.perf_counter() - t0)
        if len(times) >= 1000:
            break
    _probe_sample()
    return Timing(statistics.median(times), min(times), tuple(times))


def time_interleaved(calls: dict[str, Callable[[], Any]], rounds: int = 7,
                     warmup: int = 2) -> dict[str, Timing]:
    """Time several zero-argument calls in alternation, one call of each per round.

    Comparing two paths this way lets drifting machine load (other processes, thermal
    limits) fall on both alike, so their ratio stays honest on a shared machine.

    Returns:
      ``{name: Timing}`` with the median and minimum over ``rounds``.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    for call in calls.values():
        for _ in range(warmup):
            jax.block_until_ready(call())
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            t0 = time.perf_counter()
            jax.block_until_ready(call())
            times[name].append(time.perf_counter() - t0)
        _probe_sample()  # the ceiling, in the same alternation (when a benchmark runs)
    return {name: Timing(statistics.median(t), min(t), tuple(t)) for name, t in times.items()}


def matmul_ceiling(n: int = 2048, dtype=jnp.float32, repeats: int = 5) -> float:
    """Measured GFLOP/s of a jitted ``[n, n] @ [n, n]`` matmul (2 n³ flops) on the
    default device: the practical compute ceiling benchmarks are compared with."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    matmul = jax.jit(jnp.matmul)
    timing = time_call(matmul, a, b, warmup=2, repeats=repeats)
    return 2.0 * n**3 / timing.minimum / 1e9


@dataclasses.dataclass
class BenchContext:
    """What a benchmark gets: the scale and the ceiling probe.

    ``ceiling_gflops`` is the median of the ceiling samples taken so far, interleaved
    with the benchmark's own timings (:class:`CeilingProbe`); without a probe, the
    fixed value given.
    """

    scale: str = "quick"
    fixed_ceiling_gflops: float = float("nan")
    probe: CeilingProbe | None = None

    @property
    def quick(self) -> bool:
        return self.scale == "quick"

    @property
    def ceiling_gflops(self) -> float:
        if self.probe is not None and self.probe.samples:
            return self.probe.median
        return self.fixed_ceiling_gflops

    def fraction_of_ceiling(self, gflops: float) -> float:
        return gflops / self.ceiling_gflops


@dataclasses.dataclass(frozen=True)
class Benchmark:
    name: str
    description: str
    fn: Callable[[BenchContext], dict[str, Any]]
    dtype: str = "float32"


BENCHMARKS: Registry[Benchmark] = Registry("benchmark")


def benchmark(name: str, description: str, *, dtype: str = "float32"):
    """Decorator registering ``fn(ctx) -> dict`` as benchmark ``name``; ``dtype`` is the
    compute dtype of what it times (the ceiling is measured in it)."""

    def decorator(fn):
        BENCHMARKS.add(name, Benchmark(name, description, fn, str(jnp.dtype(dtype))))
        return fn

    return decorator


def machine_info() -> dict[str, Any]:
    device = jax.devices()[0]
    return {
        "backend": jax.default_backend(),
        "device": getattr(device, "device_kind", str(device)),
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "process_count": jax.process_count(),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "processor": platform.machine(),
    }


def run_benchmarks(names: list[str] | None = None, *, out_dir: str | Path = "runs/bench",
                   scale: str = "quick", echo: Callable[[str], None] = print) -> dict[str, dict]:
    """Run the named benchmarks (default: all) and write ``<out_dir>/<name>.json``."""
    names = names or BENCHMARKS.names()
    selected = [BENCHMARKS.get(n) for n in names]  # unknown names fail before any timing
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    echo(f"{info['device_count']} x {info['device']} ({info['backend']}), "
         f"{info['process_count']} process(es); the matmul ceiling is sampled between "
         "each benchmark's timings")
    results = {}
    for bench in selected:
        probe = CeilingProbe(bench.dtype)
        for _ in range(3):  # a few samples before, the rest between the timings
            probe.sample()
        ctx = BenchContext(scale=scale, probe=probe)
        t0 = time.perf_counter()
        with ceiling_probe(probe):
            figures = bench.fn(ctx)
        probe.sample()
        record = {
            "name": bench.name,
            "description": bench.description,
            "scale": scale,
            "dtype": bench.dtype,
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "seconds": time.perf_counter() - t0,
            **probe.summary(),
            "machine": info,
            "results": figures,
        }
        path = out / f"{bench.name}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=2, default=float))
        tmp.replace(path)
        echo(f"{bench.name}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in figures.items())
             + f" (ceiling {probe.median:.0f} GFLOP/s {bench.dtype}, median of "
             f"{len(probe.samples)})")
        results[bench.name] = record
    return results


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
