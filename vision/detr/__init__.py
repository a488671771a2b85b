"""DETR (Carion et al. 2020): matching cost, set criterion, model and post-processing.

Example:
    >>> from vision.detr import DETR, DETRConfig, CriterionConfig, set_criterion
    >>> model = DETR(DETRConfig(num_classes=4), rngs=nnx.Rngs(0))
    >>> out = model(images, mask)                      # logits [L, B, Q, 5], boxes [L, B, Q, 4]
    >>> loss, metrics = set_criterion(out["logits"], out["boxes"], labels, boxes, box_mask)
"""

from vision.detr.loss import (
    CriterionConfig,
    check_targets,
    hungarian_match,
    matcher_cost,
    set_criterion,
)
from vision.detr.model import (
    DETR,
    BackboneConfig,
    DETRConfig,
    downsample_mask,
)
from vision.detr.postprocess import postprocess

__all__ = [
    "DETR",
    "BackboneConfig",
    "CriterionConfig",
    "DETRConfig",
    "check_targets",
    "downsample_mask",
    "hungarian_match",
    "matcher_cost",
    "postprocess",
    "set_criterion",
]
