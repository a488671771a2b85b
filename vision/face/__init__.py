"""Face recognition: detection with five landmarks, alignment onto the ArcFace template,
margin heads (softmax, NormFace, SphereFace, CosFace, ArcFace, combined) and metric
losses, Partial FC over many identities, verification and identification.

Modules: ``align`` (Umeyama similarity, ``norm_crop``), ``margins`` (the ``MARGINS``
registry), ``metric_losses`` (contrastive, triplet mining, center loss), ``partial_fc``
(sampled, model-parallel class centres), ``verify`` (LFW 10-fold protocol, ROC,
TAR@FAR, rank-1, DIR@FAR, flip fusion), ``synthetic`` (rendered identities and scenes)
and ``detect`` (a CenterNet-style face detector with landmarks).
"""

from vision.face.align import (
    ARCFACE_TEMPLATE,
    estimate_norm,
    landmarks_ok,
    norm_crop,
    umeyama,
    warp_affine,
)
from vision.face.margins import (
    MARGINS,
    margin_logits,
    margin_loss,
    register_margin,
    sphereface_lambda,
)
from vision.face.metric_losses import (
    TRIPLET_MINING,
    center_loss,
    center_update,
    contrastive_loss,
    triplet_loss,
)
from vision.face.partial_fc import make_sharded_partial_fc_loss, partial_fc_loss, sample_centers
from vision.face.verify import (
    dir_at_far,
    fuse_flip,
    identify,
    rank1_accuracy,
    roc_curve,
    tar_at_far,
    verify_kfold,
)

__all__ = [
    "ARCFACE_TEMPLATE",
    "MARGINS",
    "TRIPLET_MINING",
    "center_loss",
    "center_update",
    "contrastive_loss",
    "dir_at_far",
    "estimate_norm",
    "fuse_flip",
    "identify",
    "landmarks_ok",
    "make_sharded_partial_fc_loss",
    "margin_logits",
    "margin_loss",
    "norm_crop",
    "partial_fc_loss",
    "rank1_accuracy",
    "register_margin",
    "roc_curve",
    "sample_centers",
    "sphereface_lambda",
    "tar_at_far",
    "triplet_loss",
    "umeyama",
    "verify_kfold",
    "warp_affine",
]
