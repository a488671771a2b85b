"""Recipes and benchmarks: registration, tiny end-to-end runs, training resume."""

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import generative.benchmarks  # registers the benchmarks
import generative.recipes  # noqa: F401  (registers the recipes)
from common.bench import BENCHMARKS
from common.checkpoint import Checkpointer
from common.data import sample_batch
from common.recipe import RECIPES, run_recipe
from generative.data import load_digits_images, sample_toy
from generative.models import init_score_net
from generative.recipes.sde_2d import structure_metrics
from generative.recipes.sde_digits import _image_grid, histogram_bits_per_dim, sample_checks
from generative.sde import VPSDE
from generative.training import (
    TrainConfig,
    batched_log_likelihood,
    sde_loss_factory,
    train_score_net,
)
from tests.tolerances import BITWISE, assert_close


def test_registered():
    assert {"ncsn-toy", "sde-2d", "sde-digits"} <= set(RECIPES.names())
    assert {"generative-train-throughput", "generative-sampler-overhead",
            "generative-ode-vs-pc-nfe"} <= set(BENCHMARKS.names())


def _run(name, tmp_path, **overrides):
    run_dir, summary = run_recipe(name, overrides={k: str(v) for k, v in overrides.items()},
                                  runs_root=tmp_path, progress=False)
    saved = json.loads((run_dir / "summary.json").read_text())
    for fig in saved["figures"]:
        assert (run_dir / fig).stat().st_size > 1000
    assert (run_dir / "metrics.jsonl").exists()
    return run_dir, summary


@pytest.mark.slow  # heavy: runs under pytest -m slow
def test_ncsn_toy_tiny(tmp_path):
    _, summary = _run("ncsn-toy", tmp_path, **{
        "n_samples": 400, "langevin_steps": 100, "steps_each": 40, "hidden": 16,
        "train.steps": 40, "train.chunk_size": 20, "train.checkpoint_every": 40,
        "train.batch_size": 64, "train.optim.warmup_steps": 5})
    # with the exact score the annealed sampler finds the weights even in this tiny run
    assert abs(summary["weight_annealed_exact"] - 0.8) < 0.1
    assert summary["weight_plain_exact"] < summary["weight_annealed_exact"] - 0.1


@pytest.mark.slow
def test_sde_2d_tiny(tmp_path):
    _, summary = _run("sde-2d", tmp_path, **{
        "datasets": "checkerboard", "sdes": "ve", "n_train": 500, "n_test": 100,
        "n_samples": 100, "sampling_steps": 20, "density_grid": 3, "nll_batch": 100,
        "hidden": 16, "train.steps": 20, "train.chunk_size": 20,
        "train.checkpoint_every": 20, "train.batch_size": 64, "train.optim.warmup_steps": 5,
        "gaussian_check": False})  # the closed form is test_likelihood's (and costs compiles)
    for key in ("nll_checkerboard_ve", "swd_pc_checkerboard_ve", "swd_ode_checkerboard_ve",
                "mmd_pc_checkerboard_ve", "mmd_floor_checkerboard", "mmd_floor_sd_checkerboard"):
        assert np.isfinite(summary[key]), key
    for key in ("on_squares_pc_checkerboard_ve", "on_squares_ode_checkerboard_ve"):
        assert 0.0 <= summary[key] <= 1.0, key
    assert summary["on_squares_data_checkerboard"] == 1.0
    assert summary["nfe_pc_checkerboard_ve"] == 40


@pytest.mark.slow
def test_sde_digits_tiny(tmp_path):
    _, summary = _run("sde-digits", tmp_path, **{
        "channels": 8, "grid_size": 2, "sampling_steps": 25, "nll_examples": 8,
        "nll_batch": 8, "nll_tol": 1e-2, "ode_tol": 1e-2, "train.steps": 10,
        "train.chunk_size": 5, "train.checkpoint_every": 5, "train.batch_size": 8,
        "train.optim.warmup_steps": 2})
    assert np.isfinite(summary["test_bits_per_dim"])
    for kind in ("pc", "ode"):
        assert 0.0 <= summary[f"far_fraction_{kind}"] <= 1.0
        assert 0.0 <= summary[f"speckled_fraction_{kind}"] <= 1.0


def test_sde_2d_structure_metrics():
    """Exact samples score as the data should; a ring and a uniform board do not."""
    exact = structure_metrics("eight_gaussians", sample_toy("eight_gaussians",
                                                            jax.random.key(0), 4000))
    assert exact["modes_covered"] == 8 and len(exact["mode_shares"]) == 8
    assert exact["in_modes"] > 0.98 and exact["in_modes_2sigma"] > 0.84
    angle = jnp.linspace(0.0, 2 * np.pi, 4000)
    ring = 2 * np.sqrt(2) * jnp.stack([jnp.cos(angle), jnp.sin(angle)], -1)
    assert structure_metrics("eight_gaussians", ring)["in_modes_2sigma"] < 0.7
    board = sample_toy("checkerboard", jax.random.key(1), 2000)
    assert structure_metrics("checkerboard", board) == {"on_squares": 1.0}
    uniform = jax.random.uniform(jax.random.key(2), (2000, 2), minval=-4.0, maxval=4.0)
    assert structure_metrics("checkerboard", uniform)["on_squares"] < 0.6
    assert structure_metrics("swiss_roll", board) == {}


def test_digits_sample_checks():
    """Held-out digits pass the checks (about 1% by construction); noise fails them."""
    data = load_digits_images()
    centres = lambda k: (k.astype(np.float32) + 0.5) / 17
    train, test = centres(data["x_train"]), centres(data["x_test"])
    own = sample_checks(test[:200], train, test)
    assert own["far_fraction"] <= 0.03 and own["speckled_fraction"] <= 0.03
    noise = np.random.default_rng(0).uniform(size=(50, 8, 8, 1)).astype(np.float32)
    bad = sample_checks(noise, train, test)
    assert bad["far_fraction"] == 1.0 and bad["speckled_fraction"] == 1.0
    assert bad["nn_distance"] > own["nn_distance"]


def test_training_resumes_bitwise(tmp_path):
    """40 steps saving at 20 and 40; drop step 40; resuming from 20 ends bitwise equal
    (parameters and their EMA)."""
    sde = VPSDE()
    data = {"x": jax.random.normal(jax.random.key(0), (256, 2))}
    batch_fn = lambda d, k: sample_batch(d, k, 32)
    cfg = TrainConfig(steps=40, batch_size=32, chunk_size=20, checkpoint_every=20,
                      ema_decay=0.9)
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, warmup_steps=5))

    def train(ckpt):
        model = init_score_net("mlp", jax.random.key(1), dim=2, hidden=16, depth=1,
                               embed_dim=8)
        return train_score_net(model, sde_loss_factory(sde), cfg, key=jax.random.key(2),
                               data=data, batch_fn=batch_fn, checkpointer=ckpt)

    with Checkpointer(tmp_path / "ckpt", max_to_keep=None) as ckpt:
        full = train(ckpt)
        assert ckpt.all_steps() == [20, 40]
    shutil.rmtree(tmp_path / "ckpt" / "40")  # as if the run had stopped after step 20
    with Checkpointer(tmp_path / "ckpt", max_to_keep=None) as ckpt:
        assert ckpt.latest_step() == 20
        resumed = train(ckpt)
    assert int(resumed.step) == 40
    for name in ("params", "ema"):
        a = full.params if name == "params" else full.ema
        b = resumed.params if name == "params" else resumed.ema
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            assert_close(x, y, BITWISE, err_msg=name)
    # the EMA trails the parameters
    diffs = [float(jnp.max(jnp.abs(a - b))) for a, b in
             zip(jax.tree.leaves(full.params), jax.tree.leaves(full.ema), strict=True)]
    assert max(diffs) > 0


def test_batched_log_likelihood_pads_and_matches_one_batch():
    model = init_score_net("mlp", jax.random.key(0), dim=2, hidden=8, depth=1, embed_dim=8)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    x = jax.random.normal(jax.random.key(1), (5, 2))
    kw = dict(graphdef=graphdef, sde=VPSDE(), rtol=1e-6, atol=1e-6)
    one, _ = batched_log_likelihood(jax.random.key(2), params, rest, x, batch_size=8, **kw)
    assert one.shape == (5,)
    ref, _ = batched_log_likelihood(jax.random.key(2), params, rest, x[:3], batch_size=3,
                                    **kw)
    assert_close(one[:3], ref, dict(rtol=1e-4, atol=1e-4))


def test_digits_helpers():
    train = np.array([[[0, 1]], [[0, 2]], [[1, 2]]])[..., None]  # [3, 1, 2, 1]
    test = np.array([[[0, 2]]])[..., None]
    # pixel 0: counts (1+2, 1+1, 1) / 6 over 3 levels; pixel 1: (1, 1+1, 1+2) / 6
    expected = -(np.log2(3 / 6) + np.log2(3 / 6)) / 2
    assert histogram_bits_per_dim(train, test, 3) == pytest.approx(expected)
    canvas = _image_grid(np.ones((3, 2, 2, 1)), rows=2)
    assert canvas.shape == (5, 5) and canvas.sum() == 12
