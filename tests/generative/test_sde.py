"""VP, sub-VP and VE SDEs against hand-written coefficients and the moment ODEs."""

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


@pytest.mark.parametrize("kind", ["vp", "subvp", "ve"])
def test_prior_sampling_moments(kind):
    sde = KINDS[kind]()
    z = np.asarray(sde.prior_sampling(jax.random.key(1), (20000, 2)))
    target = 1.0 if kind != "ve" else 50.0
    assert abs(z.mean()) < 0.03 * target
    assert abs(z.std() / target - 1) < 0.02


@pytest.mark.parametrize("pf", [False, True])
def test_reverse_sde_and_probability_flow(pf, x64):
    sde = VESDE()
    x = jnp.asarray(np.random.default_rng(2).normal(size=(3, 4)))
    t = jnp.asarray([0.2, 0.5, 0.9])
    score_fn = lambda y, s: -2.0 * y * s[:, None]
    rsde = sde.reverse(score_fn, probability_flow=pf)
    drift, diffusion = rsde.sde(x, t)
    f, g = sde.sde(x, t)
    w = 0.5 if pf else 1.0
    assert_close(drift, f - w * (g**2)[:, None] * score_fn(x, t), F64)
    assert_close(diffusion, np.zeros(3) if pf else g, F64)
    rf, rG = rsde.discretize(x, t)
    df, dG = sde.discretize(x, t)
    assert_close(rf, df - w * (dG**2)[:, None] * score_fn(x, t), F64)
    assert_close(rG, np.zeros(3) if pf else dG, F64)
    assert rsde.N == sde.N


def test_subvp_has_the_corrector_alphas():
    vp, sub = VPSDE(), subVPSDE()
    t = jnp.asarray([0.0, 0.5, 1.0])
    assert_close(sub.langevin_alpha(t), vp.langevin_alpha(t))
    assert_close(sub.langevin_alpha(t)[1], 1 - vp.discrete_betas[499], F32)
    assert_close(VESDE().langevin_alpha(t), np.ones(3))


def test_registry_and_make_score_fn():
    assert SDES.names() == ["subvp", "ve", "vp"]
    assert get_sde("ve", sigma_max=20.0) == VESDE(sigma_max=20.0)
    with pytest.raises(UnknownNameError, match="valid names: subvp, ve, vp"):
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


def test_jit_matches_eager():
    sde = subVPSDE()
    x = jax.random.normal(jax.random.key(0), (5, 2, 2))
    t = jnp.linspace(0.0, 1.0, 5)
    for method in ("sde", "marginal_prob", "discretize"):
        eager = getattr(sde, method)(x, t)
        jitted = jax.jit(getattr(sde, method))(x, t)
        for a, b in zip(eager, jitted, strict=True):
            assert_close(a, b)


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
    VPSDE(beta_max=20.0, N=10).sde(x, jnp.asarray([0.1, 0.2, 0.3]))  # fine without the chain
    with pytest.raises(ValueError, match="sigma_min must be finite and > 0"):
        VESDE(sigma_min=0.0)
    with pytest.raises(ValueError, match="sigma_max must exceed sigma_min"):
        VESDE(sigma_min=1.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="N .* integer >= 1"):
        VESDE(N=0)
    with pytest.raises(ValueError, match="batch-first"):
        sde.prior_sampling(jax.random.key(0), ())
