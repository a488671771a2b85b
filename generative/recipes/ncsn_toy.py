"""``ncsn-toy``: why NCSN anneals — Langevin dynamics on a two-Gaussian mixture.

Song & Ermon 2019, section 3.2: for ``p = ⅕ N((−5, −5), I) + ⅘ N((5, 5), I)`` the score
in each mode's basin does not depend on the mixture weights, so Langevin dynamics
started uniformly in ``[−8, 8]²`` keeps the basin split of its initial points (≈ ½, ½)
instead of recovering ⅕ / ⅘. Annealed Langevin dynamics with the scores of the
σ-perturbed mixture (σ from 20 down to 1) mixes between the modes at large σ and
recovers the weights.

Both samplers are run with the exact scores (as in the paper's figure 3) and with a
noise-conditional score network trained by the NCSN (SMLD) loss. The headline figures
are the fraction of samples in the ⅘ mode for each.
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from common.checks import check_fields
from common.optim import OptimConfig
from common.recipe import RunContext, plot_smoothed, register_recipe
from generative.data import ncsn_mixture
from generative.losses import smld_loss
from generative.models import init_score_net
from generative.sampling import annealed_langevin_dynamics, geometric_sigmas, langevin_dynamics
from generative.training import TrainConfig, net_apply, train_score_net


@dataclasses.dataclass(frozen=True)
class NCSNToyConfig:
    """Config of ``ncsn-toy`` (the paper's values: ε = 0.1, σ 20 → 1 over 10 levels,
    100 steps each; plain Langevin 1000 steps of ε = 0.1)."""

    seed: int = 0
    n_samples: int = 2000
    init_range: float = 8.0
    langevin_step: float = 0.1
    langevin_steps: int = 1000
    sigma_max: float = 20.0
    sigma_min: float = 1.0
    num_levels: int = 10
    steps_each: int = 100
    step_lr: float = 0.1
    hidden: int = 128
    depth: int = 2
    train: TrainConfig = TrainConfig(
        steps=2000, batch_size=256, chunk_size=500, checkpoint_every=1000, ema_decay=0.99,
        optim=OptimConfig(name="adam", learning_rate=2e-3, schedule="cosine",
                          warmup_steps=100, end_factor=0.05, clip_norm=1.0))

    def validate(self) -> None:
        check_fields(self, positive_ints=("n_samples", "langevin_steps", "num_levels",
                                          "steps_each", "hidden", "depth"),
                     nonnegative_ints=("seed",), positive=("init_range", "langevin_step",
                                                           "sigma_max", "sigma_min", "step_lr"))
        if not self.sigma_min < self.sigma_max:
            raise ValueError(f"sigma_min ({self.sigma_min}) must be below sigma_max "
                             f"({self.sigma_max})")


def _weight(x) -> float:
    """Fraction of samples on the (5, 5) side of the line x₁ + x₂ = 0."""
    return float(jnp.mean(jnp.sum(x, axis=-1) > 0))


def _stderr(w: float, n: int) -> float:
    return math.sqrt(max(w * (1 - w), 1e-12) / n)


def _scatter(panels, lim):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.0 * len(panels), 3.2))
    for ax, (title, pts) in zip(axes, panels, strict=True):
        pts = np.asarray(pts)
        ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.4)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("⅕ N((−5,−5), I) + ⅘ N((5,5), I): samples", fontsize=10)
    fig.tight_layout()
    return fig


def _weights_bar(weights: dict[str, float], errors: dict[str, float], truth: float):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 3.4))
    names = list(weights)
    colors = ["tab:gray" if "plain" in n else "tab:blue" for n in names]
    ax.bar(range(len(names)), [weights[n] for n in names],
           yerr=[2 * errors[n] for n in names], color=colors, capsize=3)
    ax.axhline(truth, color="tab:red", linestyle="--", label=f"true weight {truth}")
    ax.axhline(0.5, color="black", linestyle=":", linewidth=0.8, label="initial basin split")
    ax.set_xticks(range(len(names)), [n.replace("_", "\n") for n in names], fontsize=8)
    ax.set_ylabel("fraction in the (5, 5) mode")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("recovered mixture weight (±2 s.e.)", fontsize=10)
    fig.tight_layout()
    return fig


def _loss_curve(history):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.0, 3.0))
    plot_smoothed(ax, history, "loss")
    ax.set_xlabel("step")
    ax.set_ylabel("SMLD loss")
    ax.set_title("noise-conditional score network", fontsize=10)
    fig.tight_layout()
    return fig


@register_recipe(
    "ncsn-toy",
    "NCSN two-Gaussian mixture: annealed Langevin recovers the 0.2/0.8 weights, plain "
    "Langevin does not (exact and learned scores)",
    claim=("annealed Langevin recovers the 0.8 weight (0.798 exact score, 0.790 learned); "
           "plain Langevin does not (0.52 / 0.55)"),
    quick=NCSNToyConfig(),
    full=NCSNToyConfig(n_samples=10000, hidden=256, depth=3,
                       train=dataclasses.replace(NCSNToyConfig().train, steps=20000,
                                                 checkpoint_every=5000)),
)
def ncsn_toy(ctx: RunContext, cfg: NCSNToyConfig) -> dict:
    t0 = time.perf_counter()
    mix = ncsn_mixture()
    truth = float(mix.weights[1] / sum(mix.weights))
    key = jax.random.key(cfg.seed)
    init_key, train_key, x0_key, sample_key = jax.random.split(key, 4)
    sigmas = geometric_sigmas(cfg.sigma_max, cfg.sigma_min, cfg.num_levels)
    log_ratio = math.log(cfg.sigma_max / cfg.sigma_min)
    level_of = lambda sigma: jnp.log(sigma / cfg.sigma_min) / log_ratio  # σ → [0, 1]

    # ---------------------------------------------------------------- learned scores
    model = init_score_net("mlp", init_key, dim=2, hidden=cfg.hidden, depth=cfg.depth,
                           embed_dim=64, embedding="fourier", embedding_scale=4.0)

    def loss_factory(graphdef):
        def loss_fn(params, rest, batch, key):
            score = lambda x, s: -net_apply(graphdef, params, rest, x, level_of(s)) / s[:, None]
            return smld_loss(score, sigmas, batch["x"], key), {}

        return loss_fn

    state = train_score_net(
        model, loss_factory, cfg.train, key=train_key, data=jnp.zeros(()),
        batch_fn=lambda _, k: {"x": mix.sample(k, cfg.train.batch_size)},
        logger=ctx.logger, checkpointer=ctx.checkpointer(), progress=ctx.progress,
        desc="ncsn-toy")
    history = ctx.history()  # the whole run, a resumed one included
    graphdef, params, rest = state.graphdef, state.ema, state.rest

    @jax.jit
    def learned_score(x, sigma):
        return -net_apply(graphdef, params, rest, x, level_of(sigma)) / sigma[:, None]

    # ---------------------------------------------------------------- sampling
    n = cfg.n_samples
    x0 = jax.random.uniform(x0_key, (n, 2), minval=-cfg.init_range, maxval=cfg.init_range)
    plain = jax.jit(lambda k, score: langevin_dynamics(
        k, score, x0, step_size=cfg.langevin_step, n_steps=cfg.langevin_steps),
        static_argnums=1)
    annealed = jax.jit(lambda k, score: annealed_langevin_dynamics(
        k, score, x0, sigmas, step_lr=cfg.step_lr, n_steps_each=cfg.steps_each),
        static_argnums=1)
    exact_data_score = lambda x: mix.score(x)
    exact_level_score = lambda x, s: mix.score(x, 1.0, s)
    sigma_last = float(sigmas[-1])
    learned_last = lambda x: learned_score(x, jnp.full((x.shape[0],), sigma_last))
    k1, k2, k3, k4 = jax.random.split(sample_key, 4)
    samples = {
        "plain_exact": plain(k1, exact_data_score),
        "annealed_exact": annealed(k2, exact_level_score),
        "plain_learned": plain(k3, learned_last),
        "annealed_learned": annealed(k4, learned_score),
    }
    weights = {name: _weight(x) for name, x in samples.items()}
    errors = {name: _stderr(w, n) for name, w in weights.items()}
    ctx.logger.write(cfg.train.steps, {f"weight/{k}": v for k, v in weights.items()})

    data = mix.sample(jax.random.fold_in(key, 7), n)
    ctx.save_figure(_scatter([("data", data), ("Langevin, exact score", samples["plain_exact"]),
                              ("annealed, exact score", samples["annealed_exact"]),
                              ("Langevin, learned (σ_L)", samples["plain_learned"]),
                              ("annealed, learned", samples["annealed_learned"])],
                             lim=cfg.init_range + 2), "samples")
    ctx.save_figure(_weights_bar(weights, errors, truth), "weights")
    ctx.save_figure(_loss_curve(history), "loss")
    losses = [m["loss"] for _, m in history if "loss" in m]
    return {
        "true_weight": truth,
        "weight_annealed_exact": weights["annealed_exact"],
        "weight_plain_exact": weights["plain_exact"],
        "weight_annealed_learned": weights["annealed_learned"],
        "weight_plain_learned": weights["plain_learned"],
        "weight_stderr": errors["annealed_exact"],
        "final_loss": float(np.mean(losses[-100:])) if losses else float("nan"),
        "samples": n,
        "train_steps": int(state.step),
        "seconds": time.perf_counter() - t0,
    }
