"""Benchmarks: honest timing of jitted code and the machine's matmul ceiling.

* ``time_call(fn, *args)``: warm-up calls (compilation), then the median wall time
  of repeated calls, each ending in ``jax.block_until_ready``.
* ``matmul_ceiling()``: the measured GFLOP/s of a large jitted float32 matmul on the
  default device, the yardstick every benchmark reports its fraction of.
* ``BENCHMARKS``: the registry ``jaxatlas bench`` runs. A benchmark receives a
  :class:`BenchContext` and returns a dict of figures; speed-ups are always ratios
  against a reference path timed in the same run, never absolute thresholds.

Results are written to ``runs/bench/<name>.json`` with the device, JAX version and
ceiling, so numbers from CPU and GPU hosts can be set side by side.
"""

from __future__ import annotations

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
    """What a benchmark gets: the scale and the measured ceiling."""

    scale: str = "quick"
    ceiling_gflops: float = float("nan")

    @property
    def quick(self) -> bool:
        return self.scale == "quick"

    def fraction_of_ceiling(self, gflops: float) -> float:
        return gflops / self.ceiling_gflops


@dataclasses.dataclass(frozen=True)
class Benchmark:
    name: str
    description: str
    fn: Callable[[BenchContext], dict[str, Any]]


BENCHMARKS: Registry[Benchmark] = Registry("benchmark")


def benchmark(name: str, description: str):
    """Decorator registering ``fn(ctx) -> dict`` as benchmark ``name``."""

    def decorator(fn):
        BENCHMARKS.add(name, Benchmark(name, description, fn))
        return fn

    return decorator


def machine_info() -> dict[str, Any]:
    device = jax.devices()[0]
    return {
        "backend": jax.default_backend(),
        "device": getattr(device, "device_kind", str(device)),
        "device_count": jax.device_count(),
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
    ceiling = matmul_ceiling()
    echo(f"matmul ceiling: {ceiling:.1f} GFLOP/s on {machine_info()['device']}")
    results = {}
    for bench in selected:
        ctx = BenchContext(scale=scale, ceiling_gflops=ceiling)
        t0 = time.perf_counter()
        figures = bench.fn(ctx)
        record = {
            "name": bench.name,
            "description": bench.description,
            "scale": scale,
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "seconds": time.perf_counter() - t0,
            "matmul_ceiling_gflops": ceiling,
            "machine": machine_info(),
            "results": figures,
        }
        path = out / f"{bench.name}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=2, default=float))
        tmp.replace(path)
        echo(f"{bench.name}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in figures.items()))
        results[bench.name] = record
    return results


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
