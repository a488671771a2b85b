"""The tabular RL recipes and benchmarks at a tiny scale, and the benchmarks' numpy
reference path."""

import json

import numpy as np
import pytest

import rl.recipes  # noqa: F401  (registers the recipes)
from common.bench import BENCHMARKS, BenchContext
from common.recipe import RECIPES, run_recipe
from rl import benchmarks, dp
from rl.envs.gridworld import book_2x2


def _figures(run_dir, names):
    summary = json.loads((run_dir / "summary.json").read_text())
    for name in names:
        assert (run_dir / f"{name}.png").stat().st_size > 1000, name
        assert f"{name}.png" in summary["figures"]
    assert (run_dir / "summary.md").exists()
    return summary


def test_registered():
    for name in ("gridworld-dp", "gridworld-mc", "stochastic-approximation"):
        assert name in RECIPES
    for name in ("gridworld-episodes", "mc-epsilon-greedy", "dpo-train-step"):
        assert name in BENCHMARKS


def test_gridworld_dp_recipe(tmp_path):
    run_dir, summary = run_recipe(
        "gridworld-dp", runs_root=tmp_path, progress=False,
        overrides={"truncation_steps": "1,10", "gammas": "0.9,0.0"})
    _figures(run_dir, ["dp_optimal_values_policies", "dp_convergence", "dp_2x2_examples"])
    assert summary["v_star_target_gamma0.9"] == pytest.approx(10.0, abs=1e-4)
    assert summary["max_abs_diff_from_book_table"] <= 0.05 + 1e-6
    assert summary["vi_pi_same_policy"] and summary["reward_shift_same_policy"]
    assert summary["reward_shift_value_offset"] == pytest.approx(10.0, abs=1e-3)
    assert summary["book_2x2_policy_values_gamma0.9"]["mixed"] == pytest.approx(
        [8.5, 10.0, 10.0, 10.0], abs=1e-4)
    # a harsher forbidden reward makes the optimal policy avoid forbidden cells
    entries = summary["states_moving_into_forbidden"]
    assert entries["rf-1_gamma0.9"] > 0 and entries["rf-10_gamma0.9"] == 0


@pytest.mark.slow  # heavy: runs under pytest -m slow
def test_gridworld_mc_recipe(tmp_path):
    overrides = {"max_episode_length": "16", "basic_iterations": "16",
                 "snapshot_lengths": "1,15", "episodes": "200", "batch": "20",
                 "episode_length": "30", "tail": "10", "eps_values": "0.0,0.5",
                 "eps_seeds": "1"}
    run_dir, summary = run_recipe("gridworld-mc", runs_root=tmp_path, progress=False,
                                  overrides=overrides)
    _figures(run_dir, ["mc_basic_episode_length", "mc_basic_optimal_region",
                       "mc_exploring_starts", "mc_epsilon_greedy", "best_epsilon_greedy",
                       "epsilon_consistent_values"])
    # the target is 15 moves from the farthest cell: L = 15 is the first length at
    # which every state's estimate sees the target's reward
    assert summary["mc_basic_length_all_values_positive"] == 15
    assert 1 <= summary["mc_basic_length_policy_optimal_everywhere"] <= 16
    assert summary["mc_basic_optimal_states_by_length"]["1"] < 25
    assert set(summary["mc_eps_max_value_gap_to_best_eps_greedy"]) == {"0", "0.5"}
    # with ε = 0 the best ε-greedy policy is the optimal one
    assert summary["best_eps_greedy_value_target"]["0"] == pytest.approx(10.0, abs=1e-3)


def test_stochastic_approximation_recipe(tmp_path):
    run_dir, summary = run_recipe(
        "stochastic-approximation", runs_root=tmp_path, progress=False,
        overrides={"rm_steps": "300", "rm_seeds": "2", "gd_steps": "10",
                   "batch_sizes": "1,5"})
    _figures(run_dir, ["robbins_monro", "mean_estimation_sgd"])
    assert summary["rm_tanh_final_w_noise_free"] == pytest.approx(1.0, abs=0.02)
    assert summary["rm_cubic_final_abs_error_max"] < 0.2
    assert summary["incremental_mean_max_diff_from_prefix_mean"] < 1e-5
    assert summary["gd_final_distance_to_sample_mean"]["BGD (all samples)"] < 1e-3


def test_numpy_reference_is_the_same_algorithm():
    """The benchmark's numpy loop: with ε = 1 it estimates q of the uniform policy."""
    world = book_2x2()
    P, R = world.model()
    exact = np.asarray(dp.policy_evaluation(P, R, np.full((4, 5), 0.2), 0.5).action_values)
    policy, q = benchmarks.numpy_mc_epsilon_greedy(
        world, np.random.default_rng(0), epsilon=1.0, gamma=0.5, num_episodes=60,
        episode_length=60, episodes_per_update=20)
    np.testing.assert_allclose(policy, 0.2)
    assert np.abs(q - exact).max() < 0.15
    # with ε = 0.1 it becomes ε-greedy: 1 − 0.1·4/5 on the greedy action
    policy, _ = benchmarks.numpy_mc_epsilon_greedy(
        world, np.random.default_rng(0), epsilon=0.1, gamma=0.5, num_episodes=20,
        episode_length=20, episodes_per_update=10)
    np.testing.assert_allclose(policy.max(-1), 0.92)


def test_vectorised_numpy_references_equal_the_loop_references():
    """Same draws, same summation order: the batch-vectorised numpy references return
    exactly what the per-step loops return (episodes and ε-greedy MC alike)."""
    from rl.envs.gridworld import book_5x5

    world = book_5x5(r_forbidden=-10.0)
    policy = np.random.default_rng(1).dirichlet(np.ones(5), size=25)
    for exploring in (False, True):
        loop = benchmarks.numpy_sample_episodes(world, policy, 30, 12,
                                                np.random.default_rng(2), exploring)
        vec = benchmarks.numpy_sample_episodes_vectorised(world, policy, 30, 12,
                                                          np.random.default_rng(2), exploring)
        for a, b in zip(loop, vec, strict=True):
            np.testing.assert_array_equal(a, b)
    kwargs = dict(epsilon=0.2, gamma=0.9, num_episodes=60, episode_length=15,
                  episodes_per_update=20)
    loop = benchmarks.numpy_mc_epsilon_greedy(world, np.random.default_rng(3), **kwargs)
    vec = benchmarks.numpy_mc_epsilon_greedy_vectorised(world, np.random.default_rng(3),
                                                         **kwargs)
    for a, b in zip(loop, vec, strict=True):
        np.testing.assert_array_equal(a, b)


def test_benchmarks_run_tiny():
    ctx = BenchContext(scale="quick")
    gen = benchmarks.bench_episode_generator(
        ctx, {"jax_episodes": 64, "numpy_episodes": 4, "length": 10})
    assert gen["jax_episodes_per_second"] > 0 and gen["speedup_vs_vectorised_numpy"] > 0
    assert gen["speedup_vs_numpy_loop"] > 0
    mc = benchmarks.bench_mc_epsilon_greedy(ctx, {"episodes": 20, "length": 10, "batch": 10})
    assert mc["jax_seconds"] > 0 and mc["loop_numpy_seconds"] > 0
    assert mc["speedup_vs_numpy_loop"] == pytest.approx(mc["loop_numpy_seconds"]
                                                        / mc["jax_seconds"])


def test_grid_panels_share_one_colour_scale_and_explain_the_glyphs():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rl.envs.gridworld import book_5x5, one_hot_policy
    from rl.recipes.gridworld import _grid_panels

    eps_policy = np.full((25, 5), 0.1)
    eps_policy[:, 1] = 0.6
    fig = _grid_panels(book_5x5(), [("a", np.zeros(25), one_hot_policy(np.zeros(25, int))),
                                    ("b", np.linspace(-3, 7, 25), eps_policy)], "t",
                       caption="one\ntwo")
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 2 and all(im.get_clim() == (-3.0, 7.0) for im in images)
    assert len(fig.axes) == 3  # two panels and one colour bar
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert {"forbidden cell", "target cell"} <= set(labels)
    assert any("other action" in label for label in labels)
    assert any(t.get_text() == "one\ntwo" for t in fig.texts)
    plt.close(fig)


def test_convergence_figure_draws_every_curve_to_its_last_iteration():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rl.recipes.gridworld import _dp_convergence_figure

    curves = {"value iteration": 0.9 ** np.arange(134.0),
              "truncated PI, j=1 (≡ value iteration)": 0.9 ** np.arange(132.0),
              "policy iteration": np.array([3.0, 1.0, 0.0])}
    fig = _dp_convergence_figure(curves, "t", 1e-6)
    ends = sorted(max(line.get_xdata()) for line in fig.axes[0].get_lines()
                  if not line.get_label().startswith("_"))  # the curves, not markers
    assert ends == [2, 131, 133]
    assert any("rounding" in t.get_text() for t in fig.axes[0].texts)
    plt.close(fig)


def test_memory_caption_explains_a_stalled_plain_average():
    from rl.envs.gridworld import book_5x5
    from rl.recipes.gridworld import GridworldMCConfig, _memory_caption

    cfg = GridworldMCConfig()
    world = book_5x5(r_forbidden=cfg.r_forbidden)
    P, R = world.model()
    v_star = np.asarray(dp.value_iteration(P, R, cfg.gamma).values)
    stalled = _memory_caption(cfg, np.stack([np.zeros(25), v_star]), v_star, world)
    assert "memory 1 is the book's plain average" in stalled
    assert "stalls" in stalled and "memory 0.9" in stalled
    fine = _memory_caption(cfg, np.stack([v_star, v_star]), v_star, world)
    assert "stalls" not in fine and "falls short" not in fine
