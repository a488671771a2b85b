"""Shared ``flax.nnx`` network blocks.

* ``mlp``: :class:`MLP`, :class:`GatedMLP` / :class:`SwiGLU`, named activations;
* ``attention``: :func:`dot_product_attention` (grouped-query heads, masks, bias),
  mask builders, :class:`MultiHeadAttention` (optional 1D / 2D rotary embeddings);
* ``transformer``: :class:`TransformerConfig`, :class:`EncoderLayer`,
  :class:`DecoderLayer`, :class:`Encoder`, :class:`Decoder` (pre- or post-norm);
* ``rope`` and ``position``: rotary embeddings, sinusoidal and DETR's 2D sine encodings;
* ``conv``: :func:`conv2d` / :class:`Conv2D` (NHWC, ``"SAME"`` padding, a CPU path whose
  gradients stay fast inside ``lax.scan``);
* ``resnet``: :class:`ResNetConfig`, :class:`ResNet` (basic blocks, a feature pyramid,
  batch / group / frozen batch norm);
* ``moe``: routers (``ROUTERS``: ``softmax_topk``, DeepSeek-V3's ``noaux_tc``),
  dropless / capacity / expert-parallel dispatch, :class:`MoE` (SwiGLU experts, shared
  experts, aux-loss-free bias balancing).

Users: DETR (ResNet backbone; post-norm encoder/decoder with sine positional
encodings), the score U-Net (``Conv2D``, attention) and the small DPO language model
(pre-norm causal decoder with RMSNorm, SwiGLU and 1D RoPE); the MoE language model of
``vision.vlm`` (that decoder with ``MoE`` feed-forward layers).
"""

from common.nn.attention import (
    MultiHeadAttention,
    causal_mask,
    combine_masks,
    dot_product_attention,
    padding_mask,
    segment_mask,
)
from common.nn.conv import Conv2D, conv2d
from common.nn.mlp import ACTIVATIONS, MLP, GatedMLP, SwiGLU, get_activation
from common.nn.moe import (
    ROUTERS,
    MoE,
    MoEConfig,
    capacity_dispatch,
    dropless_dispatch,
    expert_parallel_dispatch,
    grouped_matmul,
    noaux_tc_route,
    update_router_bias,
)
from common.nn.position import sine_position_encoding_2d, sinusoidal_position_encoding
from common.nn.resnet import (
    NORMS,
    BasicBlock,
    FrozenBatchNorm,
    FrozenStat,
    ResNet,
    ResNetConfig,
    apply_conv_norm,
    group_count,
    make_conv_norm,
)
from common.nn.rope import apply_rope, apply_rope_2d, grid_positions, rope_frequencies
from common.nn.transformer import (
    Decoder,
    DecoderLayer,
    Encoder,
    EncoderLayer,
    TransformerConfig,
    make_norm,
)

__all__ = [
    "ACTIVATIONS",
    "MLP",
    "NORMS",
    "ROUTERS",
    "BasicBlock",
    "Conv2D",
    "Decoder",
    "DecoderLayer",
    "Encoder",
    "EncoderLayer",
    "FrozenBatchNorm",
    "FrozenStat",
    "GatedMLP",
    "MoE",
    "MoEConfig",
    "MultiHeadAttention",
    "ResNet",
    "ResNetConfig",
    "SwiGLU",
    "TransformerConfig",
    "apply_conv_norm",
    "apply_rope",
    "apply_rope_2d",
    "capacity_dispatch",
    "causal_mask",
    "combine_masks",
    "conv2d",
    "dot_product_attention",
    "dropless_dispatch",
    "expert_parallel_dispatch",
    "get_activation",
    "grid_positions",
    "group_count",
    "grouped_matmul",
    "make_conv_norm",
    "make_norm",
    "noaux_tc_route",
    "padding_mask",
    "rope_frequencies",
    "segment_mask",
    "sine_position_encoding_2d",
    "sinusoidal_position_encoding",
    "update_router_bias",
]
