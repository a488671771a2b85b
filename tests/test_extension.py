"""The registry promise, proved from outside the package: a researcher's new SDE,
predictor, preference loss, matcher and recipe, registered without editing library
code, are used by name by the library and pass their family's shared suite.

How the shared suites are reached. Each test registers its entries inside
:func:`registered`, which removes them again on exit (``Registry.unregister``), so
every other test sees the original registries whatever the test order. The family's
shared suite is then run on the new entry by calling the suite's own code:

* generative: the suites are plain functions (``SDE_CHECKS`` in
  ``tests/generative/test_sde.py``, ``PREDICTOR_CHECKS`` in
  ``tests/generative/test_sampling.py``), the very functions those modules run on every
  built-in entry;
* rl.preference and vision.matching: :func:`shared_suite` finds the tests of the
  family's test module that are parametrised over the registry's names and runs each
  of them (over its other parameters too) with the new name.

Parametrising the suites over ``names()`` at import time instead would only cover an
entry registered before the suite's module is imported, and would leave the entry
registered for the whole session.
"""

import contextlib
import dataclasses
import functools
import inspect
import itertools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common.checks import per_sample
from common.cli import main as jaxatlas
from common.recipe import RECIPES, register_recipe, run_recipe
from generative.losses import ddpm_loss
from generative.sampling import PREDICTORS, Predictor, pc_sampler
from generative.sde import SDE, SDES, get_sde
from rl.preference import PREFERENCE_LOSSES, preference_loss, register_preference_loss
from tests.generative import test_sampling as sampling_suite
from tests.generative import test_sde as sde_suite
from tests.generative.closed_form import isotropic_score_fn
from tests.rl.preference import numpy_reference
from tests.rl.preference import test_losses as preference_suite
from tests.tolerances import F32, F64, assert_close
from tests.vision import test_matching as matching_suite
from vision.matching import MATCHERS, linear_sum_assignment

MU = np.array([1.0, -2.0])
S2 = 0.25


@contextlib.contextmanager
def registered(registry, name, register):
    """Call ``register()`` (a ``Registry.add`` or a family's decorator) on entry; always
    remove ``name`` from ``registry`` again on exit."""
    register()
    try:
        yield
    finally:
        registry.unregister(name)


def shared_suite(module, argname, name):
    """Run every test of ``module`` parametrised over ``argname`` (the family's name
    argument) with ``argname=name``, over the product of its other parameters; tests
    asking for the ``x64`` fixture run in float64. Returns the tests' names."""
    ran = []
    for test_name, fn in sorted(vars(module).items()):
        marks = [m for m in getattr(fn, "pytestmark", []) if m.name == "parametrize"]
        grids = [_parameter_grid(m) for m in marks]
        if not test_name.startswith("test_") or (argname,) not in [g[0] for g in grids]:
            continue
        others = [g for g in grids if g[0] != (argname,)]
        fixtures = set(inspect.signature(fn).parameters) - {argname} - {
            a for names, _ in others for a in names}
        assert fixtures <= {"x64"}, f"{test_name} needs fixtures {fixtures}"
        extra = {"x64": None} if "x64" in fixtures else {}
        for combo in itertools.product(*(values for _, values in others)):
            kwargs = {argname: name, **extra}
            for (names, _), values in zip(others, combo, strict=True):
                kwargs.update(zip(names, values, strict=True))
            with _x64(bool(extra)):
                fn(**kwargs)
        ran.append(test_name)
    return ran


def _parameter_grid(mark):
    """``(argnames tuple, [values tuple, ...])`` of one ``parametrize`` mark."""
    argnames, values = mark.args[0], list(mark.args[1])
    names = tuple(a.strip() for a in argnames.split(",")) if isinstance(argnames, str) \
        else tuple(argnames)
    return names, [(v,) for v in values] if len(names) == 1 else [tuple(v) for v in values]


@contextlib.contextmanager
def _x64(enable):
    previous = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", enable or previous)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


# ----------------------------------------------------------------------------- (a) an SDE


@dataclasses.dataclass(frozen=True)
class CosineVPSDE(SDE):
    """VP SDE with a cosine-ramped β and its own DDPM chain (a researcher's new SDE).

    ``β(t) = β_min + (β_max − β_min)(1 − cos πt)/2``, ``dx = −½ β x dt + √β dw``,
    ``log m(t) = −½ ∫₀ᵗ β = −½ [β_min t + ½ (β_max − β_min)(t − sin(πt)/π)]``,
    ``p_{0t} = N(m x₀, (1 − m²) I)``; chain ``β_i = β(i / (N − 1)) / N``.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    N: int = 1000

    def beta(self, t):
        return self.beta_min + (self.beta_max - self.beta_min) * 0.5 * (1.0 - jnp.cos(jnp.pi * t))

    def _log_mean_coeff(self, t):
        ramp = t - jnp.sin(jnp.pi * t) / jnp.pi
        return -0.5 * (self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * ramp)

    def _sde(self, x, t):
        beta = self.beta(t)
        return -0.5 * per_sample(beta, x) * x, jnp.sqrt(beta)

    def _marginal(self, x, t):
        lmc = self._log_mean_coeff(t)
        return per_sample(jnp.exp(lmc), x) * x, jnp.sqrt(-jnp.expm1(2.0 * lmc))

    def prior_sampling(self, key, shape, dtype=jnp.float32):
        return jax.random.normal(key, tuple(shape), dtype)

    def prior_logp(self, z):
        flat = z.reshape(z.shape[0], -1)
        return -0.5 * flat.shape[1] * math.log(2 * math.pi) - 0.5 * jnp.sum(flat**2, axis=-1)

    def _chain_betas(self, i):
        return self.beta(i / (self.N - 1)) / self.N

    def _ancestral_step(self, x, t, score):
        beta = self._chain_betas(self.timestep(t).astype(x.dtype))
        x_mean = (x + per_sample(beta, x) * score) / per_sample(jnp.sqrt(1.0 - beta), x)
        return x_mean, jnp.sqrt(beta)

    @functools.cached_property
    def alphas_cumprod(self):
        """Opts in to ``ddpm_loss``: ``ᾱ_i = ∏_{j ≤ i} (1 − β_j)``."""
        return np.cumprod(1.0 - np.asarray(self._chain_betas(np.arange(self.N, dtype=float))))


def _check_gaussian_samples(x, mean_tol=0.05, var_rtol=0.1):
    x = np.asarray(x)
    np.testing.assert_allclose(x.mean(0), MU, atol=mean_tol)
    np.testing.assert_allclose(x.var(0), [S2, S2], rtol=var_rtol)


@pytest.mark.parametrize("check", sde_suite.SDE_CHECKS, ids=lambda c: c.__name__)
def test_new_sde_passes_the_shared_sde_suite(check, x64):
    with registered(SDES, "cosine_vp", lambda: SDES.add("cosine_vp", CosineVPSDE)):
        check(get_sde("cosine_vp"))
    assert "cosine_vp" not in SDES


@pytest.mark.parametrize("predictor", ["ancestral_sampling", "reverse_diffusion"])
def test_new_sde_is_sampled_by_pc_sampler(predictor):
    sde = CosineVPSDE(N=200)
    score_fn = isotropic_score_fn(sde, MU, S2)
    x, nfe = jax.jit(lambda k: pc_sampler(k, score_fn, sde, (4000, 2), predictor=predictor,
                                          corrector="langevin"))(jax.random.key(0))
    _check_gaussian_samples(x)
    assert nfe == 400


def test_new_sde_opts_in_to_ddpm_loss(x64):
    sde = CosineVPSDE(N=50)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 2)))
    eps_fn = lambda y, t: 0.5 * y + t[:, None]
    key = jax.random.key(1)
    i_key, z_key = jax.random.split(key)
    idx = np.asarray(jax.random.randint(i_key, (6,), 0, 50))
    z = np.asarray(jax.random.normal(z_key, x.shape, jnp.float64))
    beta = (0.1 + 19.9 * 0.5 * (1 - np.cos(np.pi * np.arange(50) / 49))) / 50
    abar = np.cumprod(1 - beta)[idx][:, None]
    xt = np.sqrt(abar) * np.asarray(x) + np.sqrt(1 - abar) * z
    want = np.mean((0.5 * xt + idx[:, None] / 49 - z) ** 2)
    assert_close(ddpm_loss(eps_fn, sde, x, key), want, F64)


# ----------------------------------------------------------------------------- (b) a predictor


class HeunPredictor(Predictor):
    """Stochastic Heun step of the reverse SDE: an Euler–Maruyama proposal, then the
    average of the drifts at both ends with the same noise (two score evaluations)."""

    evals_per_step = 2

    def update(self, key, x, t):
        dt = 1.0 / self.rsde.N
        drift, g = self.rsde.sde(x, t)
        noise = per_sample(g, x) * math.sqrt(dt) * jax.random.normal(key, x.shape, x.dtype)
        proposal = x - drift * dt + noise
        end_drift, _ = self.rsde.sde(proposal, jnp.maximum(t - dt, 0.0))
        x_mean = x - 0.5 * (drift + end_drift) * dt
        return x_mean + noise, x_mean


@pytest.mark.parametrize("check", sampling_suite.PREDICTOR_CHECKS, ids=lambda c: c.__name__)
def test_new_predictor_passes_the_shared_predictor_suite(check):
    with registered(PREDICTORS, "heun", lambda: PREDICTORS.add("heun", HeunPredictor)):
        check("heun")


def test_new_predictor_is_used_by_pc_sampler_by_name():
    with registered(PREDICTORS, "heun", lambda: PREDICTORS.add("heun", HeunPredictor)):
        sde = CosineVPSDE(N=200)
        score_fn = isotropic_score_fn(sde, MU, S2)
        x, nfe = jax.jit(lambda k: pc_sampler(k, score_fn, sde, (4000, 2), predictor="heun",
                                              corrector="none"))(jax.random.key(2))
    _check_gaussian_samples(x)
    assert nfe == 400
    assert "heun" not in PREDICTORS


# ------------------------------------------------------------------------ (c) a preference loss


def _shifted_sigmoid(x, *, beta, label_smoothing):
    """``−log σ(β (Δ − 1))``: DPO asking for a log-ratio margin of 1."""
    return -jax.nn.log_sigmoid(beta * (x.logits - 1.0))


def _shifted_sigmoid_numpy(pc, pr, rc, rr, lc, lr, beta, ls):
    return -numpy_reference.log_sigmoid(beta * ((pc - pr) - (rc - rr) - 1.0))


def test_new_preference_loss_by_name_and_shared_suite(monkeypatch):
    name = "shifted_sigmoid"
    monkeypatch.setitem(numpy_reference.REFERENCE, name, _shifted_sigmoid_numpy)
    with registered(PREFERENCE_LOSSES, name,
                    lambda: register_preference_loss(name, paper="test")(_shifted_sigmoid)):
        pc, pr, rc, rr = (jnp.asarray(v) for v in ([-3.0, -5.0], [-4.0, -2.0],
                                                   [-3.5, -4.0], [-3.0, -3.0]))
        got = preference_loss(pc, pr, rc, rr, loss_type=name, beta=0.5)
        logits = np.array([(-3.0 + 4.0) - (-3.5 + 3.0), (-5.0 + 2.0) - (-4.0 + 3.0)])
        assert_close(got, -numpy_reference.log_sigmoid(0.5 * (logits - 1.0)), F32)
        ran = shared_suite(preference_suite, "name", name)
    assert "test_loss_matches_numpy_formula" in ran and len(ran) >= 5
    assert name not in PREFERENCE_LOSSES


# ----------------------------------------------------------------------------- (d) a matcher


def _transposed_jv(cost, row_mask, col_mask):
    """Solve the transposed problem with ``jv`` and swap the two index vectors."""
    row_for_col, col_for_row = MATCHERS.get("jv")(cost.T, col_mask, row_mask)
    return col_for_row, row_for_col


@pytest.mark.slow  # heavy: runs under pytest -m slow
def test_new_matcher_by_name_and_shared_suite():
    with registered(MATCHERS, "transposed_jv",
                    lambda: MATCHERS.add("transposed_jv", _transposed_jv)):
        cost = jnp.array([[4.0, 1.0, 3.0], [2.0, 0.0, 5.0], [3.0, 2.0, 2.0]])
        rows, cols = linear_sum_assignment(cost, matcher="transposed_jv")
        assert rows.tolist() == [0, 1, 2] and cols.tolist() == [1, 0, 2]
        ran = shared_suite(matching_suite, "matcher", "transposed_jv")
    assert "test_random_costs_match_scipy" in ran and len(ran) >= 3
    assert "transposed_jv" not in MATCHERS


# ----------------------------------------------------------------------------- (e) a recipe


@dataclasses.dataclass(frozen=True)
class GaussianDemoConfig:
    steps: int = 100
    samples: int = 2000
    seed: int = 0


def _gaussian_demo(ctx, cfg: GaussianDemoConfig) -> dict:
    """Sample N(MU, S2 I) with the exact score through the new SDE; report the errors."""
    sde = CosineVPSDE(N=cfg.steps)
    x, nfe = pc_sampler(jax.random.key(cfg.seed), isotropic_score_fn(sde, MU, S2), sde,
                        (cfg.samples, 2), predictor="ancestral_sampling", corrector="none")
    x = np.asarray(x)
    return {"mean_error": float(np.abs(x.mean(0) - MU).max()),
            "std": float(x.std(0).mean()), "nfe": int(nfe)}


def test_new_recipe_is_listed_and_runs(tmp_path, capsys):
    name = "extension-gaussian-demo"
    register = lambda: register_recipe(name, "exact-score sampling with a new SDE",
                                       quick=GaussianDemoConfig(),
                                       full=GaussianDemoConfig(steps=1000))(_gaussian_demo)
    with registered(RECIPES, name, register):
        assert jaxatlas(["list"]) == 0
        listing = capsys.readouterr().out
        assert name in listing and "exact-score sampling with a new SDE" in listing
        run_dir, summary = run_recipe(name, overrides={"steps": "50"}, runs_root=tmp_path,
                                      progress=False)
    assert summary["nfe"] == 50 and summary["mean_error"] < 0.1
    assert abs(summary["std"] - math.sqrt(S2)) < 0.05
    assert json.loads((run_dir / "config.json").read_text())["config"]["steps"] == 50
    assert json.loads((run_dir / "summary.json").read_text())["nfe"] == 50
    assert (run_dir / "summary.md").exists()
    assert name not in RECIPES
