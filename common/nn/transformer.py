"""Transformer encoder/decoder layers and stacks (pre-norm or post-norm).

One layer family serves three users:

* DETR (post-norm, LayerNorm, ReLU MLP, fixed positional encodings added to the
  queries and keys — never the values — of every attention, at every layer);
* a small causal language model (pre-norm, RMSNorm, SwiGLU, 1D RoPE, no
  cross-attention);
* a vision encoder such as MoonViT (pre-norm, 2D RoPE).

Every layer and stack takes one frozen :class:`TransformerConfig`, so an option is
added in one place and reaches every layer.

Sub-layer order, with ``drop`` the residual dropout::

    post-norm:  x = norm(x + drop(sublayer(x)))            (Vaswani et al. 2017)
    pre-norm:   x = x + drop(sublayer(norm(x)))            (Xiong et al. 2020)

Paper: Vaswani et al. 2017, "Attention Is All You Need"; Carion et al. 2020, "End-to-End
Object Detection with Transformers"; Xiong et al. 2020, "On Layer Normalization in the
Transformer Architecture".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from common.checks import check_in_range, check_int, shape_of, shape_str
from common.nn.attention import MultiHeadAttention
from common.nn.mlp import MLP, GatedMLP, get_activation

__all__ = ["Decoder", "DecoderLayer", "Encoder", "EncoderLayer", "TransformerConfig",
           "make_norm"]

NORM_KINDS = ("layernorm", "rmsnorm")
MLP_KINDS = ("mlp", "swiglu")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Everything that shapes a transformer layer or stack, in one frozen object.

    Attributes:
      d_model: model width ``D``.
      num_heads: attention heads ``H``.
      mlp_dim: hidden size of the feed-forward block.
      num_layers: layers of an :class:`Encoder` / :class:`Decoder` (``>= 0``; a single
        layer ignores it).
      num_kv_heads: key/value heads for grouped-query attention (``None``: ``H``).
      head_dim: per-head size (``None``: ``D // H``).
      dropout_rate: residual and feed-forward dropout, in ``[0, 1)``.
      attention_dropout_rate: dropout on attention weights (``None``: ``dropout_rate``,
        as in DETR / PyTorch).
      activation: feed-forward activation (a name of ``common.nn.ACTIVATIONS`` or a
        callable).
      mlp: ``"mlp"`` (two linear layers) or ``"swiglu"`` (gated, see ``GatedMLP``).
      mlp_bias: whether the feed-forward projections have biases.
      norm: ``"layernorm"`` or ``"rmsnorm"``.
      norm_first: pre-norm (``True``) or post-norm (``False``, DETR / original).
      norm_eps: norm stabiliser.
      final_norm: a stack's norm after its last layer (``None``: ``norm_first``; DETR
        uses ``True`` with post-norm).
      qkv_bias: whether the attention projections have biases.
      rope: rotary embedding in self-attention: ``None``, ``"1d"`` or ``"2d"``.
      rope_base: rotary base wavelength.
      implementation: attention backend (see ``dot_product_attention``): ``None``,
        ``"xla"`` or ``"einsum"``.
      cross_attention: decoder layers include cross-attention to a memory (encoder
        layers never do).
      memory_features: feature size of the decoder's memory (``None``: ``d_model``).
      kernel_init: kernel initializer of every projection (``None``: ``nnx.Linear``'s).
      dtype: computation dtype (``None``: from inputs and parameters).
      param_dtype: parameter dtype.

    Example:
      >>> cfg = TransformerConfig(d_model=32, num_heads=4, mlp_dim=64, num_layers=2)
      >>> Encoder(cfg, rngs=nnx.Rngs(0))(jnp.ones((1, 7, 32))).shape
      (1, 7, 32)

    Paper: Vaswani et al. 2017; the single config object follows flax's gemma example.
    """

    d_model: int
    num_heads: int
    mlp_dim: int
    num_layers: int = 1
    num_kv_heads: int | None = None
    head_dim: int | None = None
    dropout_rate: float = 0.0
    attention_dropout_rate: float | None = None
    activation: str | Callable = "relu"
    mlp: str = "mlp"
    mlp_bias: bool = True
    norm: str = "layernorm"
    norm_first: bool = False
    norm_eps: float = 1e-5
    final_norm: bool | None = None
    qkv_bias: bool = True
    rope: str | None = None
    rope_base: float = 10000.0
    implementation: str | None = None
    cross_attention: bool = True
    memory_features: int | None = None
    kernel_init: Callable | None = None
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        for name in ("d_model", "num_heads", "mlp_dim"):
            check_int(getattr(self, name), name)
        check_int(self.num_layers, "num_layers", minimum=0)
        for name in ("num_kv_heads", "head_dim", "memory_features"):
            if getattr(self, name) is not None:
                check_int(getattr(self, name), name)
        kv = self.num_heads if self.num_kv_heads is None else self.num_kv_heads
        if self.num_heads % kv != 0:
            raise ValueError(f"num_heads={self.num_heads} must be divisible by "
                             f"num_kv_heads={kv}")
        check_in_range(self.dropout_rate, "dropout_rate", 0.0, 1.0, high_open=True)
        if self.attention_dropout_rate is not None:
            check_in_range(self.attention_dropout_rate, "attention_dropout_rate", 0.0, 1.0,
                           high_open=True)
        get_activation(self.activation)
        if self.mlp not in MLP_KINDS:
            raise ValueError(f"mlp must be 'mlp' or 'swiglu', got {self.mlp!r}")
        if self.norm not in NORM_KINDS:
            raise ValueError(f"norm must be 'layernorm' or 'rmsnorm', got {self.norm!r}")
        if self.rope not in (None, "1d", "2d"):
            raise ValueError(f"rope must be None, '1d' or '2d', got {self.rope!r}")
        if self.implementation not in (None, "xla", "einsum"):
            raise ValueError(f"implementation must be None, 'xla' or 'einsum', got "
                             f"{self.implementation!r}")


def make_norm(
    kind: str, features: int, *, eps: float = 1e-5, dtype=None, param_dtype=jnp.float32,
    rngs: nnx.Rngs,
) -> nnx.Module:
    """Build a LayerNorm or RMSNorm over the last axis.

    LayerNorm: ``y = (x - μ) / sqrt(σ² + eps) · γ + β``; RMSNorm:
    ``y = x / sqrt(mean(x²) + eps) · γ``.

    Args:
      kind: ``"layernorm"`` (Ba et al. 2016) or ``"rmsnorm"`` (Zhang & Sennrich 2019).
      features: size of the normalised last axis.
      eps: variance stabiliser.
      dtype: computation dtype.
      param_dtype: parameter dtype.
      rngs: ``nnx.Rngs``.

    Returns:
      The norm module, ``[..., features] -> [..., features]``.

    Example:
      >>> make_norm("rmsnorm", 8, rngs=nnx.Rngs(0))(jnp.ones((2, 8))).shape
      (2, 8)
    """
    kwargs = dict(epsilon=eps, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    if kind == "layernorm":
        return nnx.LayerNorm(features, use_fast_variance=False, **kwargs)
    if kind == "rmsnorm":
        return nnx.RMSNorm(features, use_fast_variance=False, **kwargs)
    raise ValueError(f"norm must be 'layernorm' or 'rmsnorm', got {kind!r}")


def _config_norm(config: TransformerConfig, rngs: nnx.Rngs) -> nnx.Module:
    return make_norm(config.norm, config.d_model, eps=config.norm_eps, dtype=config.dtype,
                     param_dtype=config.param_dtype, rngs=rngs)


def _make_ffn(config: TransformerConfig, rngs: nnx.Rngs) -> nnx.Module:
    kwargs = dict(activation=config.activation, dropout_rate=config.dropout_rate,
                  use_bias=config.mlp_bias, kernel_init=config.kernel_init, dtype=config.dtype,
                  param_dtype=config.param_dtype, rngs=rngs)
    if config.mlp == "swiglu":
        return GatedMLP(config.d_model, config.mlp_dim, **kwargs)
    return MLP([config.d_model, config.mlp_dim, config.d_model], **kwargs)


def _check_config(config) -> TransformerConfig:
    if not isinstance(config, TransformerConfig):
        raise ValueError(f"config must be a TransformerConfig, got {type(config).__name__}")
    return config


def _check_x(x, d_model: int, name: str) -> None:
    if jnp.ndim(x) != 3 or x.shape[-1] != d_model:
        raise ValueError(
            f"{name} must have shape [B, T, {d_model}], got shape {shape_str(shape_of(x))}"
        )


def _check_pos(pos, like: jax.Array, name: str, like_name: str) -> None:
    """Positional embeddings must broadcast to ``like`` ``[B, T, D]`` with equal rank."""
    if pos is None:
        return
    B, T, D = like.shape
    ok = jnp.ndim(pos) == 3 and pos.shape[0] in (1, B) and pos.shape[1:] == (T, D)
    if not ok:
        raise ValueError(
            f"{name} must have shape [B, T, D] = ({B}, {T}, {D}) (or batch 1) like "
            f"{like_name}, got shape {shape_str(shape_of(pos))}"
        )


def _add(x: jax.Array, pos: jax.Array | None) -> jax.Array:
    return x if pos is None else x + pos


class _LayerBase(nnx.Module):
    """Shared constructor pieces: self-attention, FFN, norms and residual dropout."""

    def _setup(self, config: TransformerConfig, rngs: nnx.Rngs, num_norms: int) -> None:
        self.config = config
        self.d_model = config.d_model
        self.norm_first = config.norm_first
        self.self_attn = self._attention(config, rngs, rope=config.rope,
                                         rope_base=config.rope_base)
        self.ffn = _make_ffn(config, rngs)
        self.norms = nnx.List([_config_norm(config, rngs) for _ in range(num_norms)])
        self.dropout = nnx.Dropout(config.dropout_rate, rngs=rngs)

    @staticmethod
    def _attention(config: TransformerConfig, rngs: nnx.Rngs, **kwargs) -> MultiHeadAttention:
        attention_dropout = config.attention_dropout_rate
        if attention_dropout is None:
            attention_dropout = config.dropout_rate
        return MultiHeadAttention(
            config.d_model, config.num_heads, num_kv_heads=config.num_kv_heads,
            head_dim=config.head_dim, qkv_bias=config.qkv_bias,
            attention_dropout_rate=attention_dropout, implementation=config.implementation,
            kernel_init=config.kernel_init, dtype=config.dtype,
            param_dtype=config.param_dtype, rngs=rngs, **kwargs,
        )

    def _residual(self, x, i, sublayer, deterministic, rngs):
        """Apply sub-layer ``i`` with its norm in pre- or post-norm order."""
        norm = self.norms[i]
        if self.norm_first:
            return x + self.dropout(sublayer(norm(x)), deterministic=deterministic, rngs=rngs)
        return norm(x + self.dropout(sublayer(x), deterministic=deterministic, rngs=rngs))


class EncoderLayer(_LayerBase):
    """Transformer encoder layer: self-attention then feed-forward, each with a residual.

    Post-norm: ``x ← N₁(x + SA(x + pos, x + pos, x))``, ``x ← N₂(x + FFN(x))``;
    pre-norm: ``h = N₁(x)``, ``x ← x + SA(h + pos, h + pos, h)``, ``x ← x + FFN(N₂(x))``;
    ``SA(q_in, k_in, v_in)`` projects each input separately, so ``pos`` (DETR's
    positional encoding) reaches queries and keys but not values.

    Args:
      config: a :class:`TransformerConfig` (``cross_attention``, ``memory_features``,
        ``num_layers`` and ``final_norm`` do not apply to a single encoder layer).
      rngs: ``nnx.Rngs`` for initialisation and dropout.

    Call:
      ``x [B, T, D]``; ``mask`` broadcastable to ``[B, H, T, T]``; ``pos [B|1, T, D]``
      added to queries and keys; rotary ``positions`` (``[B, T]``/``[T]`` for 1D,
      ``[B, T, 2]``/``[T, 2]`` for 2D); ``deterministic``; ``rngs``. Returns ``[B, T, D]``.

    Example:
      >>> cfg = TransformerConfig(d_model=32, num_heads=4, mlp_dim=64)
      >>> layer = EncoderLayer(cfg, rngs=nnx.Rngs(0))
      >>> layer(jnp.ones((2, 10, 32)), pos=jnp.zeros((1, 10, 32))).shape
      (2, 10, 32)

    Paper: Vaswani et al. 2017, section 3.1; Carion et al. 2020, appendix A.3.
    """

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        self._setup(_check_config(config), rngs, num_norms=2)

    def __call__(
        self,
        x: jax.Array,
        *,
        mask: jax.Array | None = None,
        pos: jax.Array | None = None,
        positions: jax.Array | None = None,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:
        _check_x(x, self.d_model, "x")
        _check_pos(pos, x, "pos", "x")

        def self_attention(h):
            qk = _add(h, pos)
            return self.self_attn(qk, qk, x_v=h, mask=mask, q_positions=positions,
                                  kv_positions=positions, deterministic=deterministic, rngs=rngs)

        def ffn(h):
            return self.ffn(h, deterministic=deterministic, rngs=rngs)

        x = self._residual(x, 0, self_attention, deterministic, rngs)
        return self._residual(x, 1, ffn, deterministic, rngs)


class DecoderLayer(_LayerBase):
    """Transformer decoder layer: self-attention, optional cross-attention, feed-forward.

    Post-norm: ``x ← N₁(x + SA(x + qp, x + qp, x))``,
    ``x ← N₂(x + CA(x + qp, m + pos, m))``, ``x ← N₃(x + FFN(x))``; pre-norm applies
    each ``N_i`` to the sub-layer input instead (``x ← x + SA(h + qp, h + qp, h)``,
    ``h = N₁(x)``, and likewise). ``qp`` = ``query_pos`` (DETR's learned object
    queries), ``pos`` = the memory's positional encoding, ``m`` = encoder memory.
    Without cross-attention this is a GPT/LLaMA decoder block (pass a causal mask).

    Args:
      config: a :class:`TransformerConfig`; ``cross_attention`` includes the
        cross-attention sub-layer, ``memory_features`` is the memory's width.
      rngs: ``nnx.Rngs`` for initialisation and dropout.

    Call:
      ``x [B, T, D]``, ``memory [B, S, D_m]`` (required iff cross-attention);
      ``self_mask`` broadcastable to ``[B, H, T, T]``; ``cross_mask`` to
      ``[B, H, T, S]``; ``query_pos [B|1, T, D]``; ``pos [B|1, S, D_m]``; rotary
      ``positions`` of the self-attention; ``deterministic``; ``rngs``. Returns
      ``[B, T, D]``.

    Example:
      >>> cfg = TransformerConfig(d_model=32, num_heads=4, mlp_dim=64)
      >>> layer = DecoderLayer(cfg, rngs=nnx.Rngs(0))
      >>> layer(jnp.ones((2, 5, 32)), jnp.ones((2, 9, 32))).shape
      (2, 5, 32)

    Paper: Vaswani et al. 2017, section 3.1; Carion et al. 2020, appendix A.3.
    """

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        config = _check_config(config)
        self._setup(config, rngs, num_norms=3 if config.cross_attention else 2)
        self.has_cross_attention = config.cross_attention
        self.memory_features = config.memory_features or config.d_model
        if config.cross_attention:
            self.cross_attn = self._attention(config, rngs, kv_features=self.memory_features)
        else:
            self.cross_attn = nnx.data(None)

    def __call__(
        self,
        x: jax.Array,
        memory: jax.Array | None = None,
        *,
        self_mask: jax.Array | None = None,
        cross_mask: jax.Array | None = None,
        query_pos: jax.Array | None = None,
        pos: jax.Array | None = None,
        positions: jax.Array | None = None,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:
        _check_x(x, self.d_model, "x")
        _check_pos(query_pos, x, "query_pos", "x")
        if self.has_cross_attention:
            if memory is None:
                raise ValueError(
                    f"memory [B, S, {self.memory_features}] is required by a decoder layer "
                    "with cross-attention"
                )
            if (jnp.ndim(memory) != 3 or memory.shape[0] != x.shape[0]
                    or memory.shape[-1] != self.memory_features):
                raise ValueError(
                    f"memory must have shape [B, S, {self.memory_features}] with B = "
                    f"{x.shape[0]}, got shape {shape_str(shape_of(memory))}"
                )
            _check_pos(pos, memory, "pos", "memory")
        elif memory is not None or pos is not None or cross_mask is not None:
            raise ValueError(
                "memory, pos and cross_mask need cross_attention=True; this decoder layer "
                "has no cross-attention"
            )

        def self_attention(h):
            qk = _add(h, query_pos)
            return self.self_attn(qk, qk, x_v=h, mask=self_mask, q_positions=positions,
                                  kv_positions=positions, deterministic=deterministic, rngs=rngs)

        def cross_attention(h):
            return self.cross_attn(_add(h, query_pos), _add(memory, pos), x_v=memory,
                                   mask=cross_mask, deterministic=deterministic, rngs=rngs)

        def ffn(h):
            return self.ffn(h, deterministic=deterministic, rngs=rngs)

        x = self._residual(x, 0, self_attention, deterministic, rngs)
        i = 1
        if self.has_cross_attention:
            x = self._residual(x, 1, cross_attention, deterministic, rngs)
            i = 2
        return self._residual(x, i, ffn, deterministic, rngs)


class _Stack(nnx.Module):
    """``config.num_layers`` layers of ``layer_type`` and an optional final norm."""

    layer_type: type

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        config = _check_config(config)
        self.config = config
        self.layers = nnx.List([self.layer_type(config, rngs=rngs)
                                for _ in range(config.num_layers)])
        final_norm = config.norm_first if config.final_norm is None else config.final_norm
        self.final_norm = _config_norm(config, rngs) if final_norm else nnx.data(None)


class Encoder(_Stack):
    """A stack of ``EncoderLayer`` s with an optional final norm.

    ``x_L = N_f(layer_L(… layer_1(x_0)))``; the final norm ``N_f`` defaults to on for
    pre-norm stacks (whose residual stream is otherwise never normalised), off for
    post-norm.

    Args:
      config: a :class:`TransformerConfig`; ``num_layers`` layers ``L`` (``>= 0``),
        ``final_norm`` (``None``: ``norm_first``), the rest as in ``EncoderLayer``.
      rngs: ``nnx.Rngs``.

    Call:
      ``x [B, T, D]`` and the keywords of ``EncoderLayer.__call__``, given to every
      layer. Returns ``[B, T, D]``.

    Example:
      >>> cfg = TransformerConfig(d_model=32, num_heads=4, mlp_dim=64, num_layers=2,
      ...                         norm_first=True)
      >>> enc = Encoder(cfg, rngs=nnx.Rngs(0))
      >>> enc(jnp.ones((1, 7, 32))).shape
      (1, 7, 32)

    Paper: Vaswani et al. 2017; Carion et al. 2020.
    """

    layer_type = EncoderLayer

    def __call__(self, x: jax.Array, **call_kwargs) -> jax.Array:
        for layer in self.layers:
            x = layer(x, **call_kwargs)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x


class Decoder(_Stack):
    """A stack of ``DecoderLayer`` s with an optional final norm and intermediate outputs.

    ``x_l = layer_l(x_{l-1}, memory)``; output ``N_f(x_L)``, or with
    ``return_intermediate`` the stack ``[N_f(x_1), …, N_f(x_L)]`` that DETR feeds to
    its auxiliary decoding losses.

    Args:
      config: a :class:`TransformerConfig`; ``num_layers`` layers ``L`` (``>= 1`` for
        ``return_intermediate``), ``final_norm`` (``None``: ``norm_first``; DETR uses
        ``True`` with post-norm), the rest as in ``DecoderLayer``.
      rngs: ``nnx.Rngs``.

    Call:
      ``x [B, T, D]``, ``memory [B, S, D_m]`` or ``None``, ``return_intermediate``, and
      the keywords of ``DecoderLayer.__call__``. Returns ``[B, T, D]``, or
      ``[L, B, T, D]`` with ``return_intermediate=True``.

    Example:
      >>> cfg = TransformerConfig(d_model=32, num_heads=4, mlp_dim=64, num_layers=2,
      ...                         final_norm=True)
      >>> dec = Decoder(cfg, rngs=nnx.Rngs(0))
      >>> dec(jnp.zeros((1, 5, 32)), jnp.ones((1, 9, 32)), return_intermediate=True).shape
      (2, 1, 5, 32)

    Paper: Vaswani et al. 2017; Carion et al. 2020, section 3.2 (auxiliary losses).
    """

    layer_type = DecoderLayer

    def __call__(
        self, x: jax.Array, memory: jax.Array | None = None, *,
        return_intermediate: bool = False, **call_kwargs,
    ) -> jax.Array:
        norm = self.final_norm if self.final_norm is not None else (lambda h: h)
        outputs = []
        for layer in self.layers:
            x = layer(x, memory, **call_kwargs)
            if return_intermediate:
                outputs.append(norm(x))
        if return_intermediate:
            if not outputs:
                raise ValueError("return_intermediate needs num_layers >= 1")
            return jnp.stack(outputs)
        return norm(x)
