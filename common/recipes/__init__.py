"""Recipes of the common package; importing this module registers them."""

from common.recipes import digits_mlp, ensembles_tabular  # noqa: F401
