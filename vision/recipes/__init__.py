"""Recipes of the vision package; importing this module registers them (one import
per recipe module below)."""

from vision.recipes import detr_shapes, moe_lm  # noqa: F401
