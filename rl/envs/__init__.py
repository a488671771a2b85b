"""Environments behind one protocol (:mod:`rl.envs.protocol`): the book's grid world
(re-exported here) and gymnax continuous-control environments (``rl.envs.gymnax_env``)."""

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
from rl.envs.protocol import (
    Environment,
    FiniteEnvironment,
    StartFromState,
    Step,
    TabularModel,
    check_environment,
)

__all__ = [
    "ACTION_DELTAS",
    "ACTION_NAMES",
    "NUM_ACTIONS",
    "Environment",
    "FiniteEnvironment",
    "GridWorld",
    "StartFromState",
    "Step",
    "TabularModel",
    "book_2x2",
    "book_5x5",
    "check_environment",
    "one_hot_policy",
    "plot_gridworld",
]
