"""Recipes of the vision package; importing this module registers them (one import
per recipe module below)."""

from vision.recipes import detr_shapes, face_openset, moe_lm, pose_rle, vlm_shapes  # noqa: F401
