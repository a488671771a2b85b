"""``stochastic-approximation``: Robbins–Monro and SGD/BGD/MBGD, as in the book's chapter 6.

* Robbins–Monro on ``g(w) = w³ − 5`` observed with Gaussian noise (root ``5^{1/3}``),
  over several seeds in one vmapped call, and on ``g(w) = tanh(w − 1)`` (root 1).
* Mean estimation on ``N`` samples uniform on a square centred at the origin:
  stochastic gradient descent (``m = 1``), mini-batch GD with ``m ∈ {5, 50}`` and
  batch GD, all with ``α_k = 1/k``, as 2-D trajectories and error curves.
* The incremental mean with ``α_k = 1/k`` against the prefix mean, and with a
  constant ``α`` against the exponentially weighted mean.

Reference: S. Zhao, *Mathematical Foundations of Reinforcement Learning* (2025),
chapter 6; H. Robbins & S. Monro (1951).
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from common.checks import check_fields
from common.recipe import RunContext, register_recipe
from rl import stochastic_approximation as sa


@dataclasses.dataclass(frozen=True)
class StochasticApproximationConfig:
    """Config of ``stochastic-approximation``.

    Attributes:
      seed: PRNG seed.
      rm_steps: Robbins–Monro iterations.
      rm_seeds: independent noisy runs of the ``w³ − 5`` problem (vmapped).
      cubic_w1: initial guess for ``w³ − 5``.
      cubic_step_scale: ``c`` in ``a_k = c / k`` for ``w³ − 5``. The slope of
        ``w³`` is unbounded, so ``c = 1`` from ``w1 = 0`` overshoots and diverges;
        a smaller ``c`` keeps the iterates in the region where RM's conditions hold.
      noise_std: standard deviation of the Gaussian observation noise.
      tanh_w1: initial guess for ``tanh(w − 1)``.
      num_samples: ``N`` samples for mean estimation.
      square_side: side of the square (centred at the origin) the samples are drawn from.
      gd_w1: initial guess of the mean-estimation runs.
      gd_steps: iterations of SGD / MBGD / BGD.
      batch_sizes: mini-batch sizes ``m`` (``m = 1`` is SGD).
      constant_alpha: constant step size of the incremental-mean comparison.
    """

    seed: int = 0
    rm_steps: int = 1000
    rm_seeds: int = 8
    cubic_w1: float = 0.0
    cubic_step_scale: float = 0.1
    noise_std: float = 1.0
    tanh_w1: float = 3.0
    num_samples: int = 100
    square_side: float = 20.0
    gd_w1: tuple[float, float] = (50.0, 50.0)
    gd_steps: int = 30
    batch_sizes: tuple[int, ...] = (1, 5, 50)
    constant_alpha: float = 0.1

    def validate(self) -> None:
        check_fields(self, positive_ints=("rm_steps", "rm_seeds", "num_samples", "gd_steps"),
                     nonnegative_ints=("seed",), positive=("cubic_step_scale", "square_side",
                                                           "constant_alpha"),
                     nonnegative=("noise_std",), sizes=("batch_sizes",))


def _rm_figure(cubic, cubic_root, tanh_clean, tanh_noisy, cfg):
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    k = np.arange(1, cubic.shape[1] + 1)
    for i, traj in enumerate(cubic):
        ax1.plot(k, traj, linewidth=0.8, alpha=0.7,
                 label=f"{len(cubic)} seeds" if i == 0 else None)
    ax1.axhline(cubic_root, color="black", linestyle="--", linewidth=1, label="5^(1/3)")
    ax1.set_xscale("log")
    ax1.set_xlabel("iteration k")
    ax1.set_ylabel("w_k")
    ax1.set_title(f"g(w) = w³ − 5 + N(0, {cfg.noise_std:g}²), a_k = {cfg.cubic_step_scale:g}/k",
                  fontsize=10)
    ax1.legend(fontsize=8)
    k2 = np.arange(1, tanh_clean.shape[0] + 1)
    ax2.plot(k2, tanh_clean, label="noise-free")
    ax2.plot(k2, tanh_noisy, label="noisy", alpha=0.8)
    ax2.axhline(1.0, color="black", linestyle="--", linewidth=1, label="root w* = 1")
    ax2.set_xscale("log")
    ax2.set_xlabel("iteration k")
    ax2.set_ylabel("w_k")
    ax2.set_title("g(w) = tanh(w − 1), a_k = 1/k", fontsize=10)
    ax2.legend(fontsize=8)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _gd_figure(x, runs, mean):
    """Three panels: the whole path from the start ``w_1`` (far from the data), a zoom on
    the iterates from ``k = 2`` on (where they all go after the first step, α_1 = 1),
    and the distance to the sample mean."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    fig, (ax0, ax1, ax2) = plt.subplots(1, 3, figsize=(14.5, 4.6), layout="constrained",
                                        width_ratios=(1.0, 1.35, 1.25))
    colors = {label: f"C{i}" for i, label in enumerate(runs)}
    # zoom window: the iterates from k = 2 on and the sample mean, padded, made square
    later = np.concatenate([traj[1:] for traj in runs.values()] + [mean[None]])
    lo, hi = later.min(0), later.max(0)
    centre, half = (lo + hi) / 2, max(float((hi - lo).max()) / 2 * 1.15, 0.5)
    zoom_lo, zoom_hi = centre - half, centre + half
    for ax in (ax0, ax1):
        ax.scatter(x[:, 0], x[:, 1], s=6, color="lightgray", label="samples x_i")
        ax.scatter([mean[0]], [mean[1]], marker="*", s=140, color="black", zorder=7,
                   edgecolors="white", linewidths=0.6, label="sample mean x̄")
        ax.set_xlabel("first coordinate of w")
        ax.set_ylabel("second coordinate of w")
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
    start = next(iter(runs.values()))[0]
    for label, traj in runs.items():
        ax0.plot(traj[:, 0], traj[:, 1], marker=".", markersize=3, linewidth=0.8,
                 color=colors[label])
        ax1.plot(traj[1:, 0], traj[1:, 1], marker=".", markersize=4, linewidth=0.9,
                 color=colors[label], label=label)
        ax1.scatter(traj[-1:, 0], traj[-1:, 1], marker="o", s=40, facecolors="none",
                    edgecolors=colors[label], linewidths=1.2, zorder=6)
    ax0.scatter([start[0]], [start[1]], marker="X", s=70, color="black", zorder=6,
                label=f"start w_1 = ({start[0]:g}, {start[1]:g})")
    ax0.add_patch(Rectangle(tuple(zoom_lo), 2 * half, 2 * half, fill=False,
                            edgecolor="black", linestyle="--", linewidth=0.9))
    ax0.set_title("whole path from the start w_1 (dashed: zoom)", fontsize=10)
    ax0.legend(fontsize=7, loc="upper left")
    ax1.set_xlim(zoom_lo[0], zoom_hi[0])
    ax1.set_ylim(zoom_lo[1], zoom_hi[1])
    ax1.set_title("zoom: iterates w_k for k ≥ 2 (α_k = 1/k; circle: last)", fontsize=10)
    ax1.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncols=3)
    for label, traj in runs.items():
        ax2.semilogy(np.arange(1, len(traj) + 1), np.linalg.norm(traj - mean, axis=-1),
                     label=label, color=colors[label])
    ax2.set_xlabel("iteration k")
    ax2.set_ylabel("‖w_k − x̄‖ (Euclidean)")
    ax2.set_title("distance to the sample mean", fontsize=10)
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=7)
    return fig


@register_recipe(
    "stochastic-approximation",
    "Robbins–Monro root finding and SGD/BGD/mini-batch GD on mean estimation (book ch. 6)",
    claim=("Robbins–Monro finds the roots 5^(1/3) and 1 under noise; SGD, mini-batch and "
           "batch GD reach the mean"),
    quick=StochasticApproximationConfig(),
    full=StochasticApproximationConfig(rm_steps=20000, rm_seeds=32, gd_steps=200),
)
def stochastic_approximation(ctx: RunContext, cfg: StochasticApproximationConfig) -> dict:
    t0 = time.perf_counter()
    key_rm, key_tanh, key_data, key_gd = jax.random.split(jax.random.key(cfg.seed), 4)
    summary: dict = {}

    # ---- Robbins–Monro
    noise = cfg.noise_std
    cubic_g = lambda w, key: w**3 - 5.0 + noise * jax.random.normal(key, w.shape, w.dtype)
    step = lambda k: cfg.cubic_step_scale / k
    cubic = jax.jit(jax.vmap(lambda key: sa.robbins_monro(cubic_g, cfg.cubic_w1, cfg.rm_steps,
                                                          step, key)))(
        jax.random.split(key_rm, cfg.rm_seeds))
    cubic = np.asarray(cubic)  # [seeds, n + 1]
    root = 5.0 ** (1.0 / 3.0)
    final_errors = np.abs(cubic[:, -1] - root)
    summary["rm_cubic_root"] = root
    summary["rm_cubic_final_w_mean"] = float(cubic[:, -1].mean())
    summary["rm_cubic_final_abs_error_median"] = float(np.median(final_errors))
    summary["rm_cubic_final_abs_error_max"] = float(final_errors.max())
    tanh_clean = np.asarray(sa.robbins_monro(lambda w, key: jnp.tanh(w - 1.0), cfg.tanh_w1,
                                             cfg.rm_steps))
    tanh_noisy = np.asarray(sa.robbins_monro(
        lambda w, key: jnp.tanh(w - 1.0) + noise * jax.random.normal(key, w.shape, w.dtype),
        cfg.tanh_w1, cfg.rm_steps, key=key_tanh))
    summary["rm_tanh_final_w_noise_free"] = float(tanh_clean[-1])
    summary["rm_tanh_final_w_noisy"] = float(tanh_noisy[-1])
    ctx.save_figure(_rm_figure(cubic, root, tanh_clean, tanh_noisy, cfg), "robbins_monro")
    for k in np.unique(np.geomspace(1, cfg.rm_steps + 1, 40).astype(int)):
        ctx.logger.write(int(k), {"rm/cubic_abs_error_median":
                                  float(np.median(np.abs(cubic[:, k - 1] - root))),
                                  "rm/tanh_noise_free": float(tanh_clean[k - 1])})

    # ---- mean estimation: SGD, MBGD, BGD
    half = cfg.square_side / 2.0
    x = jax.random.uniform(key_data, (cfg.num_samples, 2), minval=-half, maxval=half)
    mean = np.asarray(x.mean(0))
    w1 = jnp.asarray(cfg.gd_w1, x.dtype)
    runs = {}
    for i, m in enumerate(cfg.batch_sizes):
        label = "SGD (m=1)" if m == 1 else f"MBGD (m={m})"
        runs[label] = np.asarray(sa.mbgd_mean(x, w1, cfg.gd_steps, m,
                                              jax.random.fold_in(key_gd, i)))
    runs["BGD (all samples)"] = np.asarray(sa.bgd_mean(x, w1, cfg.gd_steps))
    summary["sample_mean"] = mean.round(4).tolist()
    summary["gd_final_distance_to_sample_mean"] = {
        label: float(np.linalg.norm(traj[-1] - mean)) for label, traj in runs.items()}
    ctx.save_figure(_gd_figure(np.asarray(x), runs, mean), "mean_estimation_sgd")

    # ---- incremental mean: 1/k equals the prefix mean; constant α the EW mean
    samples = np.asarray(x[:, 0])
    prefix = np.cumsum(samples) / np.arange(1, len(samples) + 1)
    summary["incremental_mean_max_diff_from_prefix_mean"] = float(
        np.abs(np.asarray(sa.incremental_mean(samples)) - prefix).max())
    alpha = cfg.constant_alpha
    weights = alpha * (1 - alpha) ** np.arange(len(samples))[::-1]
    ew = (weights * samples).sum()  # w1 = 0 contributes (1 − α)^N · 0
    summary["incremental_mean_constant_alpha_diff_from_ew_mean"] = float(
        abs(float(sa.incremental_mean(samples, alpha)[-1]) - ew))
    summary["seconds"] = time.perf_counter() - t0
    return summary
