"""Benchmarks of the common package; importing this module registers them.

* ``train-loop``: the scanned training chunk (``common.train.make_train_chunk``)
  against the reference path, a Python loop dispatching one jitted step per batch,
  on the digits MLP; steps/s, GFLOP/s and fraction of the matmul ceiling.
* ``optim-builder``: a step through ``build_optimizer`` against the same optax
  chain composed by hand (the builder should cost nothing: ratio ≈ 1).
"""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import optax

from common.bench import BenchContext, benchmark, time_call, time_interleaved
from common.data import load_digits_split, sample_batch
from common.optim import OptimConfig, build_optimizer, decay_mask
from common.train import TrainState, make_train_chunk, make_train_step, step_keys, train_step_fn


def _mlp_flops_per_step(batch: int, sizes: list[int]) -> float:
    """Matmul flops of one forward+backward pass: 3 × 2·B·Σ d_in·d_out."""
    return 3.0 * 2.0 * batch * sum(a * b for a, b in itertools.pairwise(sizes))


@benchmark("train-loop", "digits MLP: scanned train chunk vs one jitted step per host call")
def bench_train_loop(ctx: BenchContext) -> dict:
    from common.recipes.digits_mlp import DigitsConfig, make_loss_fn, make_model

    cfg = DigitsConfig(dropout=0.0, batch_size=128, hidden=(256, 256))
    steps = 200 if ctx.quick else 1000
    data = load_digits_split()
    train = {"x": jnp.asarray(data["x_train"]), "y": jnp.asarray(data["y_train"])}
    tx = build_optimizer(dataclasses.replace(cfg.optim, total_steps=10**6))
    state0 = TrainState.create(make_model(cfg, jax.random.key(0)), tx, jax.random.key(1))
    loss_fn = make_loss_fn(state0.graphdef)
    batch_fn = jax.jit(lambda d, k: sample_batch(d, k, cfg.batch_size))

    chunk = make_train_chunk(train_step_fn(loss_fn, tx), lambda d, k: sample_batch(
        d, k, cfg.batch_size), steps, donate=False)
    step = make_train_step(loss_fn, tx, donate=False)

    def python_loop(state):
        for _ in range(steps):
            batch_key, _ = step_keys(state)
            state, _metrics = step(state, batch_fn(train, batch_key))
        return state.params

    times = time_interleaved({"scanned": lambda: chunk(state0, train)[0].params,
                              "looped": lambda: python_loop(state0)}, rounds=5, warmup=1)
    scanned, looped = times["scanned"], times["looped"]
    flops = _mlp_flops_per_step(cfg.batch_size, [64, *cfg.hidden, 10]) * steps
    gflops = flops / scanned.median / 1e9
    return {
        "steps": steps,
        "scan_steps_per_second": steps / scanned.median,
        "python_loop_steps_per_second": steps / looped.median,
        "scan_speedup_vs_python_loop": looped.median / scanned.median,
        "scan_gflops": gflops,
        "fraction_of_matmul_ceiling": ctx.fraction_of_ceiling(gflops),
    }


@benchmark("optim-builder", "build_optimizer vs the same optax chain composed by hand")
def bench_optim_builder(ctx: BenchContext) -> dict:
    n = 256 if ctx.quick else 1024
    keys = jax.random.split(jax.random.key(0), 4)
    params = {"w1": jax.random.normal(keys[0], (n, n)), "b1": jnp.zeros(n),
              "w2": jax.random.normal(keys[1], (n, n)), "b2": jnp.zeros(n)}
    grads = jax.tree.map(lambda p: 0.01 * jnp.ones_like(p), params)
    config = OptimConfig(name="adamw", learning_rate=1e-3, schedule="cosine", warmup_steps=10,
                         total_steps=1000, weight_decay=0.01, clip_norm=1.0)
    built = build_optimizer(config)
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, 1e-3, 10), optax.cosine_decay_schedule(1e-3, 990)], [10])
    by_hand = optax.chain(optax.clip_by_global_norm(1.0),
                          optax.adamw(schedule, weight_decay=0.01, mask=decay_mask))

    def runner(tx):
        @jax.jit
        def run(params):
            def body(carry, _):
                p, s = carry
                updates, s = tx.update(grads, s, p)
                return (optax.apply_updates(p, updates), s), None

            (p, _), _ = jax.lax.scan(body, (params, tx.init(params)), None, length=50)
            return p

        return run

    run_built, run_hand = runner(built), runner(by_hand)
    times = time_interleaved({"built": lambda: run_built(params),
                              "hand": lambda: run_hand(params)}, rounds=7, warmup=1)
    t_built, t_hand = times["built"], times["hand"]
    return {
        "params": 2 * n * n + 2 * n,
        "builder_updates_per_second": 50 / t_built.median,
        "hand_composed_updates_per_second": 50 / t_hand.median,
        "builder_time_over_hand_composed": t_built.median / t_hand.median,
    }


@benchmark("ensemble-fit", "random forest and gradient boosting on digits vs scikit-learn "
                           "(single-threaded); vmapped fit scaling with members")
def bench_ensemble_fit(ctx: BenchContext) -> dict:
    """Fit and predict times of ``common.ensemble`` against scikit-learn on the same data
    and hyperparameters (``n_jobs=1``), as ratios (ours / scikit-learn; < 1: faster), and
    the time per member of one vmapped random-forest fit as the member count grows."""
    import time

    from sklearn.datasets import load_digits
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier

    from common.ensemble import make

    X_np, y_np = load_digits(return_X_y=True)
    X_np = X_np.astype("float32")
    X, y = jnp.asarray(X_np), jnp.asarray(y_np)
    n_trees = 25 if ctx.quick else 100
    n_stages = 25 if ctx.quick else 100
    repeats = 2 if ctx.quick else 3
    depth = 10
    key = jax.random.key(0)
    results: dict = {"n_trees": n_trees, "n_stages": n_stages, "forest_max_depth": depth}

    forest = make("random_forest", n_estimators=n_trees, max_depth=depth, n_classes=10)
    boosting = make("gradient_boosting", n_estimators=n_stages, max_depth=3, n_classes=10)
    for label, est, ref in (
            ("random_forest", forest, RandomForestClassifier(
                n_estimators=n_trees, max_depth=depth, n_jobs=1, random_state=0)),
            ("gradient_boosting", boosting, GradientBoostingClassifier(
                n_estimators=n_stages, max_depth=3, random_state=0))):
        t0 = time.perf_counter()
        params = jax.block_until_ready(est.fit(key, X, y))
        first = time.perf_counter() - t0
        fits = time_interleaved({"ours": lambda est=est: est.fit(key, X, y),
                                 "sklearn": lambda ref=ref: ref.fit(X_np, y_np)},
                                rounds=repeats, warmup=0)
        predicts = time_interleaved({"ours": lambda est=est, p=params: est.predict(p, X),
                                     "sklearn": lambda ref=ref: ref.predict(X_np)},
                                    rounds=5, warmup=1)
        fit, predict = fits["ours"], predicts["ours"]
        ref_fit, ref_predict = fits["sklearn"].median, predicts["sklearn"].median
        results[f"{label}_fit_seconds"] = fit.median
        results[f"{label}_compile_seconds"] = max(first - fit.median, 0.0)
        results[f"{label}_sklearn_fit_seconds"] = ref_fit
        results[f"{label}_fit_over_sklearn"] = fit.median / ref_fit
        results[f"{label}_predict_over_sklearn"] = predict.median / ref_predict
        results[f"{label}_train_accuracy"] = float(jnp.mean(est.predict(params, X) == y))
        results[f"{label}_sklearn_train_accuracy"] = float(ref.score(X_np, y_np))
    for members in ((1, 4, 16) if ctx.quick else (1, 4, 16, 64)):
        est = make("random_forest", n_estimators=members, max_depth=8, n_classes=10)
        timing = time_call(est.fit, key, X, y, warmup=1, repeats=repeats)
        results[f"vmapped_fit_seconds_per_member_M{members}"] = timing.median / members
    return results
