"""Recipes of the common package; importing this module registers them."""

from common.recipes import digits_mlp  # noqa: F401
