"""Timing helper, matmul ceiling and the benchmark runner."""

import json

import jax.numpy as jnp
import pytest

from common.bench import (
    BENCHMARKS,
    benchmark,
    matmul_ceiling,
    run_benchmarks,
    time_call,
    time_interleaved,
)
from common.registry import UnknownNameError


def test_time_call_warms_up_then_repeats():
    calls = []
    timing = time_call(lambda x: calls.append(x) or jnp.ones(3) * x, 2.0, warmup=2, repeats=5)
    assert len(calls) == 7 and len(timing.times) == 5
    assert 0 < timing.minimum <= timing.median
    assert timing.per_second(10) == pytest.approx(10 / timing.median)
    with pytest.raises(ValueError, match="repeats"):
        time_call(lambda: None, repeats=0)


def test_time_interleaved_alternates_the_calls():
    order = []
    timings = time_interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")},
                               rounds=3, warmup=1)
    assert order == ["a", "b"] + ["a", "b"] * 3
    assert set(timings) == {"a", "b"} and len(timings["a"].times) == 3
    with pytest.raises(ValueError, match="rounds"):
        time_interleaved({"a": lambda: None}, rounds=0)


def test_matmul_ceiling_is_a_plausible_rate():
    gflops = matmul_ceiling(n=256, repeats=3)
    assert 0.1 < gflops < 1e6


def test_run_benchmarks_writes_json(tmp_path):
    @benchmark("test-bench", "a test benchmark")
    def _bench(ctx):
        return {"quick": ctx.quick, "fraction": ctx.fraction_of_ceiling(ctx.ceiling_gflops / 4)}

    try:
        results = run_benchmarks(["test-bench"], out_dir=tmp_path, echo=lambda s: None)
        record = json.loads((tmp_path / "test-bench.json").read_text())
        assert record["results"] == {"quick": True, "fraction": 0.25}
        assert record["matmul_ceiling_gflops"] > 0 and record["machine"]["backend"] == "cpu"
        assert results["test-bench"]["name"] == "test-bench"
        with pytest.raises(UnknownNameError, match="unknown benchmark 'nope'"):
            run_benchmarks(["nope"], out_dir=tmp_path / "x")
        assert not (tmp_path / "x").exists()
    finally:
        BENCHMARKS._entries.pop("test-bench")


def test_the_ceiling_is_sampled_between_the_benchmarks_timings(tmp_path):
    """One ceiling sample per interleaved round and per time_call, three before and
    one after; the record's ceiling is their median, with dtype, device and counts."""
    from common.bench import CeilingProbe, ceiling_probe

    probe = CeilingProbe(n=64)
    with ceiling_probe(probe):
        time_interleaved({"a": lambda: jnp.ones(2), "b": lambda: jnp.zeros(2)}, rounds=4)
        time_call(lambda: jnp.ones(2), repeats=3)
    assert len(probe.samples) == 5
    time_call(lambda: jnp.ones(2), repeats=3)  # no probe active: no sample
    assert len(probe.samples) == 5

    @benchmark("test-bench-probe", "a benchmark timing two calls in alternation",
               dtype="bfloat16")
    def _bench(ctx):
        time_interleaved({"a": lambda: jnp.ones(2), "b": lambda: jnp.zeros(2)}, rounds=6)
        return {"ceiling_seen": ctx.ceiling_gflops}

    try:
        record = run_benchmarks(["test-bench-probe"], out_dir=tmp_path,
                                echo=lambda s: None)["test-bench-probe"]
        assert record["ceiling_samples"] == 3 + 6 + 1
        assert record["dtype"] == record["ceiling_dtype"] == "bfloat16"
        assert (record["ceiling_min_gflops"] <= record["matmul_ceiling_gflops"]
                <= record["ceiling_max_gflops"])
        assert record["machine"]["device_count"] == 8
        assert record["machine"]["process_count"] == 1
    finally:
        BENCHMARKS._entries.pop("test-bench-probe")
