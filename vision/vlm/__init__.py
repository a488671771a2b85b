"""Vision-language model pieces. ``language_model``: the MoE decoder language model
(Moonlight / DeepSeek-V3 layout on ``common.nn`` blocks, ``common.nn.moe`` layers) with a
KV-cached generator."""

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

__all__ = [
    "CONFIGS",
    "MOONLIGHT_PUBLISHED",
    "KVCache",
    "LMAux",
    "MoELM",
    "MoELMConfig",
    "apply_bias_update",
    "dense_counterpart",
    "forward_cached",
    "generate",
    "init_cache",
    "param_counts",
]
