"""Shared ``flax.nnx`` network blocks: MLPs, attention, transformer layers, RoPE, encodings.

Used by DETR (post-norm encoder/decoder with sine positional encodings), the small
DPO language model (pre-norm causal decoder with RMSNorm, SwiGLU and 1D RoPE) and the
vision-language model (vision encoder with 2D RoPE, MoE decoder).
"""

from common.nn.attention import (
    MultiHeadAttention,
    causal_mask,
    combine_masks,
    dot_product_attention,
    padding_mask,
    segment_mask,
)
from common.nn.mlp import ACTIVATIONS, MLP, GatedMLP, SwiGLU, get_activation
from common.nn.position import sine_position_encoding_2d, sinusoidal_position_encoding
from common.nn.rope import apply_rope, apply_rope_2d, grid_positions, rope_frequencies
from common.nn.transformer import Decoder, DecoderLayer, Encoder, EncoderLayer, make_norm

__all__ = [
    "ACTIVATIONS",
    "MLP",
    "Decoder",
    "DecoderLayer",
    "Encoder",
    "EncoderLayer",
    "GatedMLP",
    "MultiHeadAttention",
    "SwiGLU",
    "apply_rope",
    "apply_rope_2d",
    "causal_mask",
    "combine_masks",
    "dot_product_attention",
    "get_activation",
    "grid_positions",
    "make_norm",
    "padding_mask",
    "rope_frequencies",
    "segment_mask",
    "sine_position_encoding_2d",
    "sinusoidal_position_encoding",
]
