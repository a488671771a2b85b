"""Grid-world recipes: ``gridworld-dp`` and ``gridworld-mc``.

``gridworld-dp`` reproduces the book's chapter 3–4 results on the 5×5 grid world:
optimal values and policies for γ ∈ {0.9, 0.5, 0} and r_forbidden ∈ {−1, −10},
value iteration vs policy iteration vs truncated policy iteration, the chapter 2
2×2 examples, and the invariance of optimal policies to an affine change of rewards.

``gridworld-mc`` runs the chapter 5 algorithms on the same world (r_forbidden = −10
by default): MC Basic for every episode length 1…L (one vmapped call); MC Exploring
Starts with the book's plain average of returns and with a forgetting factor, and MC
ε-greedy for ε ∈ {0, 0.1, 0.2, 0.5} over several seeds — Exploring Starts being
ε-greedy control with ε = 0, all these runs are one vmapped call over rows
(key, ε, memory). Every policy found is judged by its true values from exact policy
evaluation, against value iteration (greedy) and exact ε-greedy policy iteration
(the best ε-greedy policy, :func:`rl.dp.epsilon_greedy_policy_iteration`).

The algorithms live in :mod:`rl.dp` and :mod:`rl.monte_carlo`; the benchmarks of the
episode generator and of MC ε-greedy against plain numpy loops are in
:mod:`rl.benchmarks`.

Reference: S. Zhao, *Mathematical Foundations of Reinforcement Learning* (2025),
chapters 2–5.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from common.checks import check_fields, check_in_range
from common.recipe import RunContext, register_recipe
from rl import dp, monte_carlo
from rl.envs.gridworld import (
    GridWorld,
    book_2x2,
    book_5x5,
    gridworld_legend_handles,
    one_hot_policy,
    plot_gridworld,
)

# The book's optimal state values of the 5x5 example (γ = 0.9, r_boundary =
# r_forbidden = −1, r_target = 1), as printed to one decimal (chapter 3).
BOOK_5X5_OPTIMAL_VALUES = (
    (5.8, 5.6, 6.2, 6.5, 5.8),
    (6.5, 7.2, 8.0, 7.2, 6.5),
    (7.2, 8.0, 10.0, 8.0, 7.2),
    (8.0, 10.0, 10.0, 10.0, 8.0),
    (7.2, 9.0, 10.0, 9.0, 8.1),
)

OPTIMAL_ATOL = 1e-3  # a policy is optimal at s when |v_π(s) − v*(s)| < OPTIMAL_ATOL


def _fmt(x: float) -> str:
    return f"{x:g}"


def _grid_panels(world: GridWorld, panels, suptitle: str, *, cols: int | None = None,
                 size: float = 2.6, caption: str | None = None,
                 value_label: str = "state value v(s)", value_format: str = "{:.1f}"):
    """Grid-world panels ``(title, values [S], policy [S, A])`` on one colour scale.

    One colour bar for the whole figure (the same colour is the same value in every
    panel), and a legend of the cell and policy glyphs under the panels; ``caption``
    (lines of text) goes at the bottom.
    """
    import matplotlib.pyplot as plt

    n = len(panels)
    cols = min(cols or n, n)
    rows = -(-n // cols)
    caption_in = 0.15 * (caption.count("\n") + 1) + 0.05 if caption else 0.0
    strip_in = 0.4 + caption_in  # legend row + caption
    width, height = size * cols + 1.0, size * rows + 0.55 + strip_in
    fig, axes = plt.subplots(rows, cols, figsize=(width, height), squeeze=False,
                             layout="constrained")
    strip = strip_in / height
    fig.get_layout_engine().set(rect=(0.0, strip, 1.0, 1.0 - strip))
    values = np.stack([np.asarray(v, dtype=float) for _, v, _ in panels])
    vmin, vmax = float(values.min()), float(values.max())
    if vmax - vmin < 1e-9:
        vmin, vmax = vmin - 1.0, vmax + 1.0
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    for ax, (title, v, policy) in zip(axes.ravel(), panels, strict=False):
        plot_gridworld(world, v, policy, ax=ax, title=title, vmin=vmin, vmax=vmax,
                       value_format=value_format)
    fig.colorbar(axes[0, 0].images[0], ax=axes, shrink=0.85, aspect=25, label=value_label)
    # the grey glyphs of non-greedy actions appear (plot_gridworld's min_prob = 0.05)
    stochastic = any(((p < p.max(-1, keepdims=True) - 1e-6) & (p >= 0.05)).any()
                     for p in (np.asarray(p, dtype=float) for _, _, p in panels))
    fig.legend(handles=gridworld_legend_handles(stochastic=stochastic), loc="upper center",
               bbox_to_anchor=(0.5, strip), ncols=5, fontsize=8, frameon=False,
               handlelength=1.5, columnspacing=1.2)
    if caption:
        fig.text(0.5, 0.08 / height, caption, ha="center", va="bottom", fontsize=8,
                 linespacing=1.35)
    fig.suptitle(suptitle)
    return fig


def _forbidden_entries(world: GridWorld, policy) -> int:
    """Number of states whose (greedy) action moves into a forbidden cell."""
    next_state, _ = world.transition_table()
    actions = np.asarray(policy).argmax(-1)
    lands = next_state[np.arange(world.num_states), actions]
    return int(world.forbidden_mask()[lands].sum())


# ====================================================================== gridworld-dp


@dataclasses.dataclass(frozen=True)
class GridworldDPConfig:
    """Config of ``gridworld-dp``.

    Attributes:
      gammas: discounts of the optimal-policy panels (book: 0.9, 0.5, 0).
      r_forbiddens: forbidden-cell rewards (book: −1, −10).
      tol: value-iteration / truncated-PI stopping threshold.
      max_iters: iteration cap (and history length).
      truncation_steps: ``j`` values of truncated policy iteration to compare.
      reward_shift: ``b`` of the affine reward change ``r → r + b`` checked to leave
        the optimal policy unchanged.
    """

    gammas: tuple[float, ...] = (0.9, 0.5, 0.0)
    r_forbiddens: tuple[float, ...] = (-1.0, -10.0)
    tol: float = 1e-6
    max_iters: int = 1000
    truncation_steps: tuple[int, ...] = (1, 3, 6, 100)
    reward_shift: float = 1.0

    def validate(self) -> None:
        check_fields(self, positive_ints=("max_iters",), positive=("tol",),
                     sizes=("truncation_steps",), nonempty=("gammas", "r_forbiddens"))
        for gamma in self.gammas:
            check_in_range(gamma, "gammas", 0.0, 1.0, high_open=True)


def _dp_optimal_figure(results, cfg):
    panels = [(f"γ={_fmt(gamma)}, r_forbidden={_fmt(r_forbidden)}",
               results[(r_forbidden, gamma)].values, results[(r_forbidden, gamma)].policy)
              for r_forbidden in cfg.r_forbiddens for gamma in cfg.gammas]
    # the cells' layout does not depend on the rewards: one world draws every panel
    return _grid_panels(book_5x5(), panels,
                        "Optimal state values and policies of the 5×5 grid world",
                        cols=len(cfg.gammas), value_label="optimal value v*(s)")


def _dp_convergence_figure(curves, title, tol):
    """Every curve in full, to the iteration at which its algorithm stopped."""
    import matplotlib.pyplot as plt

    floor = 1e-12  # an exact 0 (policy iteration's final evaluation) is drawn here
    fig, ax = plt.subplots(figsize=(7.5, 4.4), layout="constrained")
    for label, errors in curves.items():
        errors = np.maximum(np.asarray(errors), floor)
        k = np.arange(len(errors))
        # j = 1 retraces value iteration: dashed, so that both stay visible
        (line,) = ax.semilogy(k, errors, marker="o" if len(errors) < 15 else None,
                              markersize=3, linestyle="--" if "≡" in label else "-",
                              label=f"{label}: stops at k={len(errors) - 1}")
        ax.plot(k[-1], errors[-1], marker="s", markersize=5, color=line.get_color())
    stops = {len(e) - 1 for label, e in curves.items()
             if label == "value iteration" or "≡" in label}
    if len(stops) > 1:  # same algorithm, different float rounding of the stopping test
        ax.text(0.98, 0.04, "truncated PI with j = 1 is value iteration; their stops differ\n"
                "only by floating-point rounding of ‖v_k+1 − v_k‖∞ near the threshold",
                transform=ax.transAxes, ha="right", va="bottom", fontsize=7, color="gray")
    ax.axhline(tol, color="gray", linestyle=":", linewidth=1)
    ax.annotate(f"stopping threshold {tol:g} (on ‖v_k+1 − v_k‖∞)", (1, tol),
                xycoords=("axes fraction", "data"), xytext=(-4, 3),
                textcoords="offset points", ha="right", va="bottom", fontsize=7,
                color="gray")
    ax.set_xlabel("iteration k (square: last iteration)")
    ax.set_ylabel(f"‖v_k − v*‖∞ (0 drawn at {floor:g})")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3)
    return fig


@register_recipe(
    "gridworld-dp",
    "Bellman equations on the book's grid world: optimal values/policies for several γ "
    "and r_forbidden, value vs (truncated) policy iteration, the 2x2 examples",
    claim=("the 5×5 optimal values match the book's table to its rounding; value and policy "
           "iteration agree"),
    quick=GridworldDPConfig(),
    full=GridworldDPConfig(truncation_steps=(1, 2, 3, 6, 20, 100), max_iters=2000,
                           tol=1e-7),
)
def gridworld_dp(ctx: RunContext, cfg: GridworldDPConfig) -> dict:
    t0 = time.perf_counter()
    summary: dict = {}
    gammas = jnp.asarray(cfg.gammas)
    results = {}
    for r_forbidden in cfg.r_forbiddens:
        world = book_5x5(r_forbidden=r_forbidden)
        P, R = world.model()
        batch = jax.vmap(lambda g: dp.value_iteration(P, R, g, tol=cfg.tol,
                                                      max_iters=cfg.max_iters))(gammas)
        for j, gamma in enumerate(cfg.gammas):
            results[(r_forbidden, gamma)] = jax.tree.map(lambda x: x[j], batch)
    ctx.logger.write(0, {f"dp/v_mean/rf{_fmt(rf)}_g{_fmt(g)}": float(res.values.mean())
                         for (rf, g), res in results.items()})
    ctx.save_figure(_dp_optimal_figure(results, cfg), "dp_optimal_values_policies")

    # the book's headline example: γ = 0.9, r_forbidden = −1
    world = book_5x5(r_forbidden=-1.0)
    P, R = world.model()
    vi = dp.value_iteration(P, R, 0.9, tol=cfg.tol, max_iters=cfg.max_iters)
    pi = dp.policy_iteration(P, R, 0.9)
    v_star = np.asarray(vi.values)
    summary["optimal_values_gamma0.9_rf-1"] = np.round(
        v_star.reshape(5, 5).astype(np.float64), 3).tolist()
    summary["v_star_target_gamma0.9"] = float(v_star[world.target_state])
    summary["max_abs_diff_from_book_table"] = float(
        np.abs(v_star.reshape(5, 5) - np.asarray(BOOK_5X5_OPTIMAL_VALUES)).max())
    summary["bellman_optimality_residual"] = float(vi.residual)
    summary["value_iteration_iterations"] = int(vi.num_iterations)
    summary["policy_iteration_iterations"] = int(pi.num_iterations)
    summary["vi_vs_pi_max_abs_diff"] = float(np.abs(v_star - np.asarray(pi.values)).max())
    summary["vi_pi_same_policy"] = bool(np.array_equal(np.asarray(vi.policy),
                                                       np.asarray(pi.policy)))

    # convergence of VI, PI and truncated PI toward v*
    v_exact = np.asarray(dp.policy_evaluation(P, R, pi.policy, 0.9).values)
    curves = {}
    k_pi = int(pi.num_iterations)
    curves["policy iteration"] = np.abs(np.asarray(pi.history[:k_pi + 1]) - v_exact).max(-1)
    k_vi = int(vi.num_iterations)
    curves["value iteration"] = np.abs(np.asarray(vi.history[:k_vi + 1]) - v_exact).max(-1)
    for j in cfg.truncation_steps:
        tpi = dp.truncated_policy_iteration(P, R, 0.9, num_eval_steps=j, tol=cfg.tol,
                                            max_iters=cfg.max_iters)
        label = f"truncated PI, j={j}" + (" (≡ value iteration)" if j == 1 else "")
        stop = int(tpi.num_iterations) + 1  # later rows of the history repeat the last
        curves[label] = np.abs(np.asarray(tpi.history[:stop]) - v_exact).max(-1)
        summary[f"truncated_pi_j{j}_iterations"] = int(tpi.num_iterations)
    ctx.save_figure(_dp_convergence_figure(
        curves, "γ=0.9, r_forbidden=−1: value, policy and truncated policy iteration",
        cfg.tol), "dp_convergence")

    # how γ and r_forbidden shape the policy: moves into forbidden cells
    entries = {f"rf{_fmt(rf)}_gamma{_fmt(g)}": _forbidden_entries(book_5x5(r_forbidden=rf),
                                                                  results[(rf, g)].policy)
               for rf in cfg.r_forbiddens for g in cfg.gammas}
    summary["states_moving_into_forbidden"] = entries

    # affine reward change r -> r + b leaves the optimal policy unchanged
    shifted = book_5x5(r_forbidden=-1.0 + cfg.reward_shift,
                       r_boundary=-1.0 + cfg.reward_shift, r_target=1.0 + cfg.reward_shift,
                       r_other=cfg.reward_shift)
    Ps, Rs = shifted.model()
    vis = dp.value_iteration(Ps, Rs, 0.9, tol=cfg.tol, max_iters=cfg.max_iters)
    summary["reward_shift_same_policy"] = bool(np.array_equal(np.asarray(vis.policy),
                                                              np.asarray(vi.policy)))
    summary["reward_shift_value_offset"] = float(np.mean(np.asarray(vis.values) - v_star))

    # chapter 2: the 2x2 world, three policies, γ = 0.9
    small = book_2x2()
    P2, R2 = small.model()
    policies = {
        "down_right": one_hot_policy([2, 2, 1, 4]),  # s1 down, s2 down, s3 right, s4 stay
        "via_forbidden": one_hot_policy([1, 2, 1, 4]),  # s1 right into the forbidden s2
        "mixed": jnp.asarray(one_hot_policy([2, 2, 1, 4])).at[0].set(
            jnp.array([0.0, 0.5, 0.5, 0.0, 0.0])),
    }
    summary["book_2x2_policy_values_gamma0.9"] = {
        name: np.round(np.asarray(dp.policy_evaluation(P2, R2, p, 0.9).values, np.float64),
                       4).tolist()
        for name, p in policies.items()}
    summary["book_2x2_optimal_values_gamma0.9"] = np.round(
        np.asarray(dp.value_iteration(P2, R2, 0.9).values, np.float64), 4).tolist()
    opt2 = dp.value_iteration(P2, R2, 0.9)
    titles = {"mixed": "mixed: s1 right or down (½ each)"}
    panels = [(titles.get(name, name.replace("_", " ")),
               dp.policy_evaluation(P2, R2, p, 0.9).values, p) for name, p in policies.items()]
    panels.append(("optimal", opt2.values, opt2.policy))
    ctx.save_figure(_grid_panels(small, panels, "The 2×2 world of chapter 2 (γ = 0.9)",
                                 size=2.2, value_format="{:.2f}", value_label="v_π(s)"),
                    "dp_2x2_examples")
    summary["seconds"] = time.perf_counter() - t0
    return summary


# ====================================================================== gridworld-mc


@dataclasses.dataclass(frozen=True)
class GridworldMCConfig:
    """Config of ``gridworld-mc``.

    Attributes:
      seed: base PRNG seed.
      gamma: discount.
      r_forbidden: forbidden-cell reward (−10 makes forbidden cells costly enough
        that optimal paths avoid them).
      max_episode_length: MC Basic is run for every episode length 1…this.
      basic_iterations: policy-iteration steps of MC Basic.
      snapshot_lengths: episode lengths drawn in the MC Basic figure.
      episodes, episode_length, batch, tail: the budget of every Exploring Starts and
        ε-greedy run (``batch`` episodes in parallel per policy update; ``tail``
        extra steps per episode whose visits only feed earlier returns, removing the
        truncation bias of every-visit returns).
      es_memories: forgetting factors of the Exploring Starts runs (1 = the book's
        running average of all returns).
      eps_values: ε values of MC ε-greedy.
      eps_seeds: seeds per ε.
      eps_memory: forgetting factor of the ε-greedy runs.
    """

    seed: int = 0
    gamma: float = 0.9
    r_forbidden: float = -10.0
    max_episode_length: int = 100
    basic_iterations: int = 15
    snapshot_lengths: tuple[int, ...] = (1, 2, 3, 4, 14, 15, 30, 100)
    episodes: int = 20000
    episode_length: int = 100
    batch: int = 100
    tail: int = 50
    es_memories: tuple[float, ...] = (1.0, 0.9)
    eps_values: tuple[float, ...] = (0.0, 0.1, 0.2, 0.5)
    eps_seeds: int = 2
    eps_memory: float = 0.9

    def validate(self) -> None:
        check_fields(self, positive_ints=("max_episode_length", "basic_iterations", "episodes",
                                          "episode_length", "batch", "eps_seeds"),
                     nonnegative_ints=("seed", "tail"), sizes=("snapshot_lengths",),
                     nonempty=("es_memories", "eps_values"))
        check_in_range(self.gamma, "gamma", 0.0, 1.0, high_open=True)
        check_in_range(self.eps_values, "eps_values", 0.0, 1.0)
        check_in_range(self.es_memories, "es_memories", 0.0, 1.0, low_open=True)
        check_in_range(self.eps_memory, "eps_memory", 0.0, 1.0, low_open=True)


def _mc_basic_figure(world, sweep, lengths, snapshot_lengths):
    shown = [L for L in snapshot_lengths if L in lengths] or [lengths[-1]]
    panels = [(f"episode length {L}", sweep.values[lengths.index(L)],
               sweep.policy[lengths.index(L)]) for L in shown]
    return _grid_panels(world, panels,
                        "MC Basic: estimated values and greedy policies vs episode length",
                        cols=4, value_label="estimated value v_MC(s)")


def _mc_basic_curves(lengths, optimal_states, positive_states, value_error, num_states):
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot(lengths, optimal_states, label="greedy action optimal")
    ax1.plot(lengths, positive_states, label="estimated value > 0 (target reached)")
    ax1.axhline(num_states, color="gray", linestyle=":", linewidth=1)
    ax1.set_xlabel("episode length")
    ax1.set_ylabel("number of states")
    ax1.legend(fontsize=8)
    ax1.set_title("the optimal region grows from the target", fontsize=10)
    ax2.semilogy(lengths, np.maximum(value_error, 1e-8))
    ax2.set_xlabel("episode length")
    ax2.set_ylabel("max_s |v_MC(s) − v*(s)|")
    ax2.set_title("truncation error of the estimated values", fontsize=10)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _mc_basic_summary(world, cfg, sweep, true_values, v_star, summary):
    """Headline figures of the MC Basic sweep over episode lengths 1…L."""
    lengths = list(range(1, cfg.max_episode_length + 1))
    optimal_states = (np.abs(true_values - v_star) < OPTIMAL_ATOL).sum(-1)  # [L]
    positive_states = (np.asarray(sweep.values) > 0).sum(-1)
    value_error = np.abs(np.asarray(sweep.values) - v_star).max(-1)
    S = world.num_states
    # the first length from which every longer episode also gives an optimal policy
    tail_ok = np.flip(np.cumprod(np.flip(optimal_states == S)))
    summary["mc_basic_length_policy_optimal_everywhere"] = (
        int(lengths[int(np.argmax(tail_ok))]) if tail_ok.any() else -1)
    summary["mc_basic_length_all_values_positive"] = (
        int(lengths[int(np.argmax(positive_states == S))]) if (positive_states == S).any()
        else -1)
    summary["mc_basic_optimal_states_by_length"] = {
        str(L): int(optimal_states[L - 1]) for L in cfg.snapshot_lengths if L <= len(lengths)}
    summary["mc_basic_max_abs_diff_from_dp"] = float(value_error[-1])
    summary["mc_basic_policy_stable_at_max_length"] = bool(
        int(sweep.policy_changes[-1, -1]) == 0)
    return lengths, optimal_states, positive_states, value_error


def _memory_caption(cfg, es_true, v_star, world) -> str:
    """What ``memory`` is, and why the plain average stalls when it does."""
    lines = [f"memory: the factor by which past sums and counts of returns are multiplied at "
             f"every policy update (every {cfg.batch} episodes).",
             "memory 1 is the book's plain average of all returns; memory < 1 an "
             "exponentially weighted one that forgets returns of earlier policies."]
    plain = [i for i, m in enumerate(cfg.es_memories) if m == 1.0]
    if not plain:
        return "\n".join(lines)
    true = es_true[plain[0]]
    optimal = int((np.abs(true - v_star) < OPTIMAL_ATOL).sum())
    if optimal == world.num_states:
        return "\n".join(lines)
    forget = [m for m in cfg.es_memories if m < 1.0]
    fix = (f"; forgetting (memory {_fmt(forget[0])}) avoids it" if forget else "")
    if np.abs(true).max() < 0.5:  # never collects the target's reward
        lines += [f"Memory 1 stalls: with r_forbidden = {_fmt(cfg.r_forbidden)}, the returns "
                  "of the first (uniformly random) episodes are strongly negative and stay in the "
                  "averages,",
                  "so moving toward the target looks worse than staying in safe cells; the "
                  "greedy policy then never reaches the target (true v_π ≈ 0), and",
                  "exploring starts add new returns too slowly to outweigh the old ones. A "
                  f"failure mode of the book's plain average at this budget, not a bug{fix}."]
    else:
        lines.append(f"Memory 1 falls short ({optimal}/{world.num_states} states optimal): "
                     f"returns of earlier, worse policies linger in the plain average{fix}.")
    return "\n".join(lines)


def _mc_policies_figure(world, title_values, suptitle, caption=None,
                        value_label="true value v_π(s)"):
    return _grid_panels(world, title_values, suptitle, caption=caption,
                        value_label=value_label)


@register_recipe(
    "gridworld-mc",
    "Monte Carlo control on the book's grid world: MC Basic vs episode length, "
    "Exploring Starts, ε-greedy for several ε, judged by exact policy evaluation",
    claim=("MC Basic's estimates turn positive everywhere from episode length 15; ε-greedy "
           "policies judged by exact evaluation"),
    quick=GridworldMCConfig(),
    full=GridworldMCConfig(episodes=100000, batch=100, eps_seeds=4,
                           basic_iterations=20),
)
def gridworld_mc(ctx: RunContext, cfg: GridworldMCConfig) -> dict:
    t0 = time.perf_counter()
    world = book_5x5(r_forbidden=cfg.r_forbidden)
    P, R = world.model()
    opt = dp.value_iteration(P, R, cfg.gamma, tol=1e-7)
    v_star = np.asarray(opt.values)
    key_basic, key_es, key_eps = jax.random.split(jax.random.key(cfg.seed), 3)
    summary: dict = {"v_star_target": float(v_star[world.target_state])}

    # ---- MC Basic for every episode length 1…L: one vmapped call
    lengths = jnp.arange(1, cfg.max_episode_length + 1)
    sweep = jax.jit(jax.vmap(lambda L: monte_carlo.mc_basic(
        world, L, cfg.gamma, num_iterations=cfg.basic_iterations, key=key_basic,
        max_length=cfg.max_episode_length)))(lengths)

    # ---- MC Exploring Starts (ε = 0) and MC ε-greedy (ε × seeds), both with exploring
    # starts, in one vmapped call over rows (key, ε, memory)
    n_es, n_eps, n_seeds = len(cfg.es_memories), len(cfg.eps_values), cfg.eps_seeds
    row_eps = np.concatenate([np.zeros(n_es), np.repeat(cfg.eps_values, n_seeds)])
    row_memory = np.concatenate([cfg.es_memories, np.full(n_eps * n_seeds, cfg.eps_memory)])
    row_keys = jnp.concatenate([jnp.broadcast_to(key_es, (n_es,)),
                                jax.random.split(key_eps, n_eps * n_seeds)])
    control = jax.jit(jax.vmap(lambda k, e, m: monte_carlo.mc_epsilon_greedy(
        world, k, epsilon=e, gamma=cfg.gamma, num_episodes=cfg.episodes,
        episode_length=cfg.episode_length, episodes_per_update=cfg.batch, memory=m,
        tail_steps=cfg.tail, exploring_starts=True)))(
        row_keys, jnp.asarray(row_eps, P.dtype), jnp.asarray(row_memory, P.dtype))
    es = jax.tree.map(lambda x: x[:n_es], control)
    mc_eps = jax.tree.map(lambda x: x[n_es:], control)
    # DP references: the best ε-greedy policies, and ε-greedy versions of π*
    eps = jnp.asarray(cfg.eps_values, dtype=P.dtype)
    best = jax.vmap(lambda e: dp.epsilon_greedy_policy_iteration(P, R, cfg.gamma, e))(eps)
    best_policy, best_values = np.asarray(best.policy), np.asarray(best.values)
    consistent = ((1.0 - eps[:, None, None]) * opt.policy[None]
                  + eps[:, None, None] / world.num_actions)

    # ---- true values of every policy found, by exact policy evaluation (one call)
    groups = [sweep.policy, control.policy, consistent]
    true_all = np.asarray(dp.evaluate_policies(P, R, jnp.concatenate(groups), cfg.gamma))
    basic_true, control_true, consistent_values = np.split(
        true_all, np.cumsum([len(g) for g in groups])[:-1])
    es_true, eps_true = control_true[:n_es], control_true[n_es:]

    lengths, optimal_states, positive_states, value_error = _mc_basic_summary(
        world, cfg, sweep, basic_true, v_star, summary)
    for i, L in enumerate(lengths):
        ctx.logger.write(L, {"mc_basic/optimal_states": int(optimal_states[i]),
                             "mc_basic/positive_states": int(positive_states[i]),
                             "mc_basic/max_value_error": float(value_error[i])})
    ctx.save_figure(_mc_basic_figure(world, sweep, lengths, cfg.snapshot_lengths),
                    "mc_basic_episode_length")
    ctx.save_figure(_mc_basic_curves(lengths, optimal_states, positive_states, value_error,
                                     world.num_states), "mc_basic_optimal_region")

    panels = []
    for i, m in enumerate(cfg.es_memories):
        gap = np.abs(es_true[i] - v_star)
        summary[f"mc_es_memory{_fmt(m)}_max_value_gap"] = float(gap.max())
        summary[f"mc_es_memory{_fmt(m)}_optimal_states"] = int((gap < OPTIMAL_ATOL).sum())
        kind = "plain average" if m == 1.0 else "forgetting"
        panels.append((f"ES, memory {_fmt(m)} ({kind})\ntrue v_π: "
                       f"{int((gap < OPTIMAL_ATOL).sum())}/{world.num_states} states optimal",
                       es_true[i], es.policy[i]))
    panels.append(("optimal\n(value iteration)", v_star, opt.policy))
    ctx.save_figure(_mc_policies_figure(
        world, panels, f"MC Exploring Starts, {cfg.episodes} episodes, "
        f"r_forbidden = {_fmt(cfg.r_forbidden)}",
        caption=_memory_caption(cfg, es_true, v_star, world)), "mc_exploring_starts")

    eps_true = eps_true.reshape(n_eps, n_seeds, -1)
    estimates = np.asarray(mc_eps.values).reshape(n_eps, n_seeds, -1)
    gaps, est_errors = {}, {}
    for i, e in enumerate(cfg.eps_values):
        gaps[_fmt(e)] = float(np.median(np.abs(eps_true[i] - best_values[i]).max(-1)))
        est_errors[_fmt(e)] = float(np.median(np.abs(estimates[i] - eps_true[i]).max(-1)))
    summary["mc_eps_max_value_gap_to_best_eps_greedy"] = gaps
    summary["mc_eps_max_estimate_error"] = est_errors
    target = world.target_state
    summary["best_eps_greedy_value_target"] = {
        _fmt(e): float(best_values[i, target]) for i, e in enumerate(cfg.eps_values)}
    summary["eps_greedy_of_optimal_value_target"] = {
        _fmt(e): float(consistent_values[i, target]) for i, e in enumerate(cfg.eps_values)}
    mc_policies = np.asarray(mc_eps.policy).reshape(n_eps, n_seeds, *opt.policy.shape)
    A = world.num_actions
    glyphs = (f"Black: the greedy action, probability 1 − ε + ε/{A}; every other action has "
              f"probability ε/{A}, drawn in grey when at least 0.05.")
    ctx.save_figure(_mc_policies_figure(
        world, [(f"MC ε={_fmt(e)}: true v_π", eps_true[i, 0], mc_policies[i, 0])
                for i, e in enumerate(cfg.eps_values)],
        f"MC ε-greedy ({cfg.episodes} episodes, seed 0)",
        caption=f"Exploring starts, memory {_fmt(cfg.eps_memory)}. {glyphs}"),
        "mc_epsilon_greedy")
    ctx.save_figure(_mc_policies_figure(
        world, [(f"best ε-greedy, ε={_fmt(e)}", best_values[i], best_policy[i])
                for i, e in enumerate(cfg.eps_values)],
        "Optimal ε-greedy policies (exact ε-greedy policy iteration)", caption=glyphs),
        "best_epsilon_greedy")
    ctx.save_figure(_mc_policies_figure(
        world, [(f"ε={_fmt(e)}", consistent_values[i], consistent[i])
                for i, e in enumerate(cfg.eps_values)],
        "ε-greedy versions of the optimal greedy policy", caption=glyphs),
        "epsilon_consistent_values")
    summary["seconds"] = time.perf_counter() - t0
    return summary
