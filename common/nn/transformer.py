"""Transformer encoder/decoder layers and stacks (pre-norm or post-norm).

One layer family serves three users:

* DETR (post-norm, LayerNorm, ReLU MLP, fixed positional encodings added to the
  queries and keys — never the values — of every attention, at every layer);
* a small causal language model (pre-norm, RMSNorm, SwiGLU, 1D RoPE, no
  cross-attention);
* a vision encoder such as MoonViT (pre-norm, 2D RoPE).

Sub-layer order, with ``drop`` the residual dropout::

    post-norm:  x = norm(x + drop(sublayer(x)))            (Vaswani et al. 2017)
    pre-norm:   x = x + drop(sublayer(norm(x)))            (Xiong et al. 2020)

Paper: Vaswani et al. 2017, "Attention Is All You Need"; Carion et al. 2020, "End-to-End
Object Detection with Transformers"; Xiong et al. 2020, "On Layer Normalization in the
Transformer Architecture".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import nnx

from common.nn.attention import Implementation, MultiHeadAttention
from common.nn.mlp import MLP, GatedMLP

__all__ = ["Decoder", "DecoderLayer", "Encoder", "EncoderLayer", "make_norm"]

NormKind = Literal["layernorm", "rmsnorm"]
MlpKind = Literal["mlp", "swiglu"]


def _shape_str(shape) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def make_norm(
    kind: NormKind, features: int, *, eps: float = 1e-5, dtype=None, param_dtype=jnp.float32,
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


def _make_ffn(mlp: MlpKind, d_model, mlp_dim, activation, dropout_rate, use_bias, kwargs):
    if mlp == "mlp":
        return MLP([d_model, mlp_dim, d_model], activation=activation, dropout_rate=dropout_rate,
                   use_bias=use_bias, **kwargs)
    if mlp == "swiglu":
        return GatedMLP(d_model, mlp_dim, activation=activation, dropout_rate=dropout_rate,
                        use_bias=use_bias, **kwargs)
    raise ValueError(f"mlp must be 'mlp' or 'swiglu', got {mlp!r}")


def _check_x(x, d_model: int, name: str) -> None:
    if jnp.ndim(x) != 3 or x.shape[-1] != d_model:
        raise ValueError(
            f"{name} must have shape [B, T, {d_model}], got shape {_shape_str(jnp.shape(x))}"
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
            f"{like_name}, got shape {_shape_str(jnp.shape(pos))}"
        )


def _add(x: jax.Array, pos: jax.Array | None) -> jax.Array:
    return x if pos is None else x + pos


class _LayerBase(nnx.Module):
    """Shared constructor pieces: attention kwargs, FFN, norms and residual dropout."""

    def _setup(
        self, *, d_model, num_heads, mlp_dim, num_kv_heads, head_dim, dropout_rate,
        attention_dropout_rate, activation, mlp, mlp_bias, norm, norm_first, norm_eps,
        qkv_bias, rope, rope_base, implementation, kernel_init, dtype, param_dtype, rngs,
        num_norms,
    ) -> dict[str, Any]:
        if d_model <= 0 or mlp_dim <= 0:
            raise ValueError(f"d_model and mlp_dim must be positive, got {d_model}, {mlp_dim}")
        if not 0.0 <= dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate}")
        self.d_model = d_model
        self.norm_first = norm_first
        if attention_dropout_rate is None:
            attention_dropout_rate = dropout_rate
        attn_kwargs = dict(
            num_kv_heads=num_kv_heads, head_dim=head_dim, qkv_bias=qkv_bias,
            attention_dropout_rate=attention_dropout_rate, implementation=implementation,
            kernel_init=kernel_init, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
        )
        self.self_attn = MultiHeadAttention(d_model, num_heads, rope=rope, rope_base=rope_base,
                                            **attn_kwargs)
        ffn_kwargs = dict(kernel_init=kernel_init, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.ffn = _make_ffn(mlp, d_model, mlp_dim, activation, dropout_rate, mlp_bias, ffn_kwargs)
        self.norms = nnx.List([
            make_norm(norm, d_model, eps=norm_eps, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
            for _ in range(num_norms)
        ])
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
        return attn_kwargs

    def _residual(self, x, i, sublayer, deterministic, rngs):
        """Apply sub-layer ``i`` with its norm in pre- or post-norm order."""
        norm = self.norms[i]
        if self.norm_first:
            return x + self.dropout(sublayer(norm(x)), deterministic=deterministic, rngs=rngs)
        return norm(x + self.dropout(sublayer(x), deterministic=deterministic, rngs=rngs))


_LAYER_ARGS_DOC = """
      d_model: model width ``D``.
      num_heads: attention heads ``H``.
      mlp_dim: hidden size of the feed-forward block.
      num_kv_heads: key/value heads for grouped-query attention (default ``H``).
      head_dim: per-head size (default ``D // H``).
      dropout_rate: residual and feed-forward dropout.
      attention_dropout_rate: dropout on attention weights (default ``dropout_rate``,
        as in DETR / PyTorch).
      activation: feed-forward activation (name or callable).
      mlp: ``"mlp"`` (two linear layers) or ``"swiglu"`` (gated, see ``GatedMLP``).
      mlp_bias: whether the feed-forward projections have biases.
      norm: ``"layernorm"`` or ``"rmsnorm"``.
      norm_first: pre-norm (``True``) or post-norm (``False``, DETR / original).
      norm_eps: norm stabiliser.
      qkv_bias: whether the attention projections have biases.
      rope: rotary embedding in self-attention: ``None``, ``"1d"`` or ``"2d"``.
      rope_base: rotary base wavelength.
      implementation: attention backend (see ``dot_product_attention``).
      kernel_init: kernel initializer of every projection.
      dtype: computation dtype.
      param_dtype: parameter dtype.
      rngs: ``nnx.Rngs`` for initialisation and dropout."""


class EncoderLayer(_LayerBase):
    """Transformer encoder layer: self-attention then feed-forward, each with a residual.

    Post-norm: ``x ← N₁(x + SA(x + pos, x + pos, x))``, ``x ← N₂(x + FFN(x))``;
    pre-norm: ``h = N₁(x)``, ``x ← x + SA(h + pos, h + pos, h)``, ``x ← x + FFN(N₂(x))``;
    ``SA(q_in, k_in, v_in)`` projects each input separately, so ``pos`` (DETR's
    positional encoding) reaches queries and keys but not values.

    Args:""" + _LAYER_ARGS_DOC + """

    Call:
      ``x [B, T, D]``; ``mask`` broadcastable to ``[B, H, T, T]``; ``pos [B|1, T, D]``
      added to queries and keys; rotary ``positions`` (``[B, T]``/``[T]`` for 1D,
      ``[B, T, 2]``/``[T, 2]`` for 2D); ``deterministic``; ``rngs``. Returns ``[B, T, D]``.

    Example:
      >>> layer = EncoderLayer(32, 4, 64, rngs=nnx.Rngs(0))
      >>> layer(jnp.ones((2, 10, 32)), pos=jnp.zeros((1, 10, 32))).shape
      (2, 10, 32)

    Paper: Vaswani et al. 2017, section 3.1; Carion et al. 2020, appendix A.3.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        mlp_dim: int,
        *,
        num_kv_heads: int | None = None,
        head_dim: int | None = None,
        dropout_rate: float = 0.0,
        attention_dropout_rate: float | None = None,
        activation: str | Callable = "relu",
        mlp: MlpKind = "mlp",
        mlp_bias: bool = True,
        norm: NormKind = "layernorm",
        norm_first: bool = False,
        norm_eps: float = 1e-5,
        qkv_bias: bool = True,
        rope: Literal["1d", "2d"] | None = None,
        rope_base: float = 10000.0,
        implementation: Implementation = None,
        kernel_init: Callable | None = None,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self._setup(
            d_model=d_model, num_heads=num_heads, mlp_dim=mlp_dim, num_kv_heads=num_kv_heads,
            head_dim=head_dim, dropout_rate=dropout_rate,
            attention_dropout_rate=attention_dropout_rate, activation=activation, mlp=mlp,
            mlp_bias=mlp_bias, norm=norm, norm_first=norm_first, norm_eps=norm_eps,
            qkv_bias=qkv_bias, rope=rope, rope_base=rope_base, implementation=implementation,
            kernel_init=kernel_init, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
            num_norms=2,
        )

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

    Args:""" + _LAYER_ARGS_DOC + """
      cross_attention: include the cross-attention sub-layer.
      memory_features: feature size of the memory (default ``d_model``).

    Call:
      ``x [B, T, D]``, ``memory [B, S, D_m]`` (required iff cross-attention);
      ``self_mask`` broadcastable to ``[B, H, T, T]``; ``cross_mask`` to
      ``[B, H, T, S]``; ``query_pos [B|1, T, D]``; ``pos [B|1, S, D_m]``; rotary
      ``positions`` of the self-attention; ``deterministic``; ``rngs``. Returns
      ``[B, T, D]``.

    Example:
      >>> layer = DecoderLayer(32, 4, 64, rngs=nnx.Rngs(0))
      >>> layer(jnp.ones((2, 5, 32)), jnp.ones((2, 9, 32))).shape
      (2, 5, 32)

    Paper: Vaswani et al. 2017, section 3.1; Carion et al. 2020, appendix A.3.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        mlp_dim: int,
        *,
        cross_attention: bool = True,
        memory_features: int | None = None,
        num_kv_heads: int | None = None,
        head_dim: int | None = None,
        dropout_rate: float = 0.0,
        attention_dropout_rate: float | None = None,
        activation: str | Callable = "relu",
        mlp: MlpKind = "mlp",
        mlp_bias: bool = True,
        norm: NormKind = "layernorm",
        norm_first: bool = False,
        norm_eps: float = 1e-5,
        qkv_bias: bool = True,
        rope: Literal["1d", "2d"] | None = None,
        rope_base: float = 10000.0,
        implementation: Implementation = None,
        kernel_init: Callable | None = None,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        attn_kwargs = self._setup(
            d_model=d_model, num_heads=num_heads, mlp_dim=mlp_dim, num_kv_heads=num_kv_heads,
            head_dim=head_dim, dropout_rate=dropout_rate,
            attention_dropout_rate=attention_dropout_rate, activation=activation, mlp=mlp,
            mlp_bias=mlp_bias, norm=norm, norm_first=norm_first, norm_eps=norm_eps,
            qkv_bias=qkv_bias, rope=rope, rope_base=rope_base, implementation=implementation,
            kernel_init=kernel_init, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
            num_norms=3 if cross_attention else 2,
        )
        self.has_cross_attention = cross_attention
        self.memory_features = d_model if memory_features is None else memory_features
        if cross_attention:
            self.cross_attn = MultiHeadAttention(
                d_model, num_heads, kv_features=self.memory_features, **attn_kwargs
            )
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
                    f"{x.shape[0]}, got shape {_shape_str(jnp.shape(memory))}"
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


def _final_norm(final_norm, norm_first, layer_kwargs, d_model, rngs):
    if final_norm is None:
        final_norm = norm_first
    if not final_norm:
        return nnx.data(None)
    return make_norm(
        layer_kwargs.get("norm", "layernorm"), d_model, eps=layer_kwargs.get("norm_eps", 1e-5),
        dtype=layer_kwargs.get("dtype"), param_dtype=layer_kwargs.get("param_dtype", jnp.float32),
        rngs=rngs,
    )


class Encoder(nnx.Module):
    """A stack of ``EncoderLayer`` s with an optional final norm.

    ``x_L = N_f(layer_L(… layer_1(x_0)))``; the final norm ``N_f`` defaults to on for
    pre-norm stacks (whose residual stream is otherwise never normalised), off for
    post-norm.

    Args:
      num_layers: number of layers ``L`` (``>= 0``).
      d_model: model width ``D``.
      num_heads: attention heads.
      mlp_dim: feed-forward hidden size.
      final_norm: add a norm after the last layer (``None``: ``norm_first``).
      rngs: ``nnx.Rngs``.
      **layer_kwargs: forwarded to every ``EncoderLayer`` (``norm_first``, ``norm``,
        ``dropout_rate``, ``rope``, ...).

    Call:
      ``x [B, T, D]`` and the keywords of ``EncoderLayer.__call__``, given to every
      layer. Returns ``[B, T, D]``.

    Example:
      >>> enc = Encoder(2, 32, 4, 64, norm_first=True, rngs=nnx.Rngs(0))
      >>> enc(jnp.ones((1, 7, 32))).shape
      (1, 7, 32)

    Paper: Vaswani et al. 2017; Carion et al. 2020.
    """

    def __init__(
        self, num_layers: int, d_model: int, num_heads: int, mlp_dim: int, *,
        final_norm: bool | None = None, rngs: nnx.Rngs, **layer_kwargs,
    ):
        if num_layers < 0:
            raise ValueError(f"num_layers must be >= 0, got {num_layers}")
        self.layers = nnx.List([
            EncoderLayer(d_model, num_heads, mlp_dim, rngs=rngs, **layer_kwargs)
            for _ in range(num_layers)
        ])
        self.final_norm = _final_norm(final_norm, layer_kwargs.get("norm_first", False),
                                      layer_kwargs, d_model, rngs)

    def __call__(self, x: jax.Array, **call_kwargs) -> jax.Array:
        for layer in self.layers:
            x = layer(x, **call_kwargs)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x


class Decoder(nnx.Module):
    """A stack of ``DecoderLayer`` s with an optional final norm and intermediate outputs.

    ``x_l = layer_l(x_{l-1}, memory)``; output ``N_f(x_L)``, or with
    ``return_intermediate`` the stack ``[N_f(x_1), …, N_f(x_L)]`` that DETR feeds to
    its auxiliary decoding losses.

    Args:
      num_layers: number of layers ``L`` (``>= 1`` for ``return_intermediate``).
      d_model: model width ``D``.
      num_heads: attention heads.
      mlp_dim: feed-forward hidden size.
      final_norm: add a norm after the last layer (``None``: ``norm_first``; DETR uses
        ``True`` with post-norm).
      rngs: ``nnx.Rngs``.
      **layer_kwargs: forwarded to every ``DecoderLayer``.

    Call:
      ``x [B, T, D]``, ``memory [B, S, D_m]`` or ``None``, ``return_intermediate``, and
      the keywords of ``DecoderLayer.__call__``. Returns ``[B, T, D]``, or
      ``[L, B, T, D]`` with ``return_intermediate=True``.

    Example:
      >>> dec = Decoder(2, 32, 4, 64, final_norm=True, rngs=nnx.Rngs(0))
      >>> dec(jnp.zeros((1, 5, 32)), jnp.ones((1, 9, 32)), return_intermediate=True).shape
      (2, 1, 5, 32)

    Paper: Vaswani et al. 2017; Carion et al. 2020, section 3.2 (auxiliary losses).
    """

    def __init__(
        self, num_layers: int, d_model: int, num_heads: int, mlp_dim: int, *,
        final_norm: bool | None = None, rngs: nnx.Rngs, **layer_kwargs,
    ):
        if num_layers < 0:
            raise ValueError(f"num_layers must be >= 0, got {num_layers}")
        self.layers = nnx.List([
            DecoderLayer(d_model, num_heads, mlp_dim, rngs=rngs, **layer_kwargs)
            for _ in range(num_layers)
        ])
        self.final_norm = _final_norm(final_norm, layer_kwargs.get("norm_first", False),
                                      layer_kwargs, d_model, rngs)

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
