"""Vision-language model pieces (Kimi-VL layout).

* ``moonvit``: MoonViT, the native-resolution encoder (patch embedding, bicubic position
  table interpolation, 2-D RoPE, packing with segment ids / padded-batch mode);
* ``projector``: 2×2 pixel-shuffle patch merger and the LayerNorm + MLP projector;
* ``language_model``: the MoE decoder language model (Moonlight / DeepSeek-V3 layout on
  ``common.nn`` blocks, ``common.nn.moe`` layers) with a KV-cached generator;
* ``model``: the VLM (placeholder expansion, feature splicing, answer-only loss masks,
  KV-cached answer generation) and the SigLIP towers of the encoder stage;
* ``losses``: SigLIP's sigmoid loss, masked next-token (caption / answer) loss;
* ``synthetic``: shape scenes at native sizes with captions and templated questions.
"""

from vision.vlm.language_model import (
    CONFIGS,
    MOONLIGHT_PUBLISHED,
    KVCache,
    LMAux,
    MoELM,
    MoELMConfig,
    apply_bias_update,
    dense_counterpart,
    forward_cached,
    generate,
    init_cache,
    param_counts,
)
from vision.vlm.losses import caption_loss, siglip_loss
from vision.vlm.model import (
    VLM,
    VLMBatch,
    VLMConfig,
    answer_mask,
    expand_placeholders,
    generate_answers,
    image_features,
    make_batch,
    splice_image_features,
)
from vision.vlm.moonvit import (
    MoonViT,
    MoonViTConfig,
    PackedImages,
    PackInfo,
    first_fit,
    interpolate_pos_embed,
    pack_images,
    patchify,
    pos_embed_at,
)
from vision.vlm.projector import (
    Projector,
    ProjectorConfig,
    merge_gather_index,
    merge_patches,
    merged_grid,
)

__all__ = [
    "CONFIGS",
    "MOONLIGHT_PUBLISHED",
    "VLM",
    "KVCache",
    "LMAux",
    "MoELM",
    "MoELMConfig",
    "MoonViT",
    "MoonViTConfig",
    "PackInfo",
    "PackedImages",
    "Projector",
    "ProjectorConfig",
    "VLMBatch",
    "VLMConfig",
    "answer_mask",
    "apply_bias_update",
    "caption_loss",
    "dense_counterpart",
    "expand_placeholders",
    "first_fit",
    "forward_cached",
    "generate",
    "generate_answers",
    "image_features",
    "init_cache",
    "interpolate_pos_embed",
    "make_batch",
    "merge_gather_index",
    "merge_patches",
    "merged_grid",
    "pack_images",
    "param_counts",
    "patchify",
    "pos_embed_at",
    "siglip_loss",
    "splice_image_features",
]
