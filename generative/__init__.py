"""Score-based generative modelling: score matching, SMLD/NCSN, score SDEs,
predictor-corrector and probability-flow samplers, exact likelihood.

Modules (pure functions at the bottom, models above, recipes on top):

* :mod:`generative.sde` — ``VPSDE``, ``subVPSDE``, ``VESDE`` (registry ``SDES``) with
  score_sde's interface, each owning its discretisation and (VP, VE) its ancestral
  step; ``make_score_fn`` turns a noise predictor into a score.
* :mod:`generative.losses` — continuous SDE loss, SMLD (NCSN), DDPM, denoising and
  sliced score matching.
* :mod:`generative.sampling` — Langevin and annealed Langevin dynamics, registered
  predictors (``PREDICTORS``) and correctors (``CORRECTORS``), ``pc_sampler``,
  ``ode_sampler``, NCSN noise-level helpers.
* :mod:`generative.ode` — adaptive Dormand–Prince RK45 with PI step control in one
  ``lax.while_loop``.
* :mod:`generative.likelihood` — probability-flow log-likelihood (exact or Hutchinson
  divergence), bits/dim with uniform dequantisation.
* :mod:`generative.metrics` — sliced Wasserstein distance and MMD.
* :mod:`generative.models` — score networks (``SCORE_NETS``: ``mlp``, ``unet``).
* :mod:`generative.checks` — the package's own argument checks (``x [B, ...]``,
  ``t [B]`` in ``[0, 1]``); generic ones come from :mod:`common.checks`.
* :mod:`generative.data` — 2-D toys, Gaussian mixtures with exact scores, digits and
  Fashion-MNIST loaders.
* :mod:`generative.recipes` — ``ncsn-toy``, ``sde-2d``, ``sde-digits``;
  :mod:`generative.benchmarks` — train throughput, sampler overhead, ODE vs PC NFE.

Reference: Song & Ermon 2019, 2020; Song et al. 2021 ("Score-Based Generative Modeling
through Stochastic Differential Equations"), whose yang-song/score_sde semantics the
SDEs, losses and samplers follow.
"""
