"""Environments for tabular reinforcement learning."""

from rl.envs.gridworld import (
    ACTION_DELTAS,
    ACTION_NAMES,
    NUM_ACTIONS,
    GridWorld,
    book_2x2,
    book_5x5,
    one_hot_policy,
    plot_gridworld,
)

__all__ = [
    "ACTION_DELTAS",
    "ACTION_NAMES",
    "NUM_ACTIONS",
    "GridWorld",
    "book_2x2",
    "book_5x5",
    "one_hot_policy",
    "plot_gridworld",
]
