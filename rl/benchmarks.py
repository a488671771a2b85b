"""Benchmarks of the rl package; importing this module registers them."""

from common.bench import benchmark
from rl.recipes import ddpg as _ddpg
from rl.recipes import dpo_frontier as _dpo_frontier
from rl.recipes import gridworld as _gridworld

benchmark("gridworld-episodes", "grid-world episodes/s: jitted vmapped generator vs a numpy "
          "loop")(_gridworld.bench_episode_generator)
benchmark("mc-epsilon-greedy", "MC ε-greedy wall time for a fixed number of episodes: JAX vs "
          "a numpy loop")(_gridworld.bench_mc_epsilon_greedy)
benchmark("ddpg-throughput", "DDPG env steps/s (updates included) on device for 1 and 8 "
          "vmapped seeds and rollout only, vs a Python loop")(_ddpg.bench_ddpg_throughput)

benchmark("dpo-train-step", "DPO train-step tokens/s and fraction of the matmul ceiling, with "
          "reference log-probs cached vs recomputed every step")(_dpo_frontier.bench_dpo_step)
