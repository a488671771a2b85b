"""Probability-flow likelihood with the exact score against the true perturbed density."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from generative.likelihood import bits_per_dim, divergence_fn, log_likelihood, uniform_dequantize
from generative.sde import VESDE, VPSDE, make_score_fn, subVPSDE
from tests.generative.closed_form import gaussian_logpdf, gaussian_marginal, gaussian_score_fn
from tests.tolerances import F64, assert_close

MU = np.array([1.0, -0.5, 0.3])
_L = np.array([[1.0, 0.0, 0.0], [0.3, 0.7, 0.0], [0.1, 0.4, 0.5]])
COV = _L @ _L.T  # full covariance: the flow's Jacobian is not diagonal

KINDS = {"vp": VPSDE(), "subvp": subVPSDE(), "ve": VESDE()}


def _true_prior(kind):
    """``log p_T`` of the perturbed data (not the SDE's approximate prior)."""
    mean, cov = gaussian_marginal(kind, 1.0, MU, COV)
    inv = jnp.asarray(np.linalg.inv(cov))
    logdet = float(np.linalg.slogdet(2 * np.pi * cov)[1])

    def logp(z):
        d = z - jnp.asarray(mean)[None]
        return -0.5 * jnp.einsum("bi,ij,bj->b", d, inv, d) - 0.5 * logdet

    return logp


@pytest.mark.parametrize("kind", ["vp", "subvp", "ve"])
def test_exact_score_likelihood_equals_true_density(kind, x64):
    sde = KINDS[kind]
    x = jnp.asarray(np.random.default_rng(0).multivariate_normal(MU, COV, size=6))
    eps = 1e-5
    fn = jax.jit(lambda k, x: log_likelihood(k, gaussian_score_fn(sde, MU, COV), sde, x,
                                             divergence="exact", eps=eps, rtol=1e-7,
                                             atol=1e-7, prior_logp=_true_prior(kind)))
    logp, z, nfe = fn(jax.random.key(0), x)
    mean, cov = gaussian_marginal(kind, eps, MU, COV)  # independent (moment ODEs)
    assert_close(logp, gaussian_logpdf(mean, cov, x), dict(rtol=1e-6, atol=1e-5))
    assert z.shape == x.shape and int(nfe) > 10


def test_sde_prior_gives_the_score_sde_likelihood(x64):
    """With the SDE's own N(0, I) prior the VP result differs from the truth only by the
    (tiny) prior mismatch log N(z; 0, I) − log p_T(z)."""
    sde = KINDS["vp"]
    x = jnp.asarray(np.random.default_rng(1).multivariate_normal(MU, COV, size=4))
    score_fn = gaussian_score_fn(sde, MU, COV)

    @jax.jit
    def both(x):
        a, z, _ = log_likelihood(jax.random.key(0), score_fn, sde, x, divergence="exact")
        b, _, _ = log_likelihood(jax.random.key(0), score_fn, sde, x, divergence="exact",
                                 prior_logp=_true_prior("vp"))
        return a, b, z

    a, b, z = both(x)
    assert_close(a - b, sde.prior_logp(z) - _true_prior("vp")(z), dict(rtol=1e-6, atol=1e-6))
    assert float(jnp.max(jnp.abs(a - b))) < 0.05


@pytest.mark.parametrize("method", ["hutchinson_rademacher", "hutchinson_gaussian"])
def test_hutchinson_is_unbiased(method):
    """One point repeated 512 times, each with its own probe: the mean estimate converges
    to the exact value (the probes differ, the trajectory is the same)."""
    sde = KINDS["vp"]
    point = jnp.asarray(MU + np.array([0.4, -0.2, 0.1]), jnp.float32)
    x = jnp.broadcast_to(point[None], (512, 3))
    score_fn = gaussian_score_fn(sde, MU, COV)
    prior = _true_prior("vp")
    est, _, _ = jax.jit(lambda k: log_likelihood(k, score_fn, sde, x, divergence=method,
                                                 prior_logp=prior))(jax.random.key(3))
    mean, cov = gaussian_marginal("vp", 1e-5, MU, COV)
    truth = gaussian_logpdf(mean, cov, np.asarray(point)[None])
    spread = float(jnp.std(est))
    assert spread > 1e-3  # the estimator does vary per probe
    assert abs(float(jnp.mean(est)) - truth) < 4 * spread / math.sqrt(512) + 1e-3


def test_divergence_fn_matches_jacobian_trace(x64):
    W = jnp.asarray(np.random.default_rng(2).normal(size=(4, 4)))
    fn = lambda y: jnp.tanh(y @ W.T)
    x = jnp.asarray(np.random.default_rng(3).normal(size=(5, 4)))
    ref = jnp.stack([jnp.trace(jax.jacfwd(lambda v: jnp.tanh(W @ v))(xi)) for xi in x])
    assert_close(divergence_fn(fn, x), ref, F64)
    probe = jax.random.rademacher(jax.random.key(0), x.shape, x.dtype)
    jac = jnp.stack([jax.jacfwd(lambda v: jnp.tanh(W @ v))(xi) for xi in x])
    assert_close(divergence_fn(fn, x, method="hutchinson_rademacher", probe=probe),
                 jnp.einsum("bi,bij,bj->b", probe, jac, probe), F64)


def test_bits_per_dim_and_dequantisation():
    # score_sde's offset: 256 levels scaled to [-1, 1] -> bpd = -logp / (D ln 2) + 7
    logp = jnp.asarray([-100.0, 50.0])
    D = 12
    assert_close(bits_per_dim(logp, D, n_bins=256, data_scale=2.0),
                 -np.asarray(logp) / (D * math.log(2)) + 7.0, dict(rtol=1e-6, atol=1e-6))
    assert_close(bits_per_dim(logp, D), -np.asarray(logp) / (D * math.log(2)))
    # uniform model on [0, 1]^D of 17-level data: log p = 0 -> log2(17) bits
    assert_close(bits_per_dim(jnp.zeros(1), D, n_bins=17), [math.log2(17)])
    levels = jnp.asarray([[0, 5, 16]])
    u = uniform_dequantize(jax.random.key(0), levels, n_bins=17)
    assert jnp.all(jnp.floor(u * 17) == levels) and u.dtype == jnp.float32


def test_bad_inputs():
    sde = VPSDE()
    score_fn = lambda y, t: -y
    with pytest.raises(ValueError, match="unknown divergence 'trace'"):
        log_likelihood(jax.random.key(0), score_fn, sde, jnp.ones((2, 3)), divergence="trace")
    with pytest.raises(ValueError, match="floating"):
        log_likelihood(jax.random.key(0), score_fn, sde, jnp.ones((2, 3), jnp.int32))
    with pytest.raises(ValueError, match="eps must be in"):
        log_likelihood(jax.random.key(0), score_fn, sde, jnp.ones((2, 3)), eps=-1.0)
    with pytest.raises(ValueError, match="num_dims must be an integer >= 1"):
        bits_per_dim(jnp.zeros(2), 0)
    with pytest.raises(ValueError, match="data_scale must be finite and > 0"):
        bits_per_dim(jnp.zeros(2), 3, data_scale=0.0)
    with pytest.raises(ValueError, match="n_bins must be an integer >= 2"):
        uniform_dequantize(jax.random.key(0), jnp.zeros((1, 2)), n_bins=1)
    with pytest.raises(ValueError, match="probe must have x's shape"):
        divergence_fn(lambda y: y, jnp.ones((2, 3)), method="hutchinson_gaussian")


@pytest.mark.parametrize("kind", ["vp", "subvp"])
def test_eps_zero_and_scalar_scores_are_refused(kind):
    """The flow starts at t = eps: a make_score_fn score there is 0/0 on VP/sub-VP."""
    sde = KINDS[kind]
    x = jnp.ones((2, 3))
    with pytest.raises(ValueError, match="eps must be > 0: the marginal std of"):
        log_likelihood(jax.random.key(0), make_score_fn(sde, lambda y, t: y), sde, x, eps=0.0)
    with pytest.raises(ValueError, match=r"score_fn must return an array of shape \[B, \.\.\.\]"):
        log_likelihood(jax.random.key(0), lambda y, t: jnp.sum(y), sde, x)
