"""Environments: the book's grid world (re-exported here) and gymnax continuous-control
environments behind one interface (`rl.envs.gymnax_env`)."""

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
