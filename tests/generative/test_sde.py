"""SDEs: the shared suite every registered SDE runs, then VP, sub-VP and VE against
hand-written coefficients and the moment ODEs.

The shared suite is :data:`SDE_CHECKS`, plain functions ``check(sde)`` run by
:func:`test_shared_sde_suite` on ``SDES.get(name)()`` for every name in ``SDES.names()``
(collected when this module is imported). An entry must be a dataclass constructible
with defaults and with an ``N`` field. ``tests/test_extension.py`` calls the same
functions on an SDE it registers for the duration of one test.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import multivariate_normal

from common.registry import UnknownNameError
from generative.sde import SDES, VESDE, VPSDE, get_sde, make_score_fn, subVPSDE
from tests.generative.closed_form import coefficients, kernel_moments
from tests.tolerances import F32, F64, assert_close

KINDS = {"vp": VPSDE, "subvp": subVPSDE, "ve": VESDE}
TIMES = np.array([0.0, 1e-3, 0.1, 0.37, 0.8, 1.0])

# ----------------------------------------------------------------------------- shared suite


def _mc_tol(scale, n):
    """Five Monte Carlo standard errors of a mean of ``n`` draws of spread ``scale``."""
    return 5.0 * np.asarray(scale) / math.sqrt(n)


def check_marginal_by_simulation(sde):
    """Euler–Maruyama paths of ``dx = f dt + g dw`` (from ``sde.sde``) started in the
    kernel at ``t = 0`` (mean ``x_0``, std ``marginal_prob``'s) reproduce
    ``marginal_prob`` at ``t = 0.5``: mean and std."""
    B, steps, t1 = 40000, 500, 0.5
    x0 = jnp.broadcast_to(jnp.asarray([2.0, -4.0]), (B, 2))
    mean0, std0 = sde.marginal_prob(x0, jnp.zeros(B))
    assert_close(mean0, x0, F64)
    init_key, path_key = jax.random.split(jax.random.key(0))
    x = x0 + std0[:, None] * jax.random.normal(init_key, x0.shape, x0.dtype)
    dt = t1 / steps

    def body(x, k):
        drift, g = sde.sde(x, jnp.full((B,), k * dt, x.dtype))
        z = jax.random.normal(jax.random.fold_in(path_key, k), x.shape, x.dtype)
        return x + drift * dt + g[:, None] * math.sqrt(dt) * z, None

    x, _ = jax.jit(lambda x: jax.lax.scan(body, x, jnp.arange(steps)))(x)
    mean, std = (np.asarray(v)[0] for v in sde.marginal_prob(x0[:1], jnp.full((1,), t1)))
    x = np.asarray(x)
    bias = 0.01 * (std + np.abs(mean).max())  # Euler–Maruyama error, O(dt)
    np.testing.assert_allclose(x.mean(0), mean, atol=_mc_tol(std, B) + bias)
    np.testing.assert_allclose(x.std(0), [std, std], rtol=0.04)


def check_prior(sde):
    """``prior_sampling`` has the requested shape and dtype and is the forward marginal
    at ``T`` from ``x_0 = 0``; ``prior_logp`` is ``[B]``, normalised and is the density
    of the samples (1-D histogram)."""
    for shape in ((3, 2, 4), (1, 5)):
        z = sde.prior_sampling(jax.random.key(0), shape, jnp.float32)
        assert z.shape == shape and z.dtype == jnp.float32
        logp = sde.prior_logp(z)
        assert logp.shape == (shape[0],) and np.all(np.isfinite(np.asarray(logp)))
    B = 20000
    z = np.asarray(sde.prior_sampling(jax.random.key(1), (B, 1), jnp.float64))[:, 0]
    _, std_T = sde.marginal_prob(jnp.zeros((1, 1)), jnp.full((1,), sde.T))
    std_T = float(std_T[0])
    assert abs(z.mean()) < _mc_tol(std_T, B)
    assert abs(z.std() / std_T - 1.0) < 0.03
    grid = np.linspace(-12 * std_T, 12 * std_T, 4001)
    density = np.exp(np.asarray(sde.prior_logp(jnp.asarray(grid[:, None]))))
    assert abs(np.sum(density) * (grid[1] - grid[0]) - 1.0) < 1e-3
    counts, edges = np.histogram(z, bins=16, range=(-2 * std_T, 2 * std_T))
    centres = 0.5 * (edges[1:] + edges[:-1])
    hist = counts / (B * (edges[1] - edges[0]))
    model = np.exp(np.asarray(sde.prior_logp(jnp.asarray(centres[:, None]))))
    np.testing.assert_allclose(hist, model, atol=0.08 * model.max())


def check_discretize_limit(sde):
    """As ``N`` grows, ``discretize`` tends to Euler–Maruyama: ``N f → drift``,
    ``N G² → g²`` (relative error O(1/N))."""
    N = 20000
    fine = dataclasses.replace(sde, N=N)
    x = jnp.asarray(np.random.default_rng(3).normal(size=(3, 2, 2)))
    t = jnp.asarray([0.2, 0.5, 0.8])
    f, G = fine.discretize(x, t)
    drift, g = fine.sde(x, t)
    assert f.shape == x.shape and G.shape == (3,)
    scale = float(jnp.max(jnp.abs(drift))) + 1e-12
    np.testing.assert_allclose(N * np.asarray(f), drift, rtol=1e-2, atol=1e-2 * scale)
    np.testing.assert_allclose(N * np.asarray(G) ** 2, np.asarray(g) ** 2, rtol=1e-2)


def _linear_score(y, s):
    return -2.0 * y * (1.0 + s).reshape((-1,) + (1,) * (y.ndim - 1))


def check_reverse(sde):
    """The reverse SDE and probability flow: ``f − w g² s`` with ``w = 1`` or ``½``,
    diffusion ``g`` or 0, for ``sde`` and ``discretize``; shapes kept, same ``N``."""
    x = jnp.asarray(np.random.default_rng(2).normal(size=(3, 2, 2)))
    t = jnp.asarray([0.2, 0.5, 0.9])
    score = np.asarray(_linear_score(x, t))
    for pf, w in ((False, 1.0), (True, 0.5)):
        rsde = sde.reverse(_linear_score, probability_flow=pf)
        assert rsde.N == sde.N and rsde.T == sde.T
        for method in ("sde", "discretize"):
            rev_f, rev_g = getattr(rsde, method)(x, t)
            fwd_f, fwd_g = (np.asarray(v) for v in getattr(sde, method)(x, t))
            assert rev_f.shape == x.shape and rev_g.shape == (3,)
            assert_close(rev_f, fwd_f - w * (fwd_g**2)[:, None, None] * score, F64)
            assert_close(rev_g, np.zeros(3) if pf else fwd_g, F64)


def check_ancestral_step(sde):
    """With a discrete chain: ``(x_mean [B, ...], std [B])`` that agree with the reverse
    diffusion step ``(x − f̄, Ḡ)`` to first order in ``1/N``, jitted = eager; without
    one: a ``ValueError`` naming the SDE."""
    x = jnp.asarray(np.random.default_rng(4).normal(size=(3, 2, 2)))
    t = jnp.asarray([0.2, 0.5, 0.8])
    if not sde.has_ancestral_step:
        with pytest.raises(ValueError, match=f"{type(sde).__name__} has no discrete chain"):
            sde.ancestral_step(x, t, _linear_score(x, t))
        return
    fine = dataclasses.replace(sde, N=20000)
    x_mean, std = fine.ancestral_step(x, t, _linear_score(x, t))
    assert x_mean.shape == x.shape and std.shape == (3,)
    rev_f, rev_G = fine.reverse(_linear_score).discretize(x, t)
    step = -np.asarray(rev_f)
    np.testing.assert_allclose(x_mean - x, step, atol=0.02 * np.abs(step).max())
    np.testing.assert_allclose(std, rev_G, rtol=0.02)
    jitted = jax.jit(fine.ancestral_step)(x, t, _linear_score(x, t))
    assert_close(jitted[0], x_mean)
    assert_close(jitted[1], std)
    with pytest.raises(ValueError, match="score must have x's shape"):
        fine.ancestral_step(x, t, x[:, :1])


def check_jit_matches_eager(sde):
    x = jax.random.normal(jax.random.key(0), (5, 2, 2))
    t = jnp.linspace(0.0, 1.0, 5)
    for method in ("sde", "marginal_prob", "discretize"):
        eager = getattr(sde, method)(x, t)
        jitted = jax.jit(getattr(sde, method))(x, t)
        for a, b in zip(eager, jitted, strict=True):
            assert a.shape == b.shape
            assert_close(a, b)


def check_bad_inputs(sde):
    """Times outside ``[0, 1]`` and mismatched batches raise named errors (also in jit)."""
    x = jnp.ones((3, 2))
    for method in ("sde", "marginal_prob", "discretize"):
        with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
            getattr(sde, method)(x, jnp.asarray([0.1, 1.5, 0.2]))
        with pytest.raises(ValueError, match="share the batch size"):
            jax.jit(getattr(sde, method))(x, jnp.asarray([0.1, 0.2]))
        with pytest.raises(ValueError, match=r"t must have shape \[B\]"):
            getattr(sde, method)(x, 0.5 * jnp.ones((3, 1)))


SDE_CHECKS = (check_marginal_by_simulation, check_prior, check_discretize_limit,
              check_reverse, check_ancestral_step, check_jit_matches_eager, check_bad_inputs)


@pytest.mark.parametrize("check", SDE_CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
@pytest.mark.parametrize("name", SDES.names())
def test_shared_sde_suite(name, check, x64):
    check(SDES.get(name)())


# ----------------------------------------------------------------------------- VP, sub-VP, VE


@pytest.mark.parametrize("kind", ["vp", "subvp", "ve"])
def test_marginal_prob_matches_moment_odes(kind, x64):
    sde = KINDS[kind]()
    x = jnp.asarray(np.random.default_rng(0).normal(size=(len(TIMES), 3)))
    mean, std = sde.marginal_prob(x, jnp.asarray(TIMES))
    assert mean.shape == x.shape and std.shape == (len(TIMES),)
    for i, t in enumerate(TIMES):
        m, s = kernel_moments(kind, float(t))
        assert_close(mean[i], m * np.asarray(x[i]), dict(rtol=1e-9, atol=1e-12))
        assert_close(std[i], s, dict(rtol=1e-8, atol=1e-12))


@pytest.mark.parametrize("kind", ["vp", "subvp", "ve"])
def test_sde_coefficients_by_hand(kind, x64):
    sde = KINDS[kind]()
    x = jnp.asarray(np.random.default_rng(1).normal(size=(len(TIMES), 2, 3)))
    drift, diffusion = sde.sde(x, jnp.asarray(TIMES))
    assert drift.shape == x.shape and diffusion.shape == (len(TIMES),)
    for i, t in enumerate(TIMES):
        a, g2 = coefficients(kind, float(t))
        assert_close(drift[i], a * np.asarray(x[i]), F64)
        assert_close(diffusion[i] ** 2, g2, F64)


def test_vp_discretize_is_the_ddpm_chain(x64):
    sde = VPSDE()
    x = jnp.asarray([[1.0, -2.0], [0.5, 3.0], [2.0, 0.0]])
    t = jnp.asarray([0.0, 0.5, 1.0])
    f, G = sde.discretize(x, t)
    for row, ti in enumerate([0.0, 0.5, 1.0]):
        i = int(ti * 999)  # truncation, as score_sde
        beta = 0.1 / 1000 + i * (20.0 - 0.1) / (1000 * 999)
        assert_close(f[row], (math.sqrt(1 - beta) - 1) * np.asarray(x[row]), F64)
        assert_close(G[row], math.sqrt(beta), F64)
    assert_close(sde.alphas_cumprod[2], np.prod(1 - sde.discrete_betas[:3]), F64)


def test_ve_discretize_is_the_smld_chain(x64):
    sde = VESDE(N=10)
    x = jnp.ones((3, 2))
    t = jnp.asarray([0.0, 0.5, 1.0])
    f, G = sde.discretize(x, t)
    sig = [0.01 * 5000 ** (i / 9) for i in range(10)]
    assert_close(f, np.zeros((3, 2)), F64)
    assert_close(G[0], sig[0], F64)  # first level: sigma_0^2 - 0
    assert_close(G[1], math.sqrt(sig[4] ** 2 - sig[3] ** 2), F64)  # int(0.5 * 9) = 4
    assert_close(G[2], math.sqrt(sig[9] ** 2 - sig[8] ** 2), F64)


def test_subvp_discretize_is_euler_maruyama(x64):
    sde = subVPSDE(N=50)
    x = jnp.asarray([[1.0, 2.0]])
    t = jnp.asarray([0.3])
    f, G = sde.discretize(x, t)
    a, g2 = coefficients("subvp", 0.3)
    assert_close(f, a * np.asarray(x) / 50, F64)
    assert_close(G, [math.sqrt(g2 / 50)], F64)


@pytest.mark.parametrize("kind", ["vp", "ve"])
def test_prior_logp_matches_scipy(kind, x64):
    sde = KINDS[kind]()
    z = sde.prior_sampling(jax.random.key(0), (4, 2, 3), jnp.float64)
    logp = sde.prior_logp(z)
    var = 1.0 if kind == "vp" else 50.0**2
    ref = multivariate_normal(np.zeros(6), var * np.eye(6)).logpdf(np.asarray(z).reshape(4, 6))
    assert logp.shape == (4,)
    assert_close(logp, ref, F64)


def test_subvp_has_the_corrector_alphas():
    vp, sub = VPSDE(), subVPSDE()
    t = jnp.asarray([0.0, 0.5, 1.0])
    assert_close(sub.langevin_alpha(t), vp.langevin_alpha(t))
    assert_close(sub.langevin_alpha(t)[1], 1 - vp.discrete_betas[499], F32)
    assert_close(VESDE().langevin_alpha(t), np.ones(3))


def test_get_sde_and_make_score_fn():
    assert get_sde("ve", sigma_max=20.0) == VESDE(sigma_max=20.0)
    with pytest.raises(UnknownNameError, match="unknown sde 'vpp'; valid names: .*vp"):
        get_sde("vpp")
    sde = VPSDE()
    x = jnp.ones((2, 3))
    t = jnp.asarray([0.1, 0.9])
    score = make_score_fn(sde, lambda y, s: 2.0 * y)(x, t)
    _, std = sde.marginal_prob(x, t)
    assert_close(score, -2.0 * np.ones((2, 3)) / np.asarray(std)[:, None])
    # with data_std the network sees x / sqrt(m² σ_d² + std²)
    m = np.exp(-0.25 * np.asarray(t) ** 2 * 19.9 - 0.05 * np.asarray(t))
    c = 1.0 / np.sqrt(m**2 * 0.5**2 + np.asarray(std) ** 2)
    scaled = make_score_fn(sde, lambda y, s: 2.0 * y, data_std=0.5)(x, t)
    assert_close(scaled, -2.0 * (c / np.asarray(std))[:, None] * np.ones((2, 3)))
    with pytest.raises(ValueError, match="data_std must be finite and > 0"):
        make_score_fn(sde, lambda y, s: y, data_std=0.0)


def test_bad_inputs():
    sde = VPSDE()
    x = jnp.ones((3, 2))
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        sde.marginal_prob(x, jnp.asarray([0.1, 1.5, 0.2]))
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        sde.sde(x, jnp.asarray([-0.1, 0.5, 0.2]))
    with pytest.raises(ValueError, match="share the batch size"):
        sde.discretize(x, jnp.asarray([0.1, 0.2]))
    with pytest.raises(ValueError, match="share the batch size"):
        jax.jit(sde.sde)(x, jnp.asarray([0.1, 0.2]))  # shapes are checked at trace time
    with pytest.raises(ValueError, match=r"t must have shape \[B\]"):
        sde.sde(x, 0.5 * jnp.ones((3, 1)))
    with pytest.raises(ValueError, match="beta_min must be finite and > 0"):
        VPSDE(beta_min=0.0)
    with pytest.raises(ValueError, match="beta_max must be finite and > 0"):
        subVPSDE(beta_max=-1.0)
    with pytest.raises(ValueError, match="beta_max / N must be < 1"):
        VPSDE(beta_max=20.0, N=10).discretize(x, jnp.asarray([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="beta_max / N must be < 1"):
        VPSDE(beta_max=20.0, N=10).ancestral_step(x, jnp.asarray([0.1, 0.2, 0.3]), x)
    with pytest.raises(ValueError, match="beta_max / N must be < 1"):
        _ = VPSDE(beta_max=20.0, N=10).alphas_cumprod
    VPSDE(beta_max=20.0, N=10).sde(x, jnp.asarray([0.1, 0.2, 0.3]))  # fine without the chain
    with pytest.raises(ValueError, match="sigma_min must be finite and > 0"):
        VESDE(sigma_min=0.0)
    with pytest.raises(ValueError, match="sigma_max must exceed sigma_min"):
        VESDE(sigma_min=1.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="N .* integer >= 1"):
        VESDE(N=0)
    with pytest.raises(ValueError, match="batch-first"):
        sde.prior_sampling(jax.random.key(0), ())
