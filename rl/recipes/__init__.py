"""Recipes of the rl package; importing this module registers them (one import per
recipe module below)."""

from rl.recipes import gridworld, stochastic_approximation  # noqa: F401
