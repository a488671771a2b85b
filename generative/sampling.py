"""Samplers driven by a score: Langevin, annealed Langevin (NCSN), predictor–corrector
and the probability-flow ODE, plus NCSN noise-schedule helpers.

* :func:`langevin_dynamics` — ``x ← x + ε/2 ∇log p(x) + √ε z`` for a fixed score.
* :func:`annealed_langevin_dynamics` — NCSN's sampler over decreasing noise levels,
  ``α_i = ε σ_i² / σ_L²``, ``T`` steps per level, then a denoising step.
* Predictors (``PREDICTORS``: ``euler_maruyama``, ``reverse_diffusion``,
  ``ancestral_sampling``, ``none``) and correctors (``CORRECTORS``: ``langevin``,
  ``ald``, ``none``) are registered classes with ``update(key, x, t) -> (x, x_mean)``
  and score_sde's semantics; :func:`pc_sampler` alternates them in one ``lax.scan``.
  A new entry is a subclass registered by name (``@PREDICTORS.register("heun")``):
  ``pc_sampler`` picks it by that name, and the shared predictor/corrector suite of
  ``tests/generative/test_sampling.py`` runs on it.
* :func:`ode_sampler` integrates the probability-flow ODE with the adaptive RK45 of
  :mod:`generative.ode`, inside jit.
* :func:`geometric_sigmas`, :func:`max_pairwise_distance` and
  :func:`ncsn_num_levels` choose NCSN noise levels (Song & Ermon 2020).

Score functions are ``score_fn(x [B, ...], t [B]) -> [B, ...]`` (time-conditioned)
for the SDE samplers and ``score_fn(x [B, ...], sigma [B])`` for annealed Langevin;
every sampler checks (at trace time) that the score has x's shape ``[B, ...]``
(:func:`generative.checks.checked_score_fn`), so a scalar or misshapen score is a
``ValueError`` naming ``score_fn``, never an ``IndexError`` or a silent broadcast. The
end time ``eps`` of the SDE samplers (and of the likelihood and ``sde_loss``) is
checked by :func:`generative.checks.check_eps`: ``eps = 0`` is refused where the
marginal std vanishes at ``t = 0`` (VP, sub-VP), since a score ``−ε̂/std``
(:func:`generative.sde.make_score_fn`) is undefined there.

Example:
    >>> x, nfe = pc_sampler(jax.random.key(0), score_fn, VPSDE(N=500), (256, 2),
    ...                     predictor="reverse_diffusion", corrector="langevin")

Papers: Song & Ermon 2019 (NCSN, Algorithm 1); Song & Ermon 2020, "Improved
Techniques for Training Score-Based Generative Models" (techniques 1, 2);
Song et al. 2021 (PC sampling, Algorithms 2–5; probability flow, section 4.3).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from common.checks import check_int, check_positive, per_sample, shape_str
from common.registry import Registry
from generative.checks import check_batch, check_eps, checked_score_fn
from generative.ode import odeint_rk45
from generative.sde import SDE

__all__ = [
    "CORRECTORS",
    "PREDICTORS",
    "AncestralSamplingPredictor",
    "AnnealedLangevinCorrector",
    "Corrector",
    "EulerMaruyamaPredictor",
    "LangevinCorrector",
    "NoneCorrector",
    "NonePredictor",
    "Predictor",
    "ReverseDiffusionPredictor",
    "annealed_langevin_dynamics",
    "geometric_sigmas",
    "langevin_dynamics",
    "max_pairwise_distance",
    "ncsn_num_levels",
    "ode_sampler",
    "pc_sampler",
]

PREDICTORS: Registry[type] = Registry("predictor")
CORRECTORS: Registry[type] = Registry("corrector")


def _norms(v):
    """Per-sample L2 norms ``[B]`` of ``v [B, ...]``."""
    return jnp.linalg.norm(v.reshape(v.shape[0], -1), axis=-1)


# ----------------------------------------------------------------------------- Langevin


def langevin_dynamics(key: jax.Array, score_fn: Callable, x0: jax.Array, *, step_size: float,
                      n_steps: int) -> jax.Array:
    """Unadjusted Langevin dynamics with a fixed score.

    ``x_k = x_{k−1} + ε/2 · s(x_{k−1}) + √ε · z_k``, ``z_k ~ N(0, I)``, ``k = 1..n``;
    step ``k`` draws its noise from ``fold_in(key, k)``.

    Args:
      key: PRNG key.
      score_fn: ``score_fn(x [B, ...]) -> [B, ...]`` ≈ ``∇ₓ log p(x)``.
      x0: ``[B, ...]`` initial points.
      step_size: ``ε > 0``.
      n_steps: number of steps (``lax.scan``).

    Returns:
      ``[B, ...]`` final points.

    Example:
        >>> langevin_dynamics(key, lambda x: -x, jnp.zeros((100, 2)), step_size=0.1,
        ...                   n_steps=500)   # ≈ N(0, I) samples

    Paper: Song & Ermon 2019, section 2.2 (Welling & Teh 2011; Roberts & Tweedie 1996).
    """
    check_batch(x0, "x0")
    check_positive(step_size, "step_size")
    check_int(n_steps, "n_steps", minimum=0)
    score_fn = checked_score_fn(score_fn)
    eps = jnp.asarray(step_size, x0.dtype)

    def body(x, k):
        z = jax.random.normal(jax.random.fold_in(key, k), x.shape, x.dtype)
        return x + 0.5 * eps * score_fn(x) + jnp.sqrt(eps) * z, None

    x, _ = jax.lax.scan(body, x0, jnp.arange(int(n_steps)))
    return x


def annealed_langevin_dynamics(key: jax.Array, score_fn: Callable, x0: jax.Array,
                               sigmas: jax.Array, *, step_lr: float, n_steps_each: int,
                               denoise: bool = True) -> jax.Array:
    """Annealed Langevin dynamics (NCSN sampler).

    For noise levels ``σ_1 > … > σ_L`` with ``α_i = ε σ_i² / σ_L²``, run ``T`` steps of
    ``x ← x + α_i/2 · s(x, σ_i) + √α_i z`` per level; with ``denoise`` finish with the
    empirical-Bayes step ``x ← x + σ_L² s(x, σ_L)`` (Tweedie; Song & Ermon 2020).
    One ``lax.scan`` over the ``L·T`` steps; step ``k`` uses ``fold_in(key, k)``.

    Args:
      key: PRNG key.
      score_fn: noise-conditional score ``score_fn(x [B, ...], sigma [B]) -> [B, ...]``.
      x0: ``[B, ...]`` initial points (NCSN: uniform noise).
      sigmas: ``[L]`` noise levels, decreasing, all > 0.
      step_lr: ``ε > 0``.
      n_steps_each: ``T``, steps per level.
      denoise: apply the final denoising step.

    Returns:
      ``[B, ...]`` samples.

    Example:
        >>> x = annealed_langevin_dynamics(key, score_fn, x0, geometric_sigmas(20., 1., 10),
        ...                                step_lr=0.1, n_steps_each=100)

    Paper: Song & Ermon 2019, Algorithm 1; denoising: Song & Ermon 2020, appendix.
    """
    check_batch(x0, "x0")
    sigmas = jnp.asarray(sigmas, x0.dtype)
    if sigmas.ndim != 1 or sigmas.shape[0] < 1:
        raise ValueError(f"sigmas must have shape [L] with L >= 1, got {shape_str(sigmas.shape)}")
    check_positive(sigmas, "sigmas")
    check_positive(step_lr, "step_lr")
    check_int(n_steps_each, "n_steps_each", minimum=0)
    score_fn = checked_score_fn(score_fn)
    B = x0.shape[0]
    sigma_last = sigmas[-1]
    schedule = jnp.repeat(sigmas, int(n_steps_each))  # [L·T]

    def body(x, inputs):
        k, sigma = inputs
        alpha = step_lr * (sigma / sigma_last) ** 2
        z = jax.random.normal(jax.random.fold_in(key, k), x.shape, x.dtype)
        grad = score_fn(x, jnp.full((B,), sigma, x.dtype))
        return x + 0.5 * alpha * grad + jnp.sqrt(alpha) * z, None

    x, _ = jax.lax.scan(body, x0, (jnp.arange(schedule.shape[0]), schedule))
    if denoise:
        x = x + sigma_last**2 * score_fn(x, jnp.full((B,), sigma_last, x.dtype))
    return x


# ----------------------------------------------------------------------------- noise levels


def geometric_sigmas(sigma_max: float, sigma_min: float, num_levels: int) -> jax.Array:
    """Decreasing geometric noise levels ``σ_i = σ_max (σ_min/σ_max)^{(i−1)/(L−1)}``.

    Args:
      sigma_max: ``σ_1`` (NCSNv2: the largest pairwise data distance).
      sigma_min: ``σ_L``, ``0 < σ_min <= σ_max``.
      num_levels: ``L >= 1`` (``L = 1`` gives ``[σ_max]``).

    Returns:
      ``[L]`` float32 levels, ``σ_1 > … > σ_L``.

    Example:
        >>> geometric_sigmas(20.0, 1.0, 3)   # [20, 4.47, 1]

    Paper: Song & Ermon 2019, section 4.2.
    """
    check_positive(sigma_max, "sigma_max")
    check_positive(sigma_min, "sigma_min")
    if sigma_min > sigma_max:
        raise ValueError(f"sigma_min must be <= sigma_max, got sigma_min={sigma_min}, "
                         f"sigma_max={sigma_max}")
    check_int(num_levels, "num_levels")
    if num_levels == 1:
        return jnp.asarray([sigma_max], jnp.float32)
    return jnp.exp(jnp.linspace(math.log(sigma_max), math.log(sigma_min), int(num_levels)))


def max_pairwise_distance(x: jax.Array, *, block_size: int = 512) -> jax.Array:
    """Largest Euclidean distance between two rows of ``x`` (NCSNv2's ``σ_1``).

    Computed block by block (``lax.map``) so memory is ``O(block_size · N)``.

    Args:
      x: ``[N, ...]`` data points, ``N >= 1`` (flattened per point).
      block_size: rows per block.

    Returns:
      Scalar ``max_{i,j} ‖x_i − x_j‖``.

    Example:
        >>> sigma_1 = max_pairwise_distance(x_train)

    Paper: Song & Ermon 2020, technique 1.
    """
    check_batch(x)
    if x.shape[0] < 1:
        raise ValueError("x must hold at least one point, got N = 0")
    flat = x.reshape(x.shape[0], -1)
    n = flat.shape[0]
    block = max(1, min(int(block_size), n))
    pad = (-n) % block
    padded = jnp.concatenate([flat, jnp.broadcast_to(flat[:1], (pad, flat.shape[1]))])
    sq = jnp.sum(flat**2, axis=-1)  # [N]

    def block_max(rows):  # rows [block, D]
        d2 = jnp.sum(rows**2, axis=-1)[:, None] + sq[None, :] - 2.0 * rows @ flat.T
        return jnp.max(d2)

    maxima = jax.lax.map(block_max, padded.reshape(-1, block, flat.shape[1]))
    return jnp.sqrt(jnp.maximum(jnp.max(maxima), 0.0))


def ncsn_num_levels(dim: int, sigma_max: float, sigma_min: float) -> tuple[int, float]:
    """Number of geometric levels from NCSNv2's technique 2 (host-side, no jit).

    Finds the ratio ``γ = σ_{i−1}/σ_i`` with
    ``Φ(√(2D)(γ−1) + 3γ) − Φ(√(2D)(γ−1) − 3γ) = ½`` by bisection, then
    ``L = ⌈log(σ_max/σ_min) / log γ⌉ + 1``.

    Args:
      dim: data dimension ``D >= 1``.
      sigma_max: ``σ_1``.
      sigma_min: ``σ_L``.

    Returns:
      ``(L, γ)``.

    Example:
        >>> ncsn_num_levels(3072, 50.0, 0.01)[0]   # CIFAR-10: a few hundred levels

    Paper: Song & Ermon 2020, technique 2.
    """
    check_int(dim, "dim")
    check_positive(sigma_max, "sigma_max")
    check_positive(sigma_min, "sigma_min")
    if sigma_min > sigma_max:
        raise ValueError(f"sigma_min must be <= sigma_max, got {sigma_min} > {sigma_max}")

    def phi(v):
        return 0.5 * (1.0 + math.erf(v / math.sqrt(2.0)))

    def overlap(g):
        c = math.sqrt(2.0 * dim) * (g - 1.0)
        return phi(c + 3.0 * g) - phi(c - 3.0 * g)

    lo, hi = 1.0, 2.0
    while overlap(hi) > 0.5:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if overlap(mid) > 0.5 else (lo, mid)
    gamma = 0.5 * (lo + hi)
    if sigma_max == sigma_min:
        return 1, gamma
    return math.ceil(math.log(sigma_max / sigma_min) / math.log(gamma)) + 1, gamma


# ----------------------------------------------------------------------------- predictors


class Predictor:
    """One reverse-time step ``update(key, x, t) -> (x, x_mean)`` (x_mean: noise-free).

    Args:
      sde: the forward SDE.
      score_fn: ``score_fn(x [B, ...], t [B]) -> [B, ...]``.
      probability_flow: use the probability-flow ODE's drift (deterministic step).

    Attributes:
      evals_per_step: score evaluations per ``update``.
    """

    evals_per_step = 1

    def __init__(self, sde: SDE, score_fn: Callable, probability_flow: bool = False):
        self.sde = sde
        self.score_fn = checked_score_fn(score_fn)
        self.probability_flow = bool(probability_flow)
        self.rsde = sde.reverse(self.score_fn, probability_flow)

    def update(self, key: jax.Array, x: jax.Array, t: jax.Array):
        raise NotImplementedError


@PREDICTORS.register("euler_maruyama")
class EulerMaruyamaPredictor(Predictor):
    """``x_mean = x + f̄(x, t) Δt``, ``x = x_mean + ḡ(t) √|Δt| z`` with ``Δt = −1/N``
    (score_sde, Algorithm 2's Euler–Maruyama step of the reverse SDE)."""

    def update(self, key, x, t):
        dt = -1.0 / self.rsde.N
        z = jax.random.normal(key, x.shape, x.dtype)
        drift, diffusion = self.rsde.sde(x, t)
        x_mean = x + drift * dt
        return x_mean + per_sample(diffusion, x) * math.sqrt(-dt) * z, x_mean


@PREDICTORS.register("reverse_diffusion")
class ReverseDiffusionPredictor(Predictor):
    """Reverse of the forward discretisation: ``x_mean = x − f̄``, ``x = x_mean + Ḡ z``
    (Song et al. 2021, eq. 46)."""

    def update(self, key, x, t):
        f, G = self.rsde.discretize(x, t)
        z = jax.random.normal(key, x.shape, x.dtype)
        x_mean = x - f
        return x_mean + per_sample(G, x) * z, x_mean


@PREDICTORS.register("ancestral_sampling")
class AncestralSamplingPredictor(Predictor):
    """Ancestral sampling of the SDE's discrete chain: ``x = x_mean + std · z`` with
    ``(x_mean, std) = sde.ancestral_step(x, t, score(x, t))``.

    The SDE owns its chain (VP: DDPM, VE: SMLD; Song et al. 2021, eq. 47 and appendix
    F), so any SDE implementing :meth:`~generative.sde.SDE.ancestral_step` works here
    unchanged; SDEs without one (sub-VP) raise ``ValueError`` naming the SDE.
    """

    def __init__(self, sde, score_fn, probability_flow=False):
        if not sde.has_ancestral_step:
            raise ValueError(f"ancestral_sampling needs an SDE with a discrete chain; "
                             f"{type(sde).__name__} has no discrete chain (it does not "
                             f"implement SDE._ancestral_step); use reverse_diffusion or "
                             f"euler_maruyama")
        if probability_flow:
            raise ValueError("ancestral_sampling has no probability-flow form; use "
                             "reverse_diffusion or euler_maruyama with probability_flow=True")
        super().__init__(sde, score_fn, probability_flow)

    def update(self, key, x, t):
        x_mean, std = self.sde.ancestral_step(x, t, self.score_fn(x, t))
        z = jax.random.normal(key, x.shape, x.dtype)
        return x_mean + per_sample(std, x) * z, x_mean


@PREDICTORS.register("none")
class NonePredictor(Predictor):
    """No predictor step (corrector-only sampling)."""

    evals_per_step = 0

    def update(self, key, x, t):
        return x, x


# ----------------------------------------------------------------------------- correctors


class Corrector:
    """``n_steps`` MCMC steps at fixed ``t``: ``update(key, x, t) -> (x, x_mean)``.

    Args:
      sde: the forward SDE.
      score_fn: ``score_fn(x [B, ...], t [B]) -> [B, ...]``.
      snr: signal-to-noise ratio ``r`` setting the step size.
      n_steps: corrector steps per call (a ``lax.scan``).

    Attributes:
      evals_per_step: score evaluations per ``update`` (``n_steps``).
    """

    def __init__(self, sde: SDE, score_fn: Callable, snr: float, n_steps: int):
        check_positive(snr, "snr")
        check_int(n_steps, "n_steps", minimum=0)
        self.sde = sde
        self.score_fn = checked_score_fn(score_fn)
        self.snr = float(snr)
        self.n_steps = int(n_steps)

    @property
    def evals_per_step(self) -> int:
        return self.n_steps

    def _step_size(self, x, t, grad, noise, alpha):
        """Per-sample step ``ε [B]``."""
        raise NotImplementedError

    def update(self, key, x, t):
        alpha = self.sde.langevin_alpha(t.astype(x.dtype))  # [B]

        def body(carry, k):
            x, _ = carry
            grad = self.score_fn(x, t)
            noise = jax.random.normal(jax.random.fold_in(key, k), x.shape, x.dtype)
            step = self._step_size(x, t, grad, noise, alpha)  # [B]
            x_mean = x + per_sample(step, x) * grad
            return (x_mean + per_sample(jnp.sqrt(2.0 * step), x) * noise, x_mean), None

        (x, x_mean), _ = jax.lax.scan(body, (x, x), jnp.arange(self.n_steps))
        return x, x_mean


@CORRECTORS.register("langevin")
class LangevinCorrector(Corrector):
    """Langevin corrector with signal-to-noise step size (Song et al. 2021, Algorithm 4/5).

    ``ε = 2 α (r ‖z‖ / ‖s‖)²`` with the norms averaged over the batch and ``α`` from
    :meth:`SDE.langevin_alpha`; ``x ← x + ε s + √(2ε) z``.
    """

    def _step_size(self, x, t, grad, noise, alpha):
        grad_norm = jnp.mean(_norms(grad))
        noise_norm = jnp.mean(_norms(noise))
        ratio = self.snr * noise_norm / jnp.maximum(grad_norm, jnp.finfo(x.dtype).tiny)
        return 2.0 * alpha * ratio**2


@CORRECTORS.register("ald")
class AnnealedLangevinCorrector(Corrector):
    """NCSN's annealed Langevin step as a corrector: ``ε = 2 α (r σ(t))²`` with
    ``σ(t)`` the perturbation kernel's std; ``x ← x + ε s + √(2ε) z``."""

    def _step_size(self, x, t, grad, noise, alpha):
        _, std = self.sde.marginal_prob(jnp.zeros_like(x), t)
        return 2.0 * alpha * (self.snr * std) ** 2


@CORRECTORS.register("none")
class NoneCorrector(Corrector):
    """No corrector step."""

    def __init__(self, sde, score_fn, snr=1.0, n_steps=0):
        super().__init__(sde, score_fn, 1.0, 0)

    @property
    def evals_per_step(self) -> int:
        return 0

    def update(self, key, x, t):
        return x, x


# ----------------------------------------------------------------------------- samplers


def pc_sampler(key: jax.Array, score_fn: Callable, sde: SDE, shape, *,
               predictor: str = "reverse_diffusion", corrector: str = "langevin",
               snr: float = 0.16, n_steps: int = 1, probability_flow: bool = False,
               denoise: bool = True, eps: float = 1e-3, dtype=jnp.float32,
               x_init: jax.Array | None = None) -> tuple[jax.Array, int]:
    """Predictor–corrector sampling of the reverse SDE (one ``lax.scan`` over N steps).

    ``x_N ~ p_T``; for ``t_i = linspace(T, eps, N)``: corrector then predictor at
    ``t_i``. ``prior_key, loop_key = split(key)``; step ``i`` uses
    ``fold_in(loop_key, i)``.

    Args:
      key: PRNG key.
      score_fn: ``score_fn(x [B, ...], t [B]) -> [B, ...]``.
      sde: the forward SDE; ``sde.N`` is the number of steps.
      shape: ``(B, ...)`` of the samples.
      predictor: name in ``PREDICTORS``.
      corrector: name in ``CORRECTORS``.
      snr: corrector signal-to-noise ratio.
      n_steps: corrector steps per time step.
      probability_flow: predictor follows the probability-flow ODE.
      denoise: return the last noise-free ``x_mean`` (score_sde's ``denoise``).
      eps: last time, in ``[0, T)``; ``> 0`` where the marginal std vanishes at
        ``t = 0`` (VP, sub-VP; see :func:`generative.checks.check_eps`).
      dtype: floating dtype of the samples.
      x_init: optional ``[B, ...]`` start instead of a prior draw.

    Returns:
      ``(samples [B, ...], nfe)`` with ``nfe = N · (predictor evals + corrector
      evals)``, the score evaluations actually made (score_sde counts
      ``N (n_steps + 1)`` even with ``none``).

    Example:
        >>> x, nfe = jax.jit(lambda k: pc_sampler(k, score_fn, VESDE(N=100), (64, 2)))(key)

    Paper: Song et al. 2021, Algorithm 1 and appendix G.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) < 1:
        raise ValueError(f"shape must be batch-first (B, ...), got {shape}")
    eps = check_eps(eps, sde)
    pred = PREDICTORS.get(predictor)(sde, score_fn, probability_flow)
    corr = CORRECTORS.get(corrector)(sde, score_fn, snr, n_steps)
    prior_key, loop_key = jax.random.split(key)
    if x_init is None:
        x = sde.prior_sampling(prior_key, shape, dtype)
    else:
        if tuple(x_init.shape) != shape:
            raise ValueError(f"x_init must have shape {shape}, got {shape_str(x_init.shape)}")
        x = jnp.asarray(x_init, dtype)
    timesteps = jnp.linspace(sde.T, eps, sde.N, dtype=x.dtype)

    def body(carry, i):
        x, _ = carry
        t = jnp.full((shape[0],), timesteps[i], x.dtype)
        k_corr, k_pred = jax.random.split(jax.random.fold_in(loop_key, i))
        x, x_mean = corr.update(k_corr, x, t)
        x, x_mean = pred.update(k_pred, x, t)
        return (x, x_mean), None

    (x, x_mean), _ = jax.lax.scan(body, (x, x), jnp.arange(sde.N))
    nfe = sde.N * (pred.evals_per_step + corr.evals_per_step)
    return (x_mean if denoise else x), nfe


def ode_sampler(key: jax.Array, score_fn: Callable, sde: SDE, shape, *,
                z: jax.Array | None = None, rtol: float = 1e-5, atol: float = 1e-5,
                eps: float = 1e-3, denoise: bool = False, dtype=jnp.float32,
                max_steps: int = 4096) -> tuple[jax.Array, jax.Array]:
    """Sample by integrating the probability-flow ODE from ``T`` to ``eps`` (adaptive RK45).

    ``dx/dt = f(x, t) − ½ g(t)² s(x, t)`` from ``x_T = z ~ p_T``; the whole batch is
    one ODE with one step size, as in score_sde (which used scipy's RK45 on the host).

    Args:
      key: PRNG key (prior draw and the optional denoising step).
      score_fn: ``score_fn(x [B, ...], t [B]) -> [B, ...]``.
      sde: the forward SDE.
      shape: ``(B, ...)``.
      z: optional ``[B, ...]`` latent to decode instead of a prior draw.
      rtol: relative tolerance.
      atol: absolute tolerance.
      eps: end time, in ``[0, T)``; ``> 0`` where the marginal std vanishes at ``t = 0``
        (:func:`generative.checks.check_eps`).
      denoise: finish with one reverse-diffusion mean step at ``eps`` (+1 NFE).
      dtype: floating dtype.
      max_steps: solver step cap.

    Returns:
      ``(samples [B, ...], nfe)`` with ``nfe`` an int32 scalar array.

    Example:
        >>> x, nfe = jax.jit(lambda k: ode_sampler(k, score_fn, VPSDE(), (64, 2)))(key)

    Paper: Song et al. 2021, section 4.3 and appendix D.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) < 1:
        raise ValueError(f"shape must be batch-first (B, ...), got {shape}")
    eps = check_eps(eps, sde)
    score_fn = checked_score_fn(score_fn)
    prior_key, denoise_key = jax.random.split(key)
    if z is None:
        x = sde.prior_sampling(prior_key, shape, dtype)
    else:
        if tuple(z.shape) != shape:
            raise ValueError(f"z must have shape {shape}, got {shape_str(z.shape)}")
        x = jnp.asarray(z, dtype)
    rsde = sde.reverse(score_fn, probability_flow=True)

    def drift(t, y):
        return rsde.sde(y, jnp.full((shape[0],), t, y.dtype))[0]

    x, stats = odeint_rk45(drift, x, sde.T, eps, rtol=rtol, atol=atol, max_steps=max_steps)
    nfe = stats.nfe
    if denoise:
        _, x = ReverseDiffusionPredictor(sde, score_fn).update(
            denoise_key, x, jnp.full((shape[0],), eps, x.dtype))
        nfe = nfe + 1
    return x, nfe
