"""Benchmarks of the vision package; importing this module registers them.

* ``detr-matching``: a batch of 64 DETR-sized cost matrices (100 queries × 20
  targets), solved by the in-jit ``"jv"`` solver (vmapped), by
  ``optax.assignment.hungarian_algorithm`` (vmapped), by a Python loop over
  ``scipy.optimize.linear_sum_assignment`` on host arrays, and by the jitted host
  callback (``jax.pure_callback`` to scipy); ratios against scipy and optax from the
  same run, the paths timed in alternation so that load drift biases none.
* ``detr-train-step``: one DETR training step of the ``detr-shapes`` quick config
  (forward, set criterion with in-jit matching at every decoder layer, backward,
  AdamW), its GFLOP/s from XLA's cost analysis and the fraction of the matmul
  ceiling, against the same step with the matching done on the host through
  ``jax.pure_callback`` (``matcher="scipy"``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from common.bench import BenchContext, benchmark, time_interleaved


@benchmark("detr-matching", "64 matchings of 100x20 costs: in-jit JV vs optax.assignment "
           "(vmapped) vs a scipy loop vs the host callback")
def bench_matching(ctx: BenchContext) -> dict:
    from scipy.optimize import linear_sum_assignment as scipy_lsa

    from vision.matching import linear_sum_assignment, linear_sum_assignment_host

    batch, queries, targets = 64, 100, 20
    repeats = 15 if ctx.quick else 50
    rng = np.random.default_rng(0)
    costs_np = rng.normal(size=(batch, queries, targets)).astype(np.float32)
    costs = jnp.asarray(costs_np)
    jv = jax.jit(jax.vmap(linear_sum_assignment))
    opt = jax.jit(jax.vmap(optax.assignment.hungarian_algorithm))
    host = jax.jit(jax.vmap(linear_sum_assignment_host))

    def scipy_loop(c):
        return [scipy_lsa(c[b]) for b in range(c.shape[0])]

    # All three give the same optimum (unique for continuous random costs).
    rows, cols = jv(costs)
    for b in range(batch):
        r, c = scipy_lsa(costs_np[b])
        if not (np.array_equal(np.asarray(rows[b]), r) and np.array_equal(np.asarray(cols[b]), c)):
            raise AssertionError(f"jv and scipy disagree on problem {b}")
    timings = time_interleaved({"jv": lambda: jv(costs), "optax": lambda: opt(costs),
                                "scipy": lambda: scipy_loop(costs_np),
                                "host": lambda: host(costs)}, repeats)
    t_jv, t_optax, t_scipy, t_host = (timings[k] for k in ("jv", "optax", "scipy", "host"))
    return {
        "problems": batch,
        "shape": f"{queries}x{targets}",
        "jv_ms": 1e3 * t_jv.median,
        "optax_ms": 1e3 * t_optax.median,
        "scipy_loop_ms": 1e3 * t_scipy.median,
        "host_callback_ms": 1e3 * t_host.median,
        "optax_over_jv": t_optax.median / t_jv.median,
        "scipy_loop_over_jv": t_scipy.median / t_jv.median,
        "host_callback_over_jv": t_host.median / t_jv.median,
    }


def _train_step(cfg, matcher: str):
    from flax import nnx

    from common.optim import build_optimizer
    from common.train import TrainState, train_step_fn
    from vision.detr import DETR
    from vision.recipes.detr_shapes import make_loss_fn

    criterion = dataclasses.replace(cfg.criterion, matcher=matcher)
    model = DETR(cfg.model, rngs=nnx.Rngs(0))
    tx = build_optimizer(dataclasses.replace(cfg.optim, total_steps=cfg.steps))
    state = TrainState.create(model, tx, jax.random.key(0))
    step = jax.jit(train_step_fn(make_loss_fn(state.graphdef, criterion), tx,
                                 updates_rest=True))
    return state, step


@benchmark("detr-train-step", "DETR train step (detr-shapes quick model): in-jit matching vs "
           "the scipy host callback; GFLOP/s and fraction of the matmul ceiling")
def bench_train_step(ctx: BenchContext) -> dict:
    from vision.recipes.detr_shapes import DetrShapesConfig, make_batch_fn
    from vision.shapes import generate_shapes

    cfg = DetrShapesConfig()
    if not ctx.quick:
        cfg = dataclasses.replace(cfg, batch_size=64)
    repeats = 7 if ctx.quick else 25
    data = generate_shapes(256, seed=0)
    arrays = {k: jnp.asarray(v) for k, v in data.as_arrays().items()}
    batch = jax.jit(make_batch_fn(cfg))(arrays, jax.random.key(1))
    results = {"batch_size": cfg.batch_size, "queries": cfg.model.num_queries,
               "decoder_layers": cfg.model.num_decoder_layers}
    steps = {matcher: _train_step(cfg, matcher) for matcher in ("jv", "scipy")}
    times = time_interleaved({m: (lambda s=s, f=f: f(s, batch)) for m, (s, f) in steps.items()},
                             repeats)
    state, step = steps["jv"]
    cost = step.lower(state, batch).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float(cost.get("flops", float("nan")))
    gflops = flops / times["jv"].median / 1e9
    results.update({
        "step_ms_in_jit_matching": 1e3 * times["jv"].median,
        "step_ms_host_callback": 1e3 * times["scipy"].median,
        "host_callback_over_in_jit": times["scipy"].median / times["jv"].median,
        "images_per_second": cfg.batch_size / times["jv"].median,
        "gflop_per_step": flops / 1e9,
        "gflops": gflops,
        "fraction_of_matmul_ceiling": ctx.fraction_of_ceiling(gflops),
    })
    return results
