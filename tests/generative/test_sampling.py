"""Samplers driven by exact scores: the shared predictor and corrector suites, then
moments, mixture weights and one-step formulas.

The shared suites are :data:`PREDICTOR_CHECKS` and :data:`CORRECTOR_CHECKS`, plain
functions ``check(name)`` run on every name in ``PREDICTORS.names()`` and
``CORRECTORS.names()`` (collected when this module is imported); an entry is built as
``PREDICTORS.get(name)(sde, score_fn, probability_flow)`` or
``CORRECTORS.get(name)(sde, score_fn, snr, n_steps)``. ``tests/test_extension.py``
calls the same functions on a predictor it registers for the duration of one test.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.distance import pdist

from common.registry import UnknownNameError
from generative.data import GaussianMixture, ncsn_mixture
from generative.sampling import (
    CORRECTORS,
    PREDICTORS,
    annealed_langevin_dynamics,
    geometric_sigmas,
    langevin_dynamics,
    max_pairwise_distance,
    ncsn_num_levels,
    ode_sampler,
    pc_sampler,
)
from generative.sde import VESDE, VPSDE, make_score_fn, subVPSDE
from tests.generative.closed_form import isotropic_score_fn
from tests.tolerances import BITWISE, F32_LOOSE, F64, assert_close

MU = np.array([1.0, -2.0])
S2 = 0.25


# ----------------------------------------------------------------------------- shared suites

#: The SDEs the shared suites run on: both have a discrete chain (every predictor applies).
SUITE_SDES = (VPSDE(N=50), VESDE(sigma_max=20.0, N=50))


def _linear_score(y, s):
    return -y * (1.0 + s).reshape((-1,) + (1,) * (y.ndim - 1))


def _counting(score_fn, calls):
    """``score_fn`` that appends to ``calls`` each time it is evaluated (also in scans)."""

    def counted(x, t):
        jax.debug.callback(lambda: calls.append(1))
        return score_fn(x, t)

    return counted


def _moments_at(sde, t):
    """Mean ``[2]`` and variance of ``p_t`` for data ``N(MU, S2 I)``."""
    m, std = (float(np.asarray(v).ravel()[0])
              for v in sde.marginal_prob(jnp.ones((1, 1)), jnp.full((1,), t)))
    return m * MU, m**2 * S2 + std**2


def _gaussian_at(sde, t, n, key):
    """``n`` exact draws of ``p_t``, with its mean and variance."""
    mean, var = _moments_at(sde, t)
    z = jax.random.normal(key, (n, 2))
    return jnp.asarray(mean, z.dtype)[None] + math.sqrt(var) * z, mean, var


def _check_interface(build, n_evals):
    """Shapes, dtypes, determinism for a fixed key, jit = eager, score evaluations."""
    x = jax.random.normal(jax.random.key(0), (4, 3, 2))
    t = jnp.full((4,), 0.6)
    key = jax.random.key(1)
    calls = []
    entry = build(SUITE_SDES[0], _counting(_linear_score, calls))
    new, mean = entry.update(key, x, t)
    jax.effects_barrier()
    assert len(calls) == n_evals(entry), "evals_per_step must count the score calls"
    assert new.shape == mean.shape == x.shape and new.dtype == mean.dtype == x.dtype
    assert np.all(np.isfinite(np.asarray(new)))
    update = jax.jit(entry.update)
    for a, b, c in zip((new, mean), update(key, x, t), update(key, x, t), strict=True):
        assert_close(b, a, F32_LOOSE)  # jit = eager
        assert_close(c, b, BITWISE)  # same key, same result


def check_predictor_interface(name):
    _check_interface(lambda sde, fn: PREDICTORS.get(name)(sde, fn, False),
                     lambda entry: entry.evals_per_step)


def check_predictor_keeps_gaussian(name):
    """From exact draws of ``p_t`` one step with the exact score lands near
    ``p_{t − Δ}``, ``Δ = 1 / (N − 1)``: moment errors well below the step's own change
    (a predictor that makes no score evaluation must return ``x`` unchanged)."""
    n, t = 40000, 0.5
    for sde in SUITE_SDES:
        x, mean, var = _gaussian_at(sde, t, n, jax.random.key(2))
        entry = PREDICTORS.get(name)(sde, isotropic_score_fn(sde, MU, S2), False)
        new, _ = entry.update(jax.random.key(3), x, jnp.full((n,), t))
        if entry.evals_per_step == 0:
            assert_close(new, x, BITWISE)
            continue
        target_mean, target_var = _moments_at(sde, t - 1.0 / (sde.N - 1))
        new = np.asarray(new)
        mean_tol = 0.35 * np.abs(target_mean - mean).max() + 5 * math.sqrt(target_var / n)
        var_tol = 0.35 * abs(target_var / var - 1.0) + 5 * math.sqrt(2.0 / n)
        np.testing.assert_allclose(new.mean(0), target_mean, atol=mean_tol)
        np.testing.assert_allclose(new.var(0) / target_var, 1.0, atol=var_tol)


def check_corrector_interface(name):
    _check_interface(lambda sde, fn: CORRECTORS.get(name)(sde, fn, 0.16, 2),
                     lambda entry: entry.evals_per_step)


def check_corrector_keeps_gaussian(name):
    """A corrector step at fixed ``t`` with the exact score leaves ``p_t`` invariant up
    to its O(step²) bias: exact draws stay exact draws."""
    n, t = 100000, 0.5
    for sde in SUITE_SDES:
        x, mean, var = _gaussian_at(sde, t, n, jax.random.key(4))
        entry = CORRECTORS.get(name)(sde, isotropic_score_fn(sde, MU, S2), 0.16, 2)
        new = np.asarray(entry.update(jax.random.key(5), x, jnp.full((n,), t))[0])
        np.testing.assert_allclose(new.mean(0), mean, atol=5 * math.sqrt(var / n))
        np.testing.assert_allclose(new.var(0) / var, 1.0, atol=5 * math.sqrt(2.0 / n) + 0.01)


PREDICTOR_CHECKS = (check_predictor_interface, check_predictor_keeps_gaussian)
CORRECTOR_CHECKS = (check_corrector_interface, check_corrector_keeps_gaussian)


def _check_id(check):
    return check.__name__.removeprefix("check_")


@pytest.mark.parametrize("check", PREDICTOR_CHECKS, ids=_check_id)
@pytest.mark.parametrize("name", PREDICTORS.names())
def test_shared_predictor_suite(name, check):
    check(name)


@pytest.mark.parametrize("check", CORRECTOR_CHECKS, ids=_check_id)
@pytest.mark.parametrize("name", CORRECTORS.names())
def test_shared_corrector_suite(name, check):
    check(name)


# ----------------------------------------------------------------------------- samplers


def _check_moments(x, mean_tol=0.05, var_rtol=0.1):
    x = np.asarray(x)
    assert np.all(np.isfinite(x))
    np.testing.assert_allclose(x.mean(0), MU, atol=mean_tol)
    np.testing.assert_allclose(x.var(0), [S2, S2], rtol=var_rtol)


@pytest.mark.parametrize("sde,predictor,corrector,pf", [
    (VPSDE(N=200), "reverse_diffusion", "langevin", False),
    (subVPSDE(N=200), "euler_maruyama", "langevin", False),
    (subVPSDE(N=200), "reverse_diffusion", "ald", False),
    (VESDE(sigma_max=20.0, N=200), "ancestral_sampling", "langevin", False),
    (VPSDE(N=200), "ancestral_sampling", "none", False),
    (VPSDE(N=200), "euler_maruyama", "none", True),
], ids=["vp-rd-langevin", "subvp-em-langevin", "subvp-rd-ald", "ve-anc-langevin",
        "vp-anc-none", "vp-em-pf"])
def test_pc_sampler_reproduces_gaussian_moments(sde, predictor, corrector, pf):
    score_fn = isotropic_score_fn(sde, MU, S2)
    sample = jax.jit(lambda k: pc_sampler(k, score_fn, sde, (4000, 2), predictor=predictor,
                                          corrector=corrector, snr=0.16,
                                          probability_flow=pf))
    x, nfe = sample(jax.random.key(0))
    _check_moments(x)
    per_step = (predictor != "none") + (corrector != "none")
    assert int(nfe) == 200 * per_step


@pytest.mark.parametrize("sde", [VPSDE(), VESDE(sigma_max=20.0)], ids=["vp", "ve"])
def test_ode_sampler_reproduces_gaussian_moments(sde):
    score_fn = isotropic_score_fn(sde, MU, S2)
    x, nfe = jax.jit(lambda k: ode_sampler(k, score_fn, sde, (4000, 2)))(jax.random.key(1))
    _check_moments(x)
    assert 10 < int(nfe) < 1000


def test_ode_sampler_decodes_a_given_latent_deterministically():
    sde = VPSDE()
    score_fn = isotropic_score_fn(sde, MU, S2)
    z = jax.random.normal(jax.random.key(2), (8, 2))
    a, _ = ode_sampler(jax.random.key(3), score_fn, sde, (8, 2), z=z)
    b, _ = ode_sampler(jax.random.key(4), score_fn, sde, (8, 2), z=z)
    assert_close(a, b)
    # the flow of N(μ, s²I) is affine: (x_t − m_t μ) / sd_t is constant along it
    (m_e, m_T), (s_e, s_T) = (np.asarray(v) for v in sde.marginal_prob(
        jnp.ones((2, 1)), jnp.asarray([1e-3, 1.0])))
    sd_e, sd_T = (math.sqrt(m[0] ** 2 * S2 + s**2) for m, s in ((m_e, s_e), (m_T, s_T)))
    expected = m_e[0] * MU[None] + sd_e / sd_T * (np.asarray(z) - m_T[0] * MU[None])
    assert_close(a, expected, dict(rtol=1e-4, atol=1e-4))


def test_annealed_langevin_recovers_mixture_weights_and_langevin_does_not():
    mix = ncsn_mixture()  # 0.2 at (-5, -5), 0.8 at (5, 5)
    x0 = jax.random.uniform(jax.random.key(0), (4000, 2), minval=-8.0, maxval=8.0)
    plain = jax.jit(lambda k: langevin_dynamics(k, lambda x: mix.score(x), x0, step_size=0.1,
                                                n_steps=500))(jax.random.key(1))
    annealed = jax.jit(lambda k: annealed_langevin_dynamics(
        k, lambda x, s: mix.score(x, 1.0, s), x0, geometric_sigmas(20.0, 1.0, 10),
        step_lr=0.1, n_steps_each=100))(jax.random.key(1))
    w_plain = float(jnp.mean(plain.sum(-1) > 0))
    w_annealed = float(jnp.mean(annealed.sum(-1) > 0))
    assert abs(w_annealed - 0.8) < 0.04
    assert abs(w_plain - 0.5) < 0.05  # stuck with the initial basin split


def test_langevin_samples_a_gaussian():
    x = langevin_dynamics(jax.random.key(0), lambda y: -(y - 1.0) / 4.0, jnp.zeros((4000, 1)),
                          step_size=0.05, n_steps=2000)
    assert abs(float(x.mean()) - 1.0) < 0.1
    assert abs(float(x.var()) / 4.0 - 1.0) < 0.1


def test_annealed_langevin_schedule_by_hand(x64):
    """Two levels, one step each, score = -x: check α_i = ε σ_i²/σ_L² and denoising."""
    key = jax.random.key(5)
    x0 = jnp.asarray([[1.0, 2.0]])
    sigmas = jnp.asarray([2.0, 1.0])
    out = annealed_langevin_dynamics(key, lambda x, s: -x * s[:, None], x0, sigmas,
                                     step_lr=0.1, n_steps_each=1, denoise=True)
    x = np.asarray(x0)
    for k, sigma in enumerate([2.0, 1.0]):
        alpha = 0.1 * sigma**2 / 1.0
        z = np.asarray(jax.random.normal(jax.random.fold_in(key, k), (1, 2), jnp.float64))
        x = x + 0.5 * alpha * (-x * sigma) + math.sqrt(alpha) * z
    x = x + 1.0 * (-x * 1.0)
    assert_close(out, x, F64)


def _one_step(name, sde, x, t, key, score_fn, table, **kw):
    entry = table.get(name)(sde, score_fn, **kw)
    return entry.update(key, x, t)


def test_predictor_updates_by_hand(x64):
    x = jnp.asarray([[0.5, -1.0], [2.0, 0.3]])
    t = jnp.asarray([0.6, 0.6])
    key = jax.random.key(6)
    z = np.asarray(jax.random.normal(key, x.shape, jnp.float64))
    score_fn = lambda y, s: -y
    xn = np.asarray(x)
    # Euler–Maruyama on VP: dt = -1/N
    vp = VPSDE(N=100)
    beta = 0.1 + 0.6 * 19.9
    drift = -0.5 * beta * xn - beta * (-xn)
    new, mean = _one_step("euler_maruyama", vp, x, t, key, score_fn, PREDICTORS)
    assert_close(mean, xn - drift / 100, F64)
    assert_close(new, xn - drift / 100 + math.sqrt(beta) * math.sqrt(1 / 100) * z, F64)
    # reverse diffusion on VE: x_mean = x + G² s, G² = σ_i² − σ_{i−1}²
    ve = VESDE(N=100)
    i = int(0.6 * 99)
    sig = lambda j: 0.01 * 5000 ** (j / 99)
    g2 = sig(i) ** 2 - sig(i - 1) ** 2
    new, mean = _one_step("reverse_diffusion", ve, x, t, key, score_fn, PREDICTORS)
    assert_close(mean, xn + g2 * (-xn), F64)
    assert_close(new, xn + g2 * (-xn) + math.sqrt(g2) * z, F64)
    # ancestral on VP: (x + β_i s) / sqrt(1 − β_i) + sqrt(β_i) z
    b = 0.1 / 100 + i * 19.9 / (100 * 99)
    new, mean = _one_step("ancestral_sampling", vp, x, t, key, score_fn, PREDICTORS)
    assert_close(mean, (xn - b * xn) / math.sqrt(1 - b), F64)
    assert_close(new, (xn - b * xn) / math.sqrt(1 - b) + math.sqrt(b) * z, F64)
    # ancestral on VE
    std = math.sqrt(sig(i - 1) ** 2 * g2 / sig(i) ** 2)
    new, mean = _one_step("ancestral_sampling", ve, x, t, key, score_fn, PREDICTORS)
    assert_close(new, xn + g2 * (-xn) + std * z, F64)


@pytest.mark.parametrize("name", ["langevin", "ald"])
def test_corrector_step_sizes_by_hand(name, x64):
    sde = subVPSDE(N=100)  # score_sde's sub-VP crashed in both correctors
    x = jnp.asarray([[0.5, -1.0], [2.0, 0.3]])
    t = jnp.asarray([0.6, 0.6])
    key = jax.random.key(7)
    score_fn = lambda y, s: -2.0 * y
    corrector = CORRECTORS.get(name)(sde, score_fn, 0.16, 1)
    new, mean = corrector.update(key, x, t)
    xn = np.asarray(x)
    z = np.asarray(jax.random.normal(jax.random.fold_in(key, 0), x.shape, jnp.float64))
    alpha = 1 - (0.1 / 100 + int(0.6 * 99) * 19.9 / (100 * 99))
    grad = -2.0 * xn
    if name == "langevin":
        ratio = 0.16 * np.linalg.norm(z, axis=1).mean() / np.linalg.norm(grad, axis=1).mean()
        step = 2 * alpha * ratio**2
    else:
        lmc = -0.25 * 0.36 * 19.9 - 0.5 * 0.6 * 0.1
        step = 2 * alpha * (0.16 * (1 - math.exp(2 * lmc))) ** 2
    assert_close(mean, xn + step * grad, F64)
    assert_close(new, xn + step * grad + math.sqrt(2 * step) * z, F64)


def test_bad_names_and_inputs():
    sde = VPSDE(N=10)
    score_fn = lambda y, s: -y
    with pytest.raises(UnknownNameError, match="unknown predictor 'heun'; valid names"):
        pc_sampler(jax.random.key(0), score_fn, sde, (4, 2), predictor="heun")
    with pytest.raises(UnknownNameError, match="unknown corrector 'hmc'; valid names"):
        pc_sampler(jax.random.key(0), score_fn, sde, (4, 2), corrector="hmc")
    with pytest.raises(ValueError, match="subVPSDE has no discrete chain"):
        pc_sampler(jax.random.key(0), score_fn, subVPSDE(N=10), (4, 2),
                   predictor="ancestral_sampling")
    with pytest.raises(ValueError, match="snr must be finite and > 0"):
        pc_sampler(jax.random.key(0), score_fn, sde, (4, 2), snr=0.0)
    with pytest.raises(ValueError, match="x_init must have shape"):
        pc_sampler(jax.random.key(0), score_fn, sde, (4, 2), x_init=jnp.ones((3, 2)))
    with pytest.raises(ValueError, match="z must have shape"):
        ode_sampler(jax.random.key(0), score_fn, sde, (4, 2), z=jnp.ones((4, 3)))
    with pytest.raises(ValueError, match="sigmas must be finite and > 0"):
        annealed_langevin_dynamics(jax.random.key(0), lambda y, s: y, jnp.ones((2, 2)),
                                   jnp.asarray([1.0, -1.0]), step_lr=0.1, n_steps_each=1)


SCORE_SHAPE = r"score_fn must return an array of shape \[B, \.\.\.\] = \(4, 2\) \(x's shape\)"


@pytest.mark.parametrize("corrector", ["langevin", "ald", "none"])
def test_scalar_or_misshapen_scores_are_named_errors(corrector):
    """A scalar score used to raise IndexError in the Langevin corrector's norms, and
    plain/annealed Langevin broadcast it silently."""
    sde, key = VPSDE(N=50), jax.random.key(0)
    for bad in (lambda y, t: jnp.sum(y), lambda y, t: y[:, :1]):
        with pytest.raises(ValueError, match=SCORE_SHAPE):
            pc_sampler(key, bad, sde, (4, 2), corrector=corrector)
        with pytest.raises(ValueError, match=SCORE_SHAPE):
            annealed_langevin_dynamics(key, bad, jnp.ones((4, 2)), jnp.array([2.0, 1.0]),
                                       step_lr=0.1, n_steps_each=1)
        with pytest.raises(ValueError, match=SCORE_SHAPE):
            langevin_dynamics(key, lambda y: bad(y, None), jnp.ones((4, 2)), step_size=0.1,
                              n_steps=1)
    with pytest.raises(ValueError, match=SCORE_SHAPE + r", got shape \(\)"):
        ode_sampler(key, lambda y, t: jnp.sum(y), sde, (4, 2))


@pytest.mark.parametrize("sde", [VPSDE(N=50), subVPSDE(N=50)], ids=["vp", "subvp"])
def test_eps_zero_is_refused_where_the_marginal_std_vanishes(sde):
    """make_score_fn divides by std(t) = 0 at t = 0: pc_sampler(eps=0) returned all-NaN
    samples on VP and sub-VP."""
    score_fn = make_score_fn(sde, lambda y, t: 0.1 * y)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="eps must be > 0: the marginal std of"):
        pc_sampler(key, score_fn, sde, (4, 2), eps=0.0)
    with pytest.raises(ValueError, match="eps must be > 0"):
        ode_sampler(key, score_fn, sde, (4, 2), eps=0.0, denoise=True)
    x, _ = jax.jit(lambda k: pc_sampler(k, score_fn, sde, (4, 2), eps=1e-3))(key)
    assert np.all(np.isfinite(np.asarray(x)))


def test_eps_zero_is_allowed_where_the_marginal_std_does_not_vanish():
    sde = VESDE(sigma_max=20.0, N=50)  # σ(0) = σ_min > 0
    score_fn = make_score_fn(sde, lambda y, t: 0.1 * y)
    x, _ = jax.jit(lambda k: pc_sampler(k, score_fn, sde, (4, 2), eps=0.0))(jax.random.key(0))
    assert np.all(np.isfinite(np.asarray(x)))
    with pytest.raises(ValueError, match=r"eps must be in \[0, T\) = \[0, 1.0\), got -0.1"):
        pc_sampler(jax.random.key(0), score_fn, sde, (4, 2), eps=-0.1)


def test_noise_schedule_helpers():
    sig = np.asarray(geometric_sigmas(20.0, 1.0, 10))
    assert sig[0] == pytest.approx(20.0) and sig[-1] == pytest.approx(1.0)
    np.testing.assert_allclose(sig[1:] / sig[:-1], (1 / 20) ** (1 / 9), rtol=1e-5)
    assert np.asarray(geometric_sigmas(3.0, 3.0, 1)).tolist() == [3.0]
    with pytest.raises(ValueError, match="sigma_min must be <= sigma_max"):
        geometric_sigmas(1.0, 2.0, 3)
    with pytest.raises(ValueError, match="sigma_max must be finite and > 0"):
        geometric_sigmas(0.0, 0.0, 3)
    x = np.random.default_rng(0).normal(size=(301, 5)).astype(np.float32)
    assert float(max_pairwise_distance(jnp.asarray(x), block_size=64)) == pytest.approx(
        pdist(x).max(), rel=1e-4)
    assert float(max_pairwise_distance(jnp.ones((1, 3)))) == 0.0
    levels, gamma = ncsn_num_levels(3072, 50.0, 0.01)
    c = math.sqrt(2 * 3072) * (gamma - 1)
    phi = lambda v: 0.5 * (1 + math.erf(v / math.sqrt(2)))
    assert phi(c + 3 * gamma) - phi(c - 3 * gamma) == pytest.approx(0.5, abs=1e-6)
    assert levels == math.ceil(math.log(5000) / math.log(gamma)) + 1


def test_mixture_weights_metric_helper_is_symmetric():
    """The ALD test's weight estimate (sign of x₁ + x₂) on exact mixture samples."""
    mix = GaussianMixture((0.3, 0.7), ((-5.0, -5.0), (5.0, 5.0)), 1.0)
    x = mix.sample(jax.random.key(0), 20000)
    assert abs(float(jnp.mean(x.sum(-1) > 0)) - 0.7) < 0.015
