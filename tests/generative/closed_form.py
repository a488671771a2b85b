"""Independent closed forms for Gaussian data under the three SDEs (test helper).

For data ``N(μ, Σ)`` and an affine SDE the perturbed marginal is
``N(m(t) μ, m(t)² Σ + v(t) I)``, where ``m`` and ``v`` solve the moment ODEs

    dm/dt = a(t) m,            m(0) = 1
    dv/dt = 2 a(t) v + g(t)²,  v(0) = v0

with drift ``a(t) x`` and diffusion ``g(t)``. These are integrated here with scipy,
from the SDE coefficients written out by hand (not read from the package), so they
check ``marginal_prob`` independently. ``v0 = σ_min²`` for VE: score_sde's VE kernel
has std ``σ(t)``, i.e. the data are taken as already perturbed by ``σ_min`` at t = 0.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.integrate import solve_ivp

BETA_MIN, BETA_MAX = 0.1, 20.0
SIGMA_MIN, SIGMA_MAX = 0.01, 50.0


def coefficients(kind: str, t: float) -> tuple[float, float]:
    """``(a(t), g(t)²)`` of the default VP, sub-VP and VE SDEs, written out by hand."""
    beta = BETA_MIN + t * (BETA_MAX - BETA_MIN)
    if kind == "vp":
        return -0.5 * beta, beta
    if kind == "subvp":
        integral = BETA_MIN * t + 0.5 * (BETA_MAX - BETA_MIN) * t**2
        return -0.5 * beta, beta * (1.0 - math.exp(-2.0 * integral))
    if kind == "ve":
        sigma = SIGMA_MIN * (SIGMA_MAX / SIGMA_MIN) ** t
        return 0.0, sigma**2 * 2.0 * math.log(SIGMA_MAX / SIGMA_MIN)
    raise ValueError(kind)


def kernel_moments(kind: str, t: float) -> tuple[float, float]:
    """``(m(t), sqrt(v(t)))`` from the moment ODEs (scipy, tight tolerances)."""
    v0 = SIGMA_MIN**2 if kind == "ve" else 0.0
    if t == 0.0:
        return 1.0, math.sqrt(v0)

    def rhs(s, y):
        a, g2 = coefficients(kind, s)
        return [a * y[0], 2.0 * a * y[1] + g2]

    sol = solve_ivp(rhs, (0.0, t), [1.0, v0], method="DOP853", rtol=1e-12, atol=1e-14)
    m, v = sol.y[:, -1]
    return float(m), float(math.sqrt(v))


def gaussian_marginal(kind: str, t: float, mu: np.ndarray, cov: np.ndarray):
    """Mean ``[D]`` and covariance ``[D, D]`` of the perturbed data at time ``t``."""
    m, s = kernel_moments(kind, t)
    return m * mu, m**2 * cov + s**2 * np.eye(len(mu))


def gaussian_score_fn(sde, mu, cov):
    """Exact ``score_fn(x [B, D], t [B])`` of ``N(μ, Σ)`` perturbed by ``sde`` (jax).

    Uses the kernel ``(m, s)`` of ``sde.marginal_prob`` (itself checked against
    :func:`kernel_moments`): ``∇ log N(x; m μ, m² Σ + s² I)``, through the
    eigendecomposition ``Σ = U diag(λ) Uᵀ`` so ``(m² Σ + s² I)⁻¹ = U diag(1 / (m² λ + s²)) Uᵀ``.
    """
    import jax.numpy as jnp

    lam, U = np.linalg.eigh(np.asarray(cov, np.float64))
    mu = np.asarray(mu, np.float64)

    def score_fn(x, t):
        m, s = sde.marginal_prob(jnp.ones((x.shape[0], 1), x.dtype), t)  # [B, 1], [B]
        u = jnp.asarray(U, x.dtype)
        diff = (x - m * jnp.asarray(mu, x.dtype)[None]) @ u  # [B, D] in the eigenbasis
        return -(diff / (m**2 * jnp.asarray(lam, x.dtype)[None] + (s**2)[:, None])) @ u.T

    return score_fn


def gaussian_logpdf(mean, cov, x):
    """``log N(x; mean, cov)`` per row (numpy / scipy)."""
    from scipy.stats import multivariate_normal

    return multivariate_normal(np.asarray(mean), np.asarray(cov)).logpdf(np.asarray(x))


def isotropic_score_fn(sde, mu, s2):
    """Exact score of ``N(μ, s² I)`` perturbed by ``sde``: ``−(x − m μ) / (m² s² + std²)``."""
    import jax.numpy as jnp

    mu = jnp.asarray(mu)

    def score_fn(x, t):
        m, std = sde.marginal_prob(jnp.ones((x.shape[0], 1), x.dtype), t)  # [B, 1], [B]
        var = m**2 * s2 + (std**2)[:, None]
        return -(x - m * mu.astype(x.dtype)[None]) / var

    return score_fn
