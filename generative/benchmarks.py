"""Benchmarks of the generative package; importing this module registers them.

* ``generative-train-throughput`` — score-network training steps per second through
  ``common.train``'s scanned chunks (the recipes' path), FLOPs from XLA's cost
  analysis, and the fraction of the measured matmul ceiling; reference: the same step
  dispatched one call at a time from the host.
* ``generative-sampler-overhead`` — predictor–corrector sampler time divided by
  ``NFE × one network evaluation`` (goal ≤ 1.1): how much the sampler adds around
  the network. One evaluation is timed inside a ``lax.scan`` of NFE dependent
  evaluations (no dispatch cost), and also as a single jitted call.
* ``generative-ode-vs-pc-nfe`` — on the 2-D 8-Gaussians task with the exact score
  (no training noise), the NFE the probability-flow ODE sampler and the PC sampler
  need to become indistinguishable from held-out data by MMD at the sample size.

Benchmarks never assert a time; speed-ups are ratios measured in the same run.
"""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from common.bench import BenchContext, benchmark, time_call, time_interleaved
from common.data import sample_batch
from common.optim import OptimConfig, build_optimizer
from common.train import TrainState, make_train_chunk, train_step_fn
from generative.data import eight_gaussians, mixture_score_fn
from generative.metrics import mmd_rbf
from generative.models import init_score_net
from generative.sampling import ode_sampler, pc_sampler
from generative.sde import VESDE, VPSDE
from generative.training import net_apply, score_fn_of, sde_loss_factory


def _flops(lowered) -> float:
    """FLOPs of one call from XLA's cost analysis of the lowered HLO (nan if unavailable)."""
    try:
        cost = lowered.cost_analysis()
        if isinstance(cost, (list, tuple)):
            cost = cost[0]
        return float(cost.get("flops", float("nan")))
    except Exception:  # cost analysis is optional per backend
        return float("nan")


def _train_throughput(ctx: BenchContext, name: str, model, data, batch: int, chunk: int,
                      data_std: float, dispatch_reference: bool = True) -> dict:
    sde = VPSDE()
    tx = build_optimizer(OptimConfig(name="adam", learning_rate=1e-3))
    state = TrainState.create(model, tx, jax.random.key(1))
    step = train_step_fn(sde_loss_factory(sde, data_std=data_std)(state.graphdef), tx)
    batch_fn = lambda d, k: sample_batch(d, k, batch)
    chunk_fn = make_train_chunk(step, batch_fn, chunk, donate=False)
    single = jax.jit(step)
    example = batch_fn(data, jax.random.key(0))
    flops = _flops(single.lower(state, example))
    if dispatch_reference:
        def dispatch_chunk():  # the same steps, one host dispatch each
            out = None
            for _ in range(chunk):
                out = single(state, example)
            return out

        times = time_interleaved({"scanned": lambda: chunk_fn(state, data),
                                  "dispatched": dispatch_chunk},
                                 rounds=3 if ctx.quick else 7, warmup=1)
        scanned = times["scanned"]
    else:
        scanned = time_call(chunk_fn, state, data, warmup=1, repeats=3 if ctx.quick else 7)
    steps_per_s = chunk / scanned.median
    results = {
        f"{name}_steps_per_s": steps_per_s,
        f"{name}_gflops_per_step": flops / 1e9,
        f"{name}_fraction_of_ceiling": ctx.fraction_of_ceiling(flops * steps_per_s / 1e9),
    }
    if dispatch_reference:
        results[f"{name}_scan_speedup_vs_dispatch"] = (times["dispatched"].median
                                                       / scanned.median)
    return results


@benchmark("generative-train-throughput",
           "score-net train steps/s (scanned chunks) and fraction of the matmul ceiling")
def train_throughput(ctx: BenchContext) -> dict:
    results = {}
    hidden = 256 if ctx.quick else 512
    mlp = init_score_net("mlp", jax.random.key(0), dim=2, hidden=hidden, depth=3)
    x2d = eight_gaussians().sample(jax.random.key(2), 20000)
    results.update(_train_throughput(ctx, "mlp2d", mlp, {"x": x2d}, 512, 50, 2.0))
    channels = 16 if ctx.quick else 32
    unet = init_score_net("unet", jax.random.key(0), in_channels=1, image_size=8,
                          channels=channels, channel_mult=(1, 2))
    images = jax.random.uniform(jax.random.key(3), (1000, 8, 8, 1), minval=-1.0, maxval=1.0)
    # quick: no per-step dispatch reference for the U-Net (a second compile of its grad)
    results.update(_train_throughput(ctx, "unet8x8", unet, {"x": images}, 32, 20, 0.5,
                                     dispatch_reference=not ctx.quick))
    return results


@benchmark("generative-sampler-overhead",
           "PC sampler time / (NFE x one score-network evaluation); goal <= 1.1")
def sampler_overhead(ctx: BenchContext) -> dict:
    batch = 1024 if ctx.quick else 8192
    steps = 50 if ctx.quick else 500
    repeats = 5
    model = init_score_net("mlp", jax.random.key(0), dim=2, hidden=256, depth=3)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    sde = VPSDE(N=steps)
    score_fn = score_fn_of(graphdef, params, rest, sde, 2.0)
    shape = (batch, 2)
    results = {}
    samplers = {}
    for predictor, corrector in (("reverse_diffusion", "langevin"),
                                 ("euler_maruyama", "none")):
        sample = jax.jit(lambda k, p=predictor, c=corrector: pc_sampler(
            k, score_fn, sde, shape, predictor=p, corrector=c, snr=0.05))
        tag = f"{predictor}+{corrector}"
        results[f"{tag}_nfe"] = int(sample(jax.random.key(0))[1])
        samplers[tag] = sample

    # The reference evaluation is the full network, time embedding included: t is an
    # argument (a closed-over constant t would let XLA fold the embedding away).
    x = jax.random.normal(jax.random.key(1), shape)
    t = jnp.full((batch,), 0.5)
    one = jax.jit(lambda x, t: net_apply(graphdef, params, rest, x, t))
    nfe = results["reverse_diffusion+langevin_nfe"]
    times = jnp.linspace(1.0, 1e-3, nfe)

    def chained(x, times):  # NFE dependent evaluations at varying t, no dispatch between
        step = lambda c, ti: (net_apply(graphdef, params, rest, c, jnp.full((batch,), ti)),
                              None)
        return jax.lax.scan(step, x, times)[0]

    chained = jax.jit(chained)
    timed = time_interleaved({
        **{tag: (lambda f=f: f(jax.random.key(0))[0]) for tag, f in samplers.items()},
        "chained": lambda: chained(x, times),
        "single": lambda: one(x, t),
    }, rounds=repeats, warmup=1)
    for tag in samplers:
        results[f"{tag}_seconds"] = timed[tag].median
    in_scan, single = timed["chained"], timed["single"]
    eval_s = in_scan.median / nfe
    results["network_eval_ms_in_scan"] = 1e3 * eval_s
    results["network_eval_ms_dispatched"] = 1e3 * single.median
    for tag in ("reverse_diffusion+langevin", "euler_maruyama+none"):
        per_nfe = results[f"{tag}_seconds"] / results[f"{tag}_nfe"]
        results[f"{tag}_overhead"] = per_nfe / eval_s
        results[f"{tag}_overhead_vs_dispatched_eval"] = per_nfe / single.median
    results["batch"] = batch
    return results


def _nfe_at(curve: list[tuple[float, float]], target: float) -> float:
    """Smallest NFE whose quality ≤ target, interpolated in log NFE between the last
    point above and the first point below (nan if never reached; the first NFE if
    already reached there)."""
    if not curve:
        return float("nan")
    if curve[0][1] <= target:
        return float(curve[0][0])
    for (n0, q0), (n1, q1) in itertools.pairwise(curve):
        if q1 <= target < q0:
            w = (q0 - target) / (q0 - q1)
            return float(np.exp(np.log(n0) + w * (np.log(n1) - np.log(n0))))
    return float("nan")


@benchmark("generative-ode-vs-pc-nfe",
           "NFE of the probability-flow ODE vs the PC sampler at equal MMD to held-out data "
           "on 8 Gaussians (exact score)")
def ode_vs_pc(ctx: BenchContext) -> dict:
    """Quality is the unbiased MMD² to held-out data (its expectation is 0 for a perfect
    sampler); the target is the mean + 2 std of MMD² between independent data sets of
    the same size, i.e. "indistinguishable from data at this sample size"."""
    mix = eight_gaussians()
    n = 2000 if ctx.quick else 5000
    seeds = 2 if ctx.quick else 4
    held_out = mix.sample(jax.random.key(100), n)
    mmd = jax.jit(lambda a: mmd_rbf(a, held_out))
    null = np.array([float(mmd(mix.sample(jax.random.key(200 + s), n)))
                     for s in range(2 * seeds + 2)])
    target = float(null.mean() + 2 * null.std())
    results = {"samples": n, "target_mmd2": target}
    # VP's DDPM chain (reverse diffusion, Langevin's α) needs N > β_max = 20.
    pc_steps = (10, 21, 40, 80) if ctx.quick else (5, 10, 21, 30, 40, 60, 80, 160, 320)
    tols = (3e-2, 1e-3, 1e-4) if ctx.quick else (3e-2, 1e-2, 3e-3, 1e-3, 1e-4, 1e-5)
    for sde_name, base in (("vp", VPSDE()), ("ve", VESDE(sigma_max=12.0))):
        score_fn = mixture_score_fn(mix, base)
        pc_curve, ode_curve = [], []
        for steps in pc_steps:
            sde = dataclasses.replace(base, N=steps)
            if isinstance(sde, VPSDE) and sde.beta_max / steps >= 1:
                continue  # the DDPM chain needs beta_max / N < 1
            run = jax.jit(lambda k, sde=sde: pc_sampler(k, mixture_score_fn(mix, sde), sde,
                                                        (n, 2), snr=0.05))
            quality, nfe = [], 0
            for s in range(seeds):
                x, nfe = run(jax.random.key(s))
                quality.append(float(mmd(x)))
            pc_curve.append((int(nfe), float(np.mean(quality))))
        for tol in tols:
            run = jax.jit(lambda k, tol=tol: ode_sampler(k, score_fn, base, (n, 2), rtol=tol,
                                                         atol=tol))
            quality, nfes = [], []
            for s in range(seeds):
                x, nfe = run(jax.random.key(s))
                quality.append(float(mmd(x)))
                nfes.append(int(nfe))
            ode_curve.append((float(np.mean(nfes)), float(np.mean(quality))))
        ode_curve.sort()
        nfe_pc = _nfe_at(pc_curve, target)
        nfe_ode = _nfe_at(ode_curve, target)
        results[f"{sde_name}_nfe_pc_at_target"] = nfe_pc
        results[f"{sde_name}_nfe_ode_at_target"] = nfe_ode
        results[f"{sde_name}_nfe_ratio_ode_over_pc"] = nfe_ode / nfe_pc
        results[f"{sde_name}_pc_curve"] = pc_curve
        results[f"{sde_name}_ode_curve"] = ode_curve
    return results
