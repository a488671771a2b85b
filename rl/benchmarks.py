"""Benchmarks of the rl package; importing this module registers them."""

from common.bench import benchmark
from rl.recipes import gridworld as _gridworld

benchmark("gridworld-episodes", "grid-world episodes/s: jitted vmapped generator vs a numpy "
          "loop")(_gridworld.bench_episode_generator)
benchmark("mc-epsilon-greedy", "MC ε-greedy wall time for a fixed number of episodes: JAX vs "
          "a numpy loop")(_gridworld.bench_mc_epsilon_greedy)
