"""Recipes of the rl package; importing this module registers them (one import per
recipe module below)."""

import rl.recipes.ddpg  # noqa: F401
from rl.recipes import dpo_frontier as _dpo_frontier  # noqa: F401
from rl.recipes import gridworld, stochastic_approximation  # noqa: F401
