"""Score SDEs: variance preserving (VP), sub-VP and variance exploding (VE).

A forward SDE ``dx = f(x, t) dt + g(t) dw`` on ``t ∈ [0, T]``, ``T = 1``, turns data
into a tractable prior; its reverse (Anderson 1982)

    dx = [f(x, t) − g(t)² ∇ₓ log p_t(x)] dt + g(t) dw̄

and the probability-flow ODE ``dx/dt = f(x, t) − ½ g(t)² ∇ₓ log p_t(x)`` share the
marginals ``p_t``. Every SDE here has an affine drift, so the perturbation kernel is
Gaussian, ``p_{0t}(x_t | x_0) = N(m(t) x_0, s(t)² I)``, returned by
:meth:`SDE.marginal_prob`.

Interface and semantics follow score_sde (Song et al. 2021): ``sde(x, t) ->
(drift, diffusion)``, ``marginal_prob(x, t) -> (mean, std)``, ``prior_sampling``,
``prior_logp`` (one value per sample), ``discretize(x, t) -> (f, G)`` (DDPM for VP,
SMLD for VE, Euler–Maruyama otherwise), ``ancestral_step(x, t, score) -> (x_mean, std)``
for SDEs with a discrete chain (VP, VE) and ``reverse(score_fn, probability_flow)``.
Arrays are batch-first: ``x [B, ...]``, ``t [B]``, drift ``[B, ...]``, diffusion
``[B]``. Departures from score_sde, all fixes: sub-VP carries the discrete ``alphas``
its Langevin corrector needs (score_sde crashes there), every SDE exposes
:meth:`SDE.langevin_alpha`, VP's std uses ``expm1`` (accurate at small ``t``), and
bad input (``t`` outside ``[0, 1]``, mismatched batch sizes, non-positive β or σ)
raises a ``ValueError`` naming the argument.

Extending: subclass :class:`SDE` as a frozen dataclass with defaults for every field,
implement ``_sde``, ``_marginal``, ``prior_sampling`` and ``prior_logp`` (optionally
``_discretize``, ``_ancestral_step`` for ``ancestral_sampling`` and ``alphas_cumprod``
for ``ddpm_loss``), and register it in ``SDES``: the samplers, losses and likelihood
use it unchanged, and the shared suite of ``tests/generative/test_sde.py`` runs on it.

Example:
    >>> sde = VPSDE()
    >>> x0 = jnp.zeros((4, 2)); t = jnp.full((4,), 0.5)
    >>> mean, std = sde.marginal_prob(x0, t)
    >>> mean.shape, std.shape
    ((4, 2), (4,))

Paper: Song, Sohl-Dickstein, Kingma, Kumar, Ermon, Poole 2021, "Score-Based
Generative Modeling through Stochastic Differential Equations" (ICLR), sections 3.4
and appendix B–C.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from common.checks import (
    check_int,
    check_positive,
    float_dtype,
    is_concrete,
    per_sample,
    poison,
    shape_str,
)
from common.registry import Registry
from generative.checks import check_x_t

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]

SDES: Registry[type] = Registry("sde")

__all__ = [
    "SDE",
    "SDES",
    "VESDE",
    "VPSDE",
    "ReverseSDE",
    "get_sde",
    "make_score_fn",
    "subVPSDE",
]


class SDE(abc.ABC):
    """Base of the forward SDEs; subclasses are frozen dataclasses (hashable, static).

    Attributes:
      N: number of discretisation steps (``discretize``, samplers).
      T: end time, 1.
    """

    N: int
    T: float = 1.0

    # ------------------------------------------------------------------ subclass API
    @abc.abstractmethod
    def _sde(self, x, t):
        """Unchecked ``(drift [B, ...], diffusion [B])`` with ``t`` in x's dtype."""

    @abc.abstractmethod
    def _marginal(self, x, t):
        """Unchecked ``(mean [B, ...], std [B])``."""

    @abc.abstractmethod
    def prior_sampling(self, key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
        """Draw ``shape = (B, ...)`` samples from the prior ``p_T``."""

    @abc.abstractmethod
    def prior_logp(self, z: jax.Array) -> jax.Array:
        """``log p_T(z)`` per sample: ``z [B, ...] -> [B]``."""

    def _discretize(self, x, t):
        """Euler–Maruyama: ``f = f(x, t) Δt``, ``G = g(t) √Δt`` with ``Δt = 1/N``."""
        drift, diffusion = self._sde(x, t)
        dt = 1.0 / self.N
        return drift * dt, diffusion * math.sqrt(dt)

    # ------------------------------------------------------------------ public API
    def _prepare(self, x, t):
        check_x_t(x, t)
        dtype = float_dtype(x)
        return jnp.asarray(x, dtype), jnp.asarray(t, dtype)

    def sde(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Drift and diffusion of the forward SDE.

        Args:
          x: ``[B, ...]`` states.
          t: ``[B]`` times in ``[0, 1]``.

        Returns:
          ``(drift [B, ...], diffusion [B])``.
        """
        return self._sde(*self._prepare(x, t))

    def marginal_prob(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Mean and std of the perturbation kernel ``p_{0t}(x_t | x_0 = x)``.

        Args:
          x: ``[B, ...]`` clean data ``x_0``.
          t: ``[B]`` times in ``[0, 1]``.

        Returns:
          ``(mean [B, ...], std [B])``: ``x_t = mean + std · z``, ``z ~ N(0, I)``.
        """
        return self._marginal(*self._prepare(x, t))

    def discretize(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """One step of the discretised forward process ``x_{i+1} = x_i + f + G z``.

        Args:
          x: ``[B, ...]`` states.
          t: ``[B]`` times; the step index is ``⌊t (N − 1) / T⌋`` where a discrete
            chain is used (VP: DDPM, VE: SMLD).

        Returns:
          ``(f [B, ...], G [B])``.
        """
        return self._discretize(*self._prepare(x, t))

    def timestep(self, t: jax.Array) -> jax.Array:
        """Discrete index ``⌊t (N − 1) / T⌋`` (int32, truncation as in score_sde)."""
        return (t * (self.N - 1) / self.T).astype(jnp.int32)

    def langevin_alpha(self, t: jax.Array) -> jax.Array:
        """The ``α_i`` scaling a Langevin corrector's step (score_sde, Algorithm 4/5).

        ``α_i = 1 − β_i`` of the DDPM chain for VP and sub-VP, 1 otherwise.

        Args:
          t: ``[B]`` times.

        Returns:
          ``[B]`` in t's dtype.
        """
        return jnp.ones_like(t)

    @property
    def has_ancestral_step(self) -> bool:
        """Whether this SDE has a discrete chain with an ancestral step (it overrides
        ``_ancestral_step``); the ``ancestral_sampling`` predictor needs one."""
        return type(self)._ancestral_step is not SDE._ancestral_step

    def _ancestral_step(self, x, t, score):
        """Unchecked ``(x_mean [B, ...], std [B])``; SDEs without a discrete chain keep
        this default, which refuses with a message naming the SDE."""
        raise ValueError(f"{type(self).__name__} has no discrete chain, so no ancestral step "
                         f"(it does not implement SDE._ancestral_step); sample it with the "
                         f"reverse_diffusion or euler_maruyama predictor")

    def ancestral_step(self, x: jax.Array, t: jax.Array,
                       score: jax.Array) -> tuple[jax.Array, jax.Array]:
        """One ancestral step of the discrete chain: ``x_{i−1} ~ N(x_mean, std² I)``.

        The contract of an SDE with a discrete forward chain (VP: DDPM, VE: SMLD): given
        the state ``x_i`` at step ``i = ⌊t (N − 1) / T⌋`` and the score of ``p_t`` there,
        return the mean and per-sample std of the Gaussian reverse transition. The step is
        deterministic (the caller draws ``z``: ``x_{i−1} = x_mean + std · z``) and agrees
        with the reverse-diffusion step ``x − f̄``, ``Ḡ`` to first order in ``1/N``. A new
        SDE implements ``_ancestral_step(x, t, score)`` (inputs already checked and cast)
        and is then sampled by the ``ancestral_sampling`` predictor unchanged.

        Args:
          x: ``[B, ...]`` states.
          t: ``[B]`` times in ``[0, 1]``.
          score: ``[B, ...]`` score ``∇ₓ log p_t(x)`` evaluated at ``(x, t)``.

        Returns:
          ``(x_mean [B, ...], std [B])``.

        Raises:
          ValueError: for an SDE without a discrete chain (naming it), a ``score`` not of
            x's shape, or bad ``x``/``t``.

        Example:
            >>> x_mean, std = VPSDE().ancestral_step(x, t, score_fn(x, t))
            >>> x_prev = x_mean + std[:, None] * jax.random.normal(key, x.shape)

        Paper: Song et al. 2021, eq. (47) and appendix F; Ho et al. 2020, Algorithm 2.
        """
        x, t = self._prepare(x, t)
        if jnp.shape(score) != x.shape:
            raise ValueError(f"score must have x's shape {shape_str(x.shape)}, got "
                             f"{shape_str(jnp.shape(score))}")
        return self._ancestral_step(x, t, jnp.asarray(score, x.dtype))

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> ReverseSDE:
        """The reverse-time SDE (or probability-flow ODE) driven by ``score_fn``.

        Args:
          score_fn: ``score_fn(x [B, ...], t [B]) -> [B, ...]``, an estimate of
            ``∇ₓ log p_t(x)``.
          probability_flow: return the ODE ``dx = [f − ½ g² s] dt`` (zero diffusion).

        Returns:
          A :class:`ReverseSDE` with ``sde``, ``discretize`` and ``N``.
        """
        return ReverseSDE(self, score_fn, bool(probability_flow))


@dataclasses.dataclass(frozen=True, eq=False)
class ReverseSDE:
    """Reverse-time SDE ``dx = [f − w g² s(x, t)] dt + (1 − pf) g dw̄`` with
    ``w = ½`` for the probability flow (``pf``) and 1 otherwise.

    Attributes:
      forward: the forward :class:`SDE`.
      score_fn: ``score_fn(x [B, ...], t [B]) -> [B, ...]``.
      probability_flow: whether this is the deterministic probability-flow ODE.
    """

    forward: SDE
    score_fn: ScoreFn
    probability_flow: bool = False

    @property
    def N(self) -> int:
        return self.forward.N

    @property
    def T(self) -> float:
        return self.forward.T

    def _score(self, x, t):
        score = self.score_fn(x, t)
        if jnp.shape(score) != jnp.shape(x):
            raise ValueError(f"score_fn must return an array of x's shape "
                             f"{shape_str(x.shape)}, got {shape_str(jnp.shape(score))}")
        return score

    def sde(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(drift [B, ...], diffusion [B])`` of the reverse SDE at ``(x, t)``."""
        x, t = self.forward._prepare(x, t)
        drift, diffusion = self.forward._sde(x, t)
        weight = 0.5 if self.probability_flow else 1.0
        drift = drift - per_sample(diffusion**2, x) * self._score(x, t) * weight
        if self.probability_flow:
            diffusion = jnp.zeros_like(diffusion)
        return drift, diffusion

    def discretize(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Reverse of :meth:`SDE.discretize`: ``f̄ = f − w G² s``, ``Ḡ = (1 − pf) G``."""
        x, t = self.forward._prepare(x, t)
        f, G = self.forward._discretize(x, t)
        weight = 0.5 if self.probability_flow else 1.0
        rev_f = f - per_sample(G**2, x) * self._score(x, t) * weight
        rev_G = jnp.zeros_like(G) if self.probability_flow else G
        return rev_f, rev_G


def _standard_normal_logp(z):
    dims = math.prod(z.shape[1:])
    flat = z.reshape(z.shape[0], -1)
    return -0.5 * dims * math.log(2 * math.pi) - 0.5 * jnp.sum(flat**2, axis=-1)


def _check_prior_shape(shape) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if len(shape) < 1:
        raise ValueError(f"shape must be batch-first (B, ...), got {shape}")
    return shape


class _VPFamily(SDE):
    """Shared pieces of VP and sub-VP: the linear β schedule and the DDPM chain."""

    beta_min: float
    beta_max: float

    def _validate(self) -> None:
        check_positive(self.beta_min, "beta_min")
        check_positive(self.beta_max, "beta_max")
        check_int(self.N, "N (number of discretisation steps)")

    def _check_chain(self) -> None:
        """The discrete chain needs ``β_i < 1``, i.e. ``beta_max / N < 1`` (checked on use,
        so a coarse ``N`` still serves Euler–Maruyama and the ODE)."""
        if self.beta_max / self.N >= 1.0:
            raise ValueError(f"beta_max / N must be < 1 for the discrete chain "
                             f"(β_i = beta_max / N < 1), got {self.beta_max} / {self.N}")

    def beta(self, t: jax.Array) -> jax.Array:
        """``β(t) = β_min + t (β_max − β_min)``."""
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_mean_coeff(self, t: jax.Array) -> jax.Array:
        """``log m(t) = −¼ t² (β_max − β_min) − ½ t β_min = −½ ∫₀ᵗ β``."""
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    @functools.cached_property
    def discrete_betas(self) -> np.ndarray:
        """``[N]`` float64: ``β_i = linspace(β_min / N, β_max / N, N)``."""
        return np.linspace(self.beta_min / self.N, self.beta_max / self.N, self.N)

    @functools.cached_property
    def alphas(self) -> np.ndarray:
        """``[N]`` float64: ``α_i = 1 − β_i``."""
        return 1.0 - self.discrete_betas

    def langevin_alpha(self, t: jax.Array) -> jax.Array:
        self._check_chain()
        return jnp.asarray(self.alphas, t.dtype)[self.timestep(t)]

    def prior_sampling(self, key, shape, dtype=jnp.float32):
        """``N(0, I)`` samples of ``shape = (B, ...)``."""
        return jax.random.normal(key, _check_prior_shape(shape), dtype)

    def prior_logp(self, z):
        """``log N(z; 0, I)`` per sample, ``[B]``."""
        return _standard_normal_logp(z)


@SDES.register("vp")
@dataclasses.dataclass(frozen=True)
class VPSDE(_VPFamily):
    """Variance-preserving SDE, the continuous limit of DDPM.

    ``dx = −½ β(t) x dt + √β(t) dw``, ``β(t) = β_min + t (β_max − β_min)``;
    ``p_{0t} = N(m x₀, (1 − m²) I)`` with ``m = exp(−½ ∫₀ᵗ β)``; prior ``N(0, I)``.
    ``discretize`` is the DDPM chain ``x_{i+1} = √(1 − β_i) x_i + √β_i z``, whose
    ancestral step is :meth:`ancestral_step` and whose ``alphas_cumprod`` serve
    :func:`generative.losses.ddpm_loss`.

    Args:
      beta_min: ``β(0) > 0``.
      beta_max: ``β(1) > 0``.
      N: number of discrete steps.

    Example:
        >>> drift, diffusion = VPSDE().sde(jnp.ones((2, 3)), jnp.array([0.0, 1.0]))

    Paper: Song et al. 2021, eq. (11); Ho et al. 2020, "Denoising Diffusion
    Probabilistic Models".
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    N: int = 1000

    def __post_init__(self):
        self._validate()

    def _sde(self, x, t):
        beta_t = self.beta(t)
        return -0.5 * per_sample(beta_t, x) * x, jnp.sqrt(beta_t)

    def _marginal(self, x, t):
        lmc = self.log_mean_coeff(t)
        mean = per_sample(jnp.exp(lmc), x) * x
        std = jnp.sqrt(-jnp.expm1(2.0 * lmc))
        return mean, std

    def _discretize(self, x, t):
        self._check_chain()
        i = self.timestep(t)
        beta = jnp.asarray(self.discrete_betas, x.dtype)[i]
        alpha = jnp.asarray(self.alphas, x.dtype)[i]
        return per_sample(jnp.sqrt(alpha), x) * x - x, jnp.sqrt(beta)

    def _ancestral_step(self, x, t, score):
        """DDPM: ``x_mean = (x + β_i s) / √(1 − β_i)``, ``std = √β_i``."""
        self._check_chain()
        beta = jnp.asarray(self.discrete_betas, x.dtype)[self.timestep(t)]
        x_mean = (x + per_sample(beta, x) * score) / per_sample(jnp.sqrt(1.0 - beta), x)
        return x_mean, jnp.sqrt(beta)

    @functools.cached_property
    def alphas_cumprod(self) -> np.ndarray:
        """``[N]`` float64: ``ᾱ_i = ∏_{j ≤ i} α_j``, so the chain's step ``i`` from ``x_0`` is
        ``N(√ᾱ_i x_0, (1 − ᾱ_i) I)`` (the contract of :func:`~generative.losses.ddpm_loss`)."""
        self._check_chain()
        return np.cumprod(self.alphas)


@SDES.register("subvp")
@dataclasses.dataclass(frozen=True)
class subVPSDE(_VPFamily):
    """Sub-VP SDE: VP's drift with diffusion shrunk so that variances stay below VP's.

    ``dx = −½ β(t) x dt + √(β(t) (1 − e^{−2 ∫₀ᵗ β})) dw``;
    ``p_{0t} = N(m x₀, (1 − m²)² I)``, ``m = exp(−½ ∫₀ᵗ β)``; prior ``N(0, I)``.
    ``discretize`` is Euler–Maruyama; ``alphas``/``langevin_alpha`` come from the
    same β schedule as VP, so every corrector works (score_sde's crashes here). There
    is no discrete chain, hence no ancestral step and no ``alphas_cumprod``.

    Args:
      beta_min: ``β(0) > 0``.
      beta_max: ``β(1) > 0``.
      N: number of discrete steps.

    Example:
        >>> mean, std = subVPSDE().marginal_prob(jnp.ones((2, 3)), jnp.array([0.1, 0.9]))

    Paper: Song et al. 2021, eq. (29) in section 3.4 and appendix B.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    N: int = 1000

    def __post_init__(self):
        self._validate()

    def _sde(self, x, t):
        beta_t = self.beta(t)
        discount = -jnp.expm1(4.0 * self.log_mean_coeff(t))  # 1 − e^{−2∫β}
        return -0.5 * per_sample(beta_t, x) * x, jnp.sqrt(beta_t * discount)

    def _marginal(self, x, t):
        lmc = self.log_mean_coeff(t)
        mean = per_sample(jnp.exp(lmc), x) * x
        std = -jnp.expm1(2.0 * lmc)
        return mean, std


@SDES.register("ve")
@dataclasses.dataclass(frozen=True)
class VESDE(SDE):
    """Variance-exploding SDE, the continuous limit of SMLD/NCSN.

    ``dx = σ(t) √(2 log(σ_max/σ_min)) dw``, ``σ(t) = σ_min (σ_max/σ_min)^t``;
    ``p_{0t} = N(x₀, σ(t)² I)``; prior ``N(0, σ_max² I)``. ``discretize`` is the SMLD
    chain ``x_{i+1} = x_i + √(σ_{i+1}² − σ_i²) z`` over the geometric ``σ_i``, with
    :meth:`ancestral_step`.

    Args:
      sigma_min: ``σ(0) > 0``.
      sigma_max: ``σ(1) > sigma_min``.
      N: number of discrete noise levels.

    Example:
        >>> VESDE().prior_sampling(jax.random.key(0), (8, 2)).std() > 10
        Array(True, dtype=bool)

    Paper: Song et al. 2021, eq. (9); Song & Ermon 2019, "Generative Modeling by
    Estimating Gradients of the Data Distribution".
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    N: int = 1000

    def __post_init__(self):
        check_positive(self.sigma_min, "sigma_min")
        check_positive(self.sigma_max, "sigma_max")
        if not self.sigma_max > self.sigma_min:
            raise ValueError(f"sigma_max must exceed sigma_min, got sigma_min="
                             f"{self.sigma_min}, sigma_max={self.sigma_max}")
        check_int(self.N, "N (number of discretisation steps)")

    @functools.cached_property
    def discrete_sigmas(self) -> np.ndarray:
        """``[N]`` float64, ascending: ``exp(linspace(log σ_min, log σ_max, N))``."""
        return np.exp(np.linspace(np.log(self.sigma_min), np.log(self.sigma_max), self.N))

    def sigma(self, t: jax.Array) -> jax.Array:
        """``σ(t) = σ_min (σ_max/σ_min)^t``."""
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def t_of_sigma(self, sigma: jax.Array) -> jax.Array:
        """Inverse of :meth:`sigma`: ``t = log(σ/σ_min) / log(σ_max/σ_min)``."""
        return jnp.log(sigma / self.sigma_min) / math.log(self.sigma_max / self.sigma_min)

    def _sde(self, x, t):
        diffusion = self.sigma(t) * math.sqrt(2.0 * math.log(self.sigma_max / self.sigma_min))
        return jnp.zeros_like(x), diffusion

    def _marginal(self, x, t):
        return x, self.sigma(t)

    def prior_sampling(self, key, shape, dtype=jnp.float32):
        """``N(0, σ_max² I)`` samples of ``shape = (B, ...)``."""
        return self.sigma_max * jax.random.normal(key, _check_prior_shape(shape), dtype)

    def prior_logp(self, z):
        """``log N(z; 0, σ_max² I)`` per sample, ``[B]``."""
        dims = math.prod(z.shape[1:])
        return _standard_normal_logp(z / self.sigma_max) - dims * math.log(self.sigma_max)

    def _levels(self, t, dtype):
        """``(σ_i [B], σ_{i−1} [B])`` at ``i = timestep(t)``, with ``σ_{−1} = 0``."""
        i = self.timestep(t)
        sigmas = jnp.asarray(self.discrete_sigmas, dtype)
        sigma = sigmas[i]
        previous = jnp.where(i == 0, jnp.zeros_like(sigma), sigmas[jnp.maximum(i - 1, 0)])
        return sigma, previous

    def _discretize(self, x, t):
        sigma, previous = self._levels(t, x.dtype)
        return jnp.zeros_like(x), jnp.sqrt(sigma**2 - previous**2)

    def _ancestral_step(self, x, t, score):
        """SMLD: ``x_mean = x + (σ_i² − σ_{i−1}²) s``,
        ``std = √(σ_{i−1}² (σ_i² − σ_{i−1}²) / σ_i²)``."""
        sigma, previous = self._levels(t, x.dtype)
        gap = sigma**2 - previous**2
        return x + per_sample(gap, x) * score, jnp.sqrt(previous**2 * gap / sigma**2)


def get_sde(name: str, **kwargs) -> SDE:
    """Build a registered SDE by name: ``"vp"``, ``"subvp"`` or ``"ve"``.

    Example:
        >>> get_sde("ve", sigma_max=20.0).sigma_max
        20.0
    """
    return SDES.get(name)(**kwargs)


def make_score_fn(sde: SDE, eps_fn: Callable[[jax.Array, jax.Array], jax.Array], *,
                  data_std: float | None = None) -> ScoreFn:
    """Score from a noise-prediction network: ``s(x, t) = −ε̂(c(t) x, t) / std(t)``.

    ``std(t)`` is the perturbation kernel's standard deviation, so a network trained to
    predict the noise ``z`` in ``x_t = mean + std · z`` gives the score of ``p_t``. This
    is score_sde's ``get_score_fn`` for VP/sub-VP, and for VE its ``scale_by_sigma``
    networks up to the sign of the output. With ``data_std`` the network sees its
    input at unit scale, ``c(t) = 1 / √(m(t)² σ_data² + std(t)²)`` (the ``c_in`` of Karras
    et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models");
    without it ``c = 1`` (score_sde).

    The score is undefined where ``std(t) = 0`` (``t = 0`` for VP and sub-VP): a concrete
    such ``t`` raises ``ValueError`` naming ``t``, a traced one gives NaN for those
    samples (:func:`common.checks.poison`), never ``±inf`` scores.

    Args:
      sde: the forward SDE.
      eps_fn: ``eps_fn(x [B, ...], t [B]) -> [B, ...]``.
      data_std: typical standard deviation of the data, or None.

    Returns:
      ``score_fn(x, t) -> [B, ...]``.

    Example:
        >>> score_fn = make_score_fn(VESDE(), lambda x, t: net(x, t), data_std=0.5)
    """
    if data_std is not None:
        check_positive(data_std, "data_std")

    def score_fn(x, t):
        ones = jnp.ones((x.shape[0],) + (1,) * (jnp.ndim(x) - 1), float_dtype(x))
        mean_coeff, std = sde.marginal_prob(ones, t)  # [B, 1, ...], [B]
        if data_std is not None:
            scale = jax.lax.rsqrt(mean_coeff**2 * data_std**2 + per_sample(std**2, x))
            x_in = x * scale
        else:
            x_in = x
        positive = std > 0  # [B]
        if is_concrete(positive) and not bool(jnp.all(positive)):
            raise ValueError(f"t: the score of make_score_fn is undefined where the marginal "
                             f"std of {type(sde).__name__} vanishes (t = 0 for VP/sub-VP); "
                             f"got t = {jnp.asarray(t)[~positive][:3].tolist()}")
        score = -eps_fn(x_in, t) / per_sample(jnp.where(positive, std, 1.0), x)
        return poison(score, per_sample(positive, x))

    return score_fn
