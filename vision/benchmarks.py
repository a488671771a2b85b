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
* ``moe-layer``: forward+backward of a MoE layer (``T = 4096`` tokens, ``E = 64``
  experts, ``k = 6``) against a dense SwiGLU with equal active parameters, and the
  dropless (blocked and ``ragged_dot``), capacity and per-expert-loop dispatches against
  each other in the same run; fraction of the matmul ceiling.
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


def _moe_problem(T: int, E: int, k: int, D: int, F: int, seed: int = 0):
    """Tokens, router, expert and equal-active dense SwiGLU weights of one MoE layer."""
    keys = jax.random.split(jax.random.key(seed), 8)
    scale_in, scale_hidden = D ** -0.5, F ** -0.5
    x = jax.random.normal(keys[0], (T, D))
    router = jax.random.normal(keys[1], (D, E)) * scale_in
    experts = (jax.random.normal(keys[2], (E, D, F)) * scale_in,
               jax.random.normal(keys[3], (E, D, F)) * scale_in,
               jax.random.normal(keys[4], (E, F, D)) * scale_hidden)
    dense = (jax.random.normal(keys[5], (D, k * F)) * scale_in,
             jax.random.normal(keys[6], (D, k * F)) * scale_in,
             jax.random.normal(keys[7], (k * F, D)) * scale_hidden)
    return x, router, experts, dense


def _moe_step(dispatch: str, k: int, capacity: int | None = None):
    """Jitted forward+backward (gradients of every input) of a ``noaux_tc`` MoE layer
    with the named dispatch: ``blocked`` / ``ragged`` (dropless), ``capacity``, ``loop``."""
    from common.nn.moe import (
        capacity_dispatch,
        dropless_dispatch,
        loop_dispatch,
        noaux_tc_route,
    )

    def layer(x, router, wg, wu, wd):
        weights, indices = noaux_tc_route(x @ router, jnp.zeros(router.shape[1]), top_k=k)
        if dispatch in ("blocked", "ragged"):
            return dropless_dispatch(x, weights, indices, wg, wu, wd, method=dispatch)
        if dispatch == "capacity":
            return capacity_dispatch(x, weights, indices, wg, wu, wd, capacity=capacity)[0]
        return loop_dispatch(x, weights, indices, wg, wu, wd)

    return jax.jit(jax.grad(lambda *a: jnp.sum(layer(*a) ** 2), argnums=(0, 1, 2, 3, 4)))


@benchmark("moe-layer", "MoE layer forward+backward (T=4096, E=64, k=6): dropless vs a dense "
           "SwiGLU of equal active parameters; blocked vs ragged_dot vs capacity vs loop")
def bench_moe_layer(ctx: BenchContext) -> dict:
    """Forward+backward of one MoE layer (``noaux_tc`` routing, SwiGLU experts) against a
    dense SwiGLU with the same active parameters (hidden ``k·F``), at ``T = 4096, E = 64,
    k = 6`` (quick: ``D = 256, F = 128``; full, for an accelerator: ``T = 8192, D = 1024,
    F = 512``); then the four dispatches at one size (quick: ``T = 1024, E = 16, k = 4``,
    because ``ragged_dot`` on XLA:CPU does ``E×`` the work; full: the full sizes), each
    timed in alternation."""
    from common.nn.moe import expert_capacity, noaux_tc_route, tokens_per_expert

    def dense_step():
        def dense(x, wg, wu, wd):
            return (jax.nn.silu(x @ wg) * (x @ wu)) @ wd

        return jax.jit(jax.grad(lambda *a: jnp.sum(dense(*a) ** 2), argnums=(0, 1, 2, 3)))

    # quick: the sizes at a CPU-sized width; full: Moonlight-like widths for an
    # accelerator (D = 2048 there; 1024 keeps the 64 experts within one GPU's memory twice)
    T, E, k, D, F = (4096, 64, 6, 256, 128) if ctx.quick else (8192, 64, 6, 1024, 512)
    rounds = 5 if ctx.quick else 15
    x, router, experts, dense_w = _moe_problem(T, E, k, D, F)
    moe, dense = _moe_step("blocked", k), dense_step()
    times = time_interleaved({"moe": lambda: moe(x, router, *experts),
                              "dense": lambda: dense(x, *dense_w)}, rounds)
    # useful matmul flops of forward + backward (3× the forward's 2·T·k·3·D·F)
    flops = 3 * 2 * T * k * 3 * D * F
    gflops = flops / times["moe"].median / 1e9
    results = {
        "tokens": T, "experts": E, "top_k": k, "d_model": D, "expert_dim": F,
        "moe_fwd_bwd_ms": 1e3 * times["moe"].median,
        "dense_equal_active_fwd_bwd_ms": 1e3 * times["dense"].median,
        "moe_over_dense": times["moe"].median / times["dense"].median,
        "moe_gflops": gflops,
        "moe_fraction_of_matmul_ceiling": ctx.fraction_of_ceiling(gflops),
        "dense_fraction_of_matmul_ceiling": ctx.fraction_of_ceiling(
            flops / times["dense"].median / 1e9),
    }

    Tc, Ec, kc = (1024, 16, 4) if ctx.quick else (T, E, k)
    x, router, experts, _ = _moe_problem(Tc, Ec, kc, D, F, seed=1)
    capacity = expert_capacity(Tc, Ec, kc, 1.25)
    _, indices = noaux_tc_route(x @ router, jnp.zeros(Ec), top_k=kc)
    load = np.asarray(tokens_per_expert(indices, Ec))
    steps = {name: _moe_step(name, kc, capacity)
             for name in ("blocked", "ragged", "capacity", "loop")}
    times = time_interleaved({n: (lambda f=f: f(x, router, *experts)) for n, f in steps.items()},
                             3 if ctx.quick else 5)
    results.update({
        "dispatch_tokens": Tc, "dispatch_experts": Ec, "dispatch_top_k": kc,
        "capacity_factor": 1.25,
        "capacity_dropped_fraction": float(np.maximum(load - capacity, 0).sum() / (Tc * kc)),
        **{f"{n}_fwd_bwd_ms": 1e3 * t.median for n, t in times.items()},
        **{f"{n}_over_blocked": t.median / times["blocked"].median
           for n, t in times.items() if n != "blocked"},
    })
    return results

# Benchmarks that live beside their package register on import.
import vision.face.benchmarks  # noqa: E402
import vision.pose.benchmarks  # noqa: E402
import vision.vlm.benchmarks  # noqa: E402,F401
