"""Benchmark ``pose-heads``: the cost of RLE's flow in training, and regression vs heatmap
inference; importing this module registers it.

* Training step (forward, backward, AdamW update; the ``pose-rle`` quick model at its
  larger resolution, batch 32) of the RLE head against the L1 head, timed in
  alternation (``time_interleaved``): the overhead of the flow, goal ≤ 1.15×.
* Inference throughput (crops/s) of the regression head (read μ and σ) against the
  heatmap head including its decoding (argmax with quarter-pixel refinement), batch 256,
  goal ≥ 1.5×.
* GFLOP/s of each timed step from XLA's cost analysis, and its fraction of the machine's
  matmul ceiling.

Ratios only; no time is asserted.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from common.bench import BenchContext, benchmark, time_interleaved
from common.optim import build_optimizer
from common.recipe import default_total_steps
from common.train import TrainState, make_train_step
from vision.pose.heads import PoseModel, predict


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", float("nan")))


def _train(cfg, head: str, size: int, batch):
    from vision.recipes.pose_rle import make_loss_fn

    model = PoseModel(dataclasses.replace(cfg.model, head=head, input_size=size),
                      rngs=nnx.Rngs(0))
    tx = build_optimizer(default_total_steps(cfg.optim, cfg.steps))
    state = TrainState.create(model, tx, jax.random.key(0))
    step = make_train_step(make_loss_fn(state.graphdef), tx, donate=False)
    flops = _flops(step.lower(state, batch).compile())
    return (lambda: step(state, batch)), flops


def _infer(cfg, head: str, size: int, images):
    model = PoseModel(dataclasses.replace(cfg.model, head=head, input_size=size),
                      rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, images):
        coords, scores, _ = predict(nnx.merge(graphdef, state), images)
        return coords, scores

    flops = _flops(run.lower(state, images).compile())
    return (lambda: run(state, images)), flops


@benchmark("pose-heads", "pose-rle model: RLE vs L1 train step (flow overhead) and regression "
           "vs heatmap+decoding inference throughput; fraction of the matmul ceiling")
def bench_pose_heads(ctx: BenchContext) -> dict:
    from vision.recipes.pose_rle import PoseRLEConfig

    cfg = PoseRLEConfig()
    size = max(cfg.resolutions)
    rounds = 9 if ctx.quick else 25
    key = jax.random.key(1)
    b = cfg.batch_size
    batch = {"images": jax.random.normal(key, (b, size, size, 3)),
             "target": jax.random.uniform(key, (b, 17, 2), minval=-0.4, maxval=0.4),
             "weight": jnp.ones((b, 17))}
    train = {head: _train(cfg, head, size, batch) for head in ("rle", "l1")}
    t_train = time_interleaved({h: f for h, (f, _) in train.items()}, rounds)
    n_infer = 256
    images = jax.random.normal(key, (n_infer, size, size, 3))
    infer = {head: _infer(cfg, head, size, images) for head in ("rle", "heatmap")}
    t_infer = time_interleaved({h: f for h, (f, _) in infer.items()}, rounds)
    out = {"input_size": size, "train_batch": b, "infer_batch": n_infer}
    for head in ("rle", "l1"):
        out[f"train_step_ms_{head}"] = 1e3 * t_train[head].median
        gflops = train[head][1] / t_train[head].median / 1e9
        out[f"train_gflops_{head}"] = gflops
        out[f"train_fraction_of_ceiling_{head}"] = ctx.fraction_of_ceiling(gflops)
    out["rle_over_l1_train_step"] = t_train["rle"].median / t_train["l1"].median
    for head, name in (("rle", "regression"), ("heatmap", "heatmap")):
        out[f"infer_crops_per_s_{name}"] = n_infer / t_infer[head].median
        gflops = infer[head][1] / t_infer[head].median / 1e9
        out[f"infer_gflops_{name}"] = gflops
        out[f"infer_fraction_of_ceiling_{name}"] = ctx.fraction_of_ceiling(gflops)
    out["regression_over_heatmap_throughput"] = t_infer["heatmap"].median / t_infer["rle"].median
    return out
