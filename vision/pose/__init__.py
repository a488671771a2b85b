"""Pose estimation: keypoint regression with RLE, heatmap and integral heads, OKS.

* :mod:`vision.pose.flows`: RealNVP on 2-D points and the ``FLOWS`` registry.
* :mod:`vision.pose.rle`: RLE (residual and direct likelihood, Laplace or Gaussian Q),
  L1/L2, heatmap MSE with Gaussian targets, argmax decoding, soft-argmax.
* :mod:`vision.pose.heads`: ``PoseModel`` (ResNet + head) and the ``HEADS`` registry
  (``l1``, ``l2``, ``rle``, ``heatmap``, ``integral``).
* :mod:`vision.pose.oks`: object keypoint similarity equal to pycocotools'.
* :mod:`vision.pose.synthetic`: articulated COCO-17 figures and top-down crops.

Paper: Li et al. 2021, "Human Pose Regression with Residual Log-likelihood Estimation".
"""

from vision.pose.flows import FLOWS, FlowConfig, NormalFlow, RealNVP, make_flow
from vision.pose.heads import (
    HEADS,
    PoseConfig,
    PoseModel,
    pose_loss,
    predict,
    to_normalized,
    to_pixels,
)
from vision.pose.oks import COCO_KEYPOINT_NAMES, COCO_SIGMAS, COCO_SKELETON, oks
from vision.pose.rle import (
    argmax_decode,
    gaussian_heatmaps,
    heatmap_mse,
    l1_loss,
    l2_loss,
    rle_loss,
    soft_argmax,
)
from vision.pose.synthetic import (
    PeopleData,
    crop_to_image,
    image_to_crop,
    render_people,
    top_down_crops,
)

__all__ = [
    "COCO_KEYPOINT_NAMES",
    "COCO_SIGMAS",
    "COCO_SKELETON",
    "FLOWS",
    "HEADS",
    "FlowConfig",
    "NormalFlow",
    "PeopleData",
    "PoseConfig",
    "PoseModel",
    "RealNVP",
    "argmax_decode",
    "crop_to_image",
    "gaussian_heatmaps",
    "heatmap_mse",
    "image_to_crop",
    "l1_loss",
    "l2_loss",
    "make_flow",
    "oks",
    "pose_loss",
    "predict",
    "render_people",
    "rle_loss",
    "soft_argmax",
    "to_normalized",
    "to_pixels",
    "top_down_crops",
]
