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


def test_benchmarks_run_tiny():
    ctx = BenchContext(scale="quick")
    gen = benchmarks.bench_episode_generator(
        ctx, {"jax_episodes": 64, "numpy_episodes": 4, "length": 10})
    assert gen["jax_episodes_per_second"] > 0 and gen["speedup_vs_numpy"] > 0
    mc = benchmarks.bench_mc_epsilon_greedy(ctx, {"episodes": 20, "length": 10, "batch": 10})
    assert mc["jax_seconds"] > 0 and mc["numpy_seconds"] > 0
    assert mc["speedup_vs_numpy"] == pytest.approx(mc["numpy_seconds"] / mc["jax_seconds"])
