"""Scaled dot-product attention, boolean mask builders and multi-head attention.

Layout conventions used throughout:

* queries ``q`` are ``[B, T, H, D]`` (batch, query length, query heads, head dim);
* keys and values ``k, v`` are ``[B, S, H_kv, D]`` with ``H % H_kv == 0``
  (grouped-query attention: query head ``h`` reads key/value head ``h // (H // H_kv)``);
* masks are boolean, ``True`` = attend, rank 4 and broadcastable to ``[B, H, T, S]``;
* additive biases are rank 4 and broadcastable to ``[B, H, T, S]``.

A query row whose mask is all ``False`` attends to nothing; its output is exactly
zero (a plain softmax over large negative logits would instead average the values,
and ``-inf`` logits would give NaN).

Reference: Vaswani et al. 2017, "Attention Is All You Need"; grouped-query
attention: Ainslie et al. 2023, "GQA: Training Generalized Multi-Query Transformer
Models from Multi-Head Checkpoints".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from common.checks import check_rank, shape_of, shape_str
from common.nn.rope import apply_rope, apply_rope_2d

__all__ = [
    "MultiHeadAttention",
    "causal_mask",
    "combine_masks",
    "dot_product_attention",
    "padding_mask",
    "segment_mask",
]

Implementation = Literal["xla", "einsum"] | None


# ----------------------------------------------------------------------------- checks


def _check_broadcastable(x, name: str, target: tuple[int, ...], spec: str) -> None:
    """Each dimension of ``x`` must be 1 or equal to the target dimension."""
    check_rank(x, name, len(target), spec)
    for have, want in zip(jnp.shape(x), target, strict=True):
        if have not in (1, want):
            raise ValueError(
                f"{name} must be broadcastable to {spec} = {shape_str(target)}, "
                f"got shape {shape_str(shape_of(x))}"
            )


def _check_bool(x, name: str) -> None:
    dtype = jnp.asarray(x).dtype
    if dtype != jnp.bool_:
        raise ValueError(f"{name} must be a boolean array (True = attend), got dtype {dtype}")


# ----------------------------------------------------------------------------- masks


def padding_mask(kv_valid: jax.Array) -> jax.Array:
    """Key padding mask: query rows may attend only to valid key positions.

    ``mask[b, 0, 0, s] = kv_valid[b, s]``.

    Args:
      kv_valid: ``[B, S]`` boolean, ``True`` for real (non-padded) key positions.

    Returns:
      ``[B, 1, 1, S]`` boolean mask, ``True`` = attend.

    Example:
      >>> padding_mask(jnp.array([[True, True, False]])).shape
      (1, 1, 1, 3)
    """
    check_rank(kv_valid, "kv_valid", 2, "[B, S]")
    _check_bool(kv_valid, "kv_valid")
    return kv_valid[:, None, None, :]


def causal_mask(T: int, S: int | None = None, *, offset: int = 0) -> jax.Array:
    """Causal (autoregressive) mask: query ``i`` attends to keys ``j <= i + offset``.

    With ``S = T`` and ``offset = 0`` this is the lower-triangular mask of a decoder
    (Vaswani et al. 2017, section 3.2.3). Use ``offset = S - T`` when the queries are
    the last ``T`` of ``S`` positions.

    Args:
      T: number of queries.
      S: number of keys; defaults to ``T``.
      offset: position of query 0 relative to key 0.

    Returns:
      ``[1, 1, T, S]`` boolean mask, ``True`` = attend.

    Example:
      >>> causal_mask(3)[0, 0].astype(int).tolist()
      [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    """
    S = T if S is None else S
    if T < 0 or S < 0:
        raise ValueError(f"causal_mask needs T >= 0 and S >= 0, got T={T}, S={S}")
    rows = jnp.arange(T)[:, None]
    cols = jnp.arange(S)[None, :]
    return (cols <= rows + offset)[None, None]


def segment_mask(q_segment_ids: jax.Array, kv_segment_ids: jax.Array | None = None) -> jax.Array:
    """Block-diagonal mask for packed sequences: attend only within the same segment.

    ``mask[b, 0, t, s] = (q_segment_ids[b, t] == kv_segment_ids[b, s])``. Padding is
    not special-cased: give padding its own id and combine with :func:`padding_mask`
    if padded queries must not attend at all.

    Args:
      q_segment_ids: ``[B, T]`` integer segment id of each query.
      kv_segment_ids: ``[B, S]`` integer segment id of each key; defaults to
        ``q_segment_ids`` (self-attention).

    Returns:
      ``[B, 1, T, S]`` boolean mask, ``True`` = attend.

    Example:
      >>> ids = jnp.array([[0, 0, 1]])
      >>> segment_mask(ids)[0, 0].astype(int).tolist()
      [[1, 1, 0], [1, 1, 0], [0, 0, 1]]
    """
    check_rank(q_segment_ids, "q_segment_ids", 2, "[B, T]")
    if kv_segment_ids is None:
        kv_segment_ids = q_segment_ids
    check_rank(kv_segment_ids, "kv_segment_ids", 2, "[B, S]")
    if kv_segment_ids.shape[0] != q_segment_ids.shape[0]:
        raise ValueError(
            "kv_segment_ids must have shape [B, S] with the same B as q_segment_ids, got "
            f"{shape_str(kv_segment_ids.shape)} and {shape_str(q_segment_ids.shape)}"
        )
    return q_segment_ids[:, None, :, None] == kv_segment_ids[:, None, None, :]


def combine_masks(*masks: jax.Array | None) -> jax.Array | None:
    """Logical AND of boolean masks, broadcasting; ``None`` entries are skipped.

    Args:
      *masks: rank-4 boolean masks (``True`` = attend) or ``None``.

    Returns:
      The broadcast AND of the given masks, or ``None`` when every entry is ``None``.

    Example:
      >>> m = combine_masks(causal_mask(3), padding_mask(jnp.array([[True, True, False]])))
      >>> m.shape
      (1, 1, 3, 3)
    """
    present = [m for m in masks if m is not None]
    if not present:
        return None
    for i, m in enumerate(present):
        check_rank(m, f"masks[{i}]", 4, "[B, H, T, S] (rank 4, broadcastable)")
        _check_bool(m, f"masks[{i}]")
    try:
        jnp.broadcast_shapes(*(m.shape for m in present))
    except ValueError:
        shapes = ", ".join(shape_str(m.shape) for m in present)
        raise ValueError(f"masks must broadcast together, got shapes {shapes}") from None
    out = present[0]
    for m in present[1:]:
        out = jnp.logical_and(out, m)
    return out


# ----------------------------------------------------------------------------- attention


def _group_heads(t: jax.Array, num_kv_heads: int, group: int) -> jax.Array:
    """``[B', Hm, T', S']`` with ``Hm in {1, H}`` -> ``[B', K or 1, G or 1, T', S']``."""
    b, hm, tt, ss = t.shape
    if hm == 1:
        return t[:, :, None]
    return t.reshape(b, num_kv_heads, group, tt, ss)


def _einsum_attention(q, k, v, mask, bias, scale, dropout_rate, dropout_key):
    """Explicit softmax attention; supports dropout and keeps float64 end to end."""
    B, T, H, D = q.shape
    K = k.shape[2]
    G = H // K
    logits_dtype = jnp.promote_types(q.dtype, jnp.float32)
    qg = q.reshape(B, T, K, G, D)
    logits = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=logits_dtype)
    logits = logits * jnp.asarray(scale, logits_dtype)  # [B, K, G, T, S]
    if bias is not None:
        logits = logits + _group_heads(bias, K, G).astype(logits_dtype)
    if mask is not None:
        big_negative = jnp.finfo(logits_dtype).min
        logits = jnp.where(_group_heads(mask, K, G), logits, big_negative)
    probs = jax.nn.softmax(logits, axis=-1)
    if dropout_rate > 0.0:
        keep = jax.random.bernoulli(dropout_key, 1.0 - dropout_rate, probs.shape)
        probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
    probs = probs.astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)  # [B, T, K, G, D]
    return out.reshape(B, T, H, D)


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None = None,
    bias: jax.Array | None = None,
    scale: float | None = None,
    dropout_rate: float = 0.0,
    dropout_key: jax.Array | None = None,
    implementation: Implementation = None,
) -> jax.Array:
    """Scaled dot-product attention with grouped-query heads, masks and bias.

    ``out[b, t, h] = Σ_s softmax_s(scale · q[b,t,h]·k[b,s,h//G] + bias[b,h,t,s]
    | mask[b,h,t,s]) · v[b,s,h//G]`` with ``G = H / H_kv`` and ``scale = D^{-1/2}`` by
    default; masked entries get zero weight and fully masked query rows output 0.

    Backends: ``"xla"`` calls ``jax.nn.dot_product_attention(implementation="xla")``;
    ``"einsum"`` is an explicit softmax. ``None`` picks ``"xla"`` unless attention
    dropout is active or the inputs are float64, where the einsum path is used:
    ``jax.nn.dot_product_attention`` has no dropout on the attention weights, and it
    always computes the softmax in float32, which would throw away float64 accuracy.

    Args:
      q: ``[B, T, H, D]`` queries.
      k: ``[B, S, H_kv, D]`` keys, ``H % H_kv == 0``.
      v: ``[B, S, H_kv, D]`` values.
      mask: optional boolean ``[B|1, H|1, T|1, S]`` mask, ``True`` = attend.
      bias: optional additive bias on the logits, broadcastable to ``[B, H, T, S]``.
      scale: logit scale; defaults to ``1 / sqrt(D)``.
      dropout_rate: dropout probability on the attention weights (after softmax).
      dropout_key: PRNG key, required when ``dropout_rate > 0``.
      implementation: ``"xla"``, ``"einsum"`` or ``None`` (automatic, see above).

    Returns:
      ``[B, T, H, D]`` attended values, same dtype as ``v``.

    Example:
      >>> q = jnp.ones((2, 5, 4, 8)); kv = jnp.ones((2, 7, 2, 8))
      >>> dot_product_attention(q, kv, kv, mask=causal_mask(5, 7)).shape
      (2, 5, 4, 8)

    Paper: Vaswani et al. 2017, "Attention Is All You Need", eq. (1); GQA: Ainslie
    et al. 2023.
    """
    check_rank(q, "q", 4, "[B, T, H, D]")
    check_rank(k, "k", 4, "[B, S, H_kv, D]")
    check_rank(v, "v", 4, "[B, S, H_kv, D]")
    B, T, H, D = q.shape
    _, S, K, _ = k.shape
    if k.shape[0] != B or k.shape[3] != D:
        raise ValueError(
            f"k must have shape [B, S, H_kv, D] = ({B}, S, H_kv, {D}) to match q, "
            f"got {shape_str(k.shape)}"
        )
    if v.shape != k.shape:
        raise ValueError(
            f"v must have shape [B, S, H_kv, D] = {shape_str(k.shape)} like k, "
            f"got {shape_str(v.shape)}"
        )
    if K == 0 or H % K != 0:
        raise ValueError(
            f"the number of query heads H={H} (q) must be divisible by the number of "
            f"key/value heads H_kv={K} (k, v)"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(
            f"q, k and v must share one dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}"
        )
    if mask is not None:
        _check_bool(mask, "mask")
        _check_broadcastable(mask, "mask", (B, H, T, S), "[B, H, T, S]")
    if bias is not None:
        _check_broadcastable(bias, "bias", (B, H, T, S), "[B, H, T, S]")
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate}")
    if dropout_rate > 0.0 and dropout_key is None:
        raise ValueError("dropout_key is required when dropout_rate > 0")
    if implementation not in (None, "xla", "einsum"):
        raise ValueError(
            f"implementation must be 'xla', 'einsum' or None, got {implementation!r}"
        )
    if implementation is None:
        wide = jnp.dtype(q.dtype).itemsize > 4
        implementation = "einsum" if (dropout_rate > 0.0 or wide) else "xla"
    if implementation == "xla" and dropout_rate > 0.0:
        raise ValueError(
            "implementation='xla' (jax.nn.dot_product_attention) has no attention "
            "dropout; use implementation='einsum' or None with dropout_rate > 0"
        )
    scale = 1.0 / math.sqrt(D) if scale is None else scale

    # Give the mask and bias a full batch/query/key extent and a head extent of 1 or
    # H, the layouts both backends accept.
    if mask is not None:
        mask = jnp.broadcast_to(mask, (B, mask.shape[1], T, S))
    if bias is not None:
        bias = jnp.broadcast_to(bias, (B, bias.shape[1], T, S))

    if implementation == "xla":
        out = jax.nn.dot_product_attention(
            q, k, v, bias=bias, mask=mask, scale=scale, implementation="xla"
        )
    else:
        out = _einsum_attention(q, k, v, mask, bias, scale, dropout_rate, dropout_key)

    if mask is not None:
        # Rows that attend to nothing output zero instead of the mean of the values.
        any_valid = jnp.any(mask, axis=-1)  # [B, H|1, T]
        any_valid = jnp.broadcast_to(any_valid, (B, H, T)).transpose(0, 2, 1)  # [B, T, H]
        out = jnp.where(any_valid[..., None], out, jnp.zeros((), out.dtype))
    return out


# ----------------------------------------------------------------------------- module


def _positions_for(
    positions: jax.Array | None, length: int, rope: str, name: str
) -> jax.Array | None:
    """Validate rotary position ids; default 1D positions are ``arange(length)``."""
    if rope == "1d":
        if positions is None:
            return jnp.arange(length)
        if jnp.ndim(positions) not in (1, 2) or jnp.shape(positions)[-1] != length:
            raise ValueError(
                f"{name} must have shape [B, {length}] or [{length}] for 1D rope, "
                f"got shape {shape_str(shape_of(positions))}"
            )
        return positions
    if positions is None:
        raise ValueError(
            f"{name} (row, col) ids of shape [B, {length}, 2] are required for 2D rope"
        )
    if jnp.ndim(positions) not in (2, 3) or jnp.shape(positions)[-2:] != (length, 2):
        raise ValueError(
            f"{name} must have shape [B, {length}, 2] or [{length}, 2] (row, col) for 2D rope, "
            f"got shape {shape_str(shape_of(positions))}"
        )
    return positions


class MultiHeadAttention(nnx.Module):
    """Multi-head (optionally grouped-query) attention with optional rotary embeddings.

    ``MHA(x_q, x_kv) = concat_h(softmax(Q_h K_{g(h)}ᵀ / √D) V_{g(h)}) W_o`` with
    ``Q = x_q W_q``, ``K = x_kv W_k``, ``V = x_v W_v`` (``x_v = x_kv`` unless given),
    ``g(h) = h // (H / H_kv)``, and rotary embeddings applied to ``Q`` and ``K`` when
    ``rope`` is set.

    Args:
      in_features: feature size ``D_in`` of ``x_q``.
      num_heads: number of query heads ``H``.
      num_kv_heads: number of key/value heads ``H_kv`` (``H % H_kv == 0``); defaults to
        ``H`` (plain multi-head attention); 1 is multi-query attention.
      head_dim: per-head size ``D``; defaults to ``in_features // num_heads``.
      kv_features: feature size of ``x_kv``/``x_v``; defaults to ``in_features``.
      out_features: output size; defaults to ``in_features``.
      qkv_bias: whether the q/k/v projections have a bias.
      out_bias: whether the output projection has a bias.
      rope: ``None``, ``"1d"`` (positions ``[B, T]`` or ``[T]``) or ``"2d"`` (positions
        ``[B, T, 2]`` or ``[T, 2]`` holding (row, col) of image patches).
      rope_base: rotary base frequency.
      attention_dropout_rate: dropout on the attention weights when not deterministic.
      implementation: attention backend, see :func:`dot_product_attention`.
      kernel_init: initializer of the projection kernels.
      dtype: computation dtype (``None``: from inputs and params).
      param_dtype: parameter dtype.
      rngs: ``nnx.Rngs`` for initialisation and attention dropout (stream ``dropout``).

    Call:
      ``x_q [B, T, D_in]``, ``x_kv [B, S, D_kv]`` (``None``: self-attention),
      ``x_v [B, S, D_kv]`` (``None``: ``x_kv``), ``mask`` broadcastable to
      ``[B, H, T, S]``, rotary ``q_positions``/``kv_positions`` (``kv_positions``
      defaults to ``q_positions`` in self-attention), ``deterministic``, and an
      optional ``rngs`` overriding the stored dropout stream. Returns ``[B, T, D_out]``.

    Example:
      >>> mha = MultiHeadAttention(32, 4, num_kv_heads=2, rope="1d", rngs=nnx.Rngs(0))
      >>> x = jnp.ones((2, 6, 32))
      >>> mha(x, mask=causal_mask(6)).shape
      (2, 6, 32)

    Paper: Vaswani et al. 2017; GQA: Ainslie et al. 2023; RoPE: Su et al. 2021.
    """

    def __init__(
        self,
        in_features: int,
        num_heads: int,
        *,
        num_kv_heads: int | None = None,
        head_dim: int | None = None,
        kv_features: int | None = None,
        out_features: int | None = None,
        qkv_bias: bool = True,
        out_bias: bool = True,
        rope: Literal["1d", "2d"] | None = None,
        rope_base: float = 10000.0,
        attention_dropout_rate: float = 0.0,
        implementation: Implementation = None,
        kernel_init: Callable | None = None,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_heads <= 0 or num_kv_heads <= 0:
            raise ValueError(
                f"num_heads and num_kv_heads must be positive, got {num_heads}, {num_kv_heads}"
            )
        if num_heads % num_kv_heads != 0:
            raise ValueError(
                f"num_heads={num_heads} must be divisible by num_kv_heads={num_kv_heads}"
            )
        if head_dim is None:
            if in_features % num_heads != 0:
                raise ValueError(
                    f"in_features={in_features} must be divisible by num_heads={num_heads} "
                    "when head_dim is not given"
                )
            head_dim = in_features // num_heads
        if rope not in (None, "1d", "2d"):
            raise ValueError(f"rope must be None, '1d' or '2d', got {rope!r}")
        if rope == "1d" and head_dim % 2 != 0:
            raise ValueError(f"head_dim must be even for 1D rope, got {head_dim}")
        if rope == "2d" and head_dim % 4 != 0:
            raise ValueError(f"head_dim must be divisible by 4 for 2D rope, got {head_dim}")
        if not 0.0 <= attention_dropout_rate < 1.0:
            raise ValueError(
                f"attention_dropout_rate must be in [0, 1), got {attention_dropout_rate}"
            )
        kv_features = in_features if kv_features is None else kv_features
        out_features = in_features if out_features is None else out_features

        self.in_features = in_features
        self.kv_features = kv_features
        self.out_features = out_features
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.rope = rope
        self.rope_base = rope_base
        self.attention_dropout_rate = attention_dropout_rate
        self.implementation = implementation

        linear_kwargs = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        if kernel_init is not None:
            linear_kwargs["kernel_init"] = kernel_init
        self.q_proj = nnx.Linear(in_features, num_heads * head_dim, use_bias=qkv_bias,
                                 **linear_kwargs)
        self.k_proj = nnx.Linear(kv_features, num_kv_heads * head_dim, use_bias=qkv_bias,
                                 **linear_kwargs)
        self.v_proj = nnx.Linear(kv_features, num_kv_heads * head_dim, use_bias=qkv_bias,
                                 **linear_kwargs)
        self.out_proj = nnx.Linear(num_heads * head_dim, out_features, use_bias=out_bias,
                                   **linear_kwargs)
        if attention_dropout_rate > 0.0:
            self.dropout_rngs = rngs["dropout"].fork()
        else:
            self.dropout_rngs = nnx.data(None)

    def __call__(
        self,
        x_q: jax.Array,
        x_kv: jax.Array | None = None,
        *,
        x_v: jax.Array | None = None,
        mask: jax.Array | None = None,
        q_positions: jax.Array | None = None,
        kv_positions: jax.Array | None = None,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:
        self_attention = x_kv is None
        x_kv = x_q if x_kv is None else x_kv
        x_v = x_kv if x_v is None else x_v
        check_rank(x_q, "x_q", 3, f"[B, T, {self.in_features}]")
        if x_q.shape[-1] != self.in_features:
            raise ValueError(
                f"x_q must have shape [B, T, {self.in_features}], got {shape_str(x_q.shape)}"
            )
        B, T, _ = x_q.shape
        spec = f"[{B}, S, {self.kv_features}]"
        for name, x in (("x_kv", x_kv), ("x_v", x_v)):
            check_rank(x, name, 3, spec)
            if x.shape[0] != B or x.shape[-1] != self.kv_features:
                raise ValueError(f"{name} must have shape {spec}, got {shape_str(x.shape)}")
        if x_v.shape != x_kv.shape:
            raise ValueError(
                f"x_v must have the shape of x_kv {shape_str(x_kv.shape)}, "
                f"got {shape_str(x_v.shape)}"
            )
        S = x_kv.shape[1]

        q = self.q_proj(x_q).reshape(B, T, self.num_heads, self.head_dim)
        k = self.k_proj(x_kv).reshape(B, S, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x_v).reshape(B, S, self.num_kv_heads, self.head_dim)

        if self.rope is not None:
            if self_attention and kv_positions is None:
                kv_positions = q_positions
            q_positions = _positions_for(q_positions, T, self.rope, "q_positions")
            kv_positions = _positions_for(kv_positions, S, self.rope, "kv_positions")
            if self.rope == "1d":
                q = apply_rope(q, q_positions, base=self.rope_base)
                k = apply_rope(k, kv_positions, base=self.rope_base)
            else:
                q = apply_rope_2d(q, q_positions[..., 0], q_positions[..., 1],
                                  base=self.rope_base)
                k = apply_rope_2d(k, kv_positions[..., 0], kv_positions[..., 1],
                                  base=self.rope_base)

        dropout_rate, dropout_key = 0.0, None
        if not deterministic and self.attention_dropout_rate > 0.0:
            dropout_rate = self.attention_dropout_rate
            dropout_key = rngs["dropout"]() if rngs is not None else self.dropout_rngs()

        out = dot_product_attention(
            q, k, v, mask=mask, dropout_rate=dropout_rate, dropout_key=dropout_key,
            implementation=self.implementation,
        )  # [B, T, H, D]
        return self.out_proj(out.reshape(B, T, self.num_heads * self.head_dim))
