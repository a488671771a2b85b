"""The MoE decoder language model (the VLM's language half): Moonlight / DeepSeek-V3 layout.

``tokens [B, T] → embed → L decoder layers → RMSNorm → linear head → logits [B, T, V]``;
every layer is pre-norm ``x ← x + Attn(N₁(x))``, ``x ← x + FFN(N₂(x))`` with RMSNorm,
1D RoPE and grouped-query attention. The first ``first_k_dense`` layers have a dense
SwiGLU feed-forward block, the rest a :class:`common.nn.moe.MoE` (routed SwiGLU experts,
shared experts, ``noaux_tc`` or ``softmax_topk`` routing). The layers are
``common.nn``'s :class:`~common.nn.DecoderLayer` stack (no cross-attention); a MoE
layer's feed-forward block is an adapter that records the router's side outputs
(``nnx.Intermediate``) and the model returns them with the logits.

* :class:`MoELMConfig` and ``CONFIGS``: ``moonlight-16b-a3b`` (the published sizes, for
  shape and parameter-count checks), ``tiny-dense``, ``tiny-moe``, ``tiny-dense-wide``
  (trainable on a CPU);
* :class:`MoELM`: ``model(tokens) -> (logits, LMAux)``;
* :func:`init_cache`, :func:`forward_cached`, :func:`generate`: a KV cache and a
  ``lax.scan`` generator that equals recomputing the whole sequence at every step;
* :func:`apply_bias_update`: the aux-loss-free bias update of every MoE layer.

Moonlight's attention is multi-head latent attention (MLA); here every config uses
grouped-query attention with Moonlight's head count and head size instead (see
:data:`MOONLIGHT_PUBLISHED`).

Example:
    >>> lm = MoELM(CONFIGS["tiny-moe"], rngs=nnx.Rngs(0))
    >>> logits, aux = lm(jnp.zeros((2, 16), jnp.int32))
    >>> logits.shape, aux.tokens_per_expert.shape
    ((2, 16, 259), (1, 8))

Papers: DeepSeek-AI 2024, "DeepSeek-V3 Technical Report"; Liu et al. 2025, "Muon is
Scalable for LLM Training" (Moonlight); Kimi Team 2025, "Kimi-VL Technical Report";
Touvron et al. 2023 (LLaMA: pre-norm RMSNorm, SwiGLU, RoPE); Ainslie et al. 2023 (GQA).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from common.checks import check_fields, check_int, shape_of, shape_str
from common.nn import Decoder, TransformerConfig, apply_rope, causal_mask, dot_product_attention
from common.nn.moe import MoE, MoEConfig, update_router_bias

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


@dataclasses.dataclass(frozen=True)
class MoELMConfig:
    """Shape of a MoE decoder language model.

    Attributes:
      vocab_size: ``V``.
      d_model: width ``D``.
      num_layers: decoder layers ``L``.
      num_heads: query heads ``H``.
      num_kv_heads: key/value heads (grouped-query attention).
      head_dim: per-head size (even, for RoPE).
      mlp_dim: hidden size of the dense SwiGLU layers.
      first_k_dense: how many leading layers are dense (the rest are MoE); ``>= L``
        gives a dense model.
      num_experts, top_k, expert_dim, num_shared_experts, router, n_group, topk_group,
        norm_topk_prob, routed_scaling_factor, aux_loss_coef, z_loss_coef,
        seq_aux_loss_coef, bias_update_rate, dispatch, capacity_factor: the MoE layers'
        :class:`common.nn.moe.MoEConfig`.
      rope_base: RoPE base wavelength.
      norm_eps: RMSNorm epsilon.
      max_seq_len: the longest sequence (KV cache size limit).
    """

    vocab_size: int
    d_model: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    mlp_dim: int
    first_k_dense: int = 1
    num_experts: int = 8
    top_k: int = 2
    expert_dim: int = 32
    num_shared_experts: int = 1
    router: str = "noaux_tc"
    n_group: int = 1
    topk_group: int = 1
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.0
    aux_loss_coef: float = 0.0
    z_loss_coef: float = 0.0
    seq_aux_loss_coef: float = 0.0
    bias_update_rate: float = 1e-3
    dispatch: str = "dropless"
    capacity_factor: float = 1.25
    rope_base: float = 10000.0
    norm_eps: float = 1e-6
    max_seq_len: int = 2048
    dtype: Any = None

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        check_fields(self, positive_ints=("vocab_size", "d_model", "num_layers", "num_heads",
                                          "num_kv_heads", "head_dim", "mlp_dim",
                                          "max_seq_len"),
                     nonnegative_ints=("first_k_dense",), positive=("rope_base", "norm_eps"))
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} must be divisible by "
                             f"num_kv_heads={self.num_kv_heads}")
        if self.num_moe_layers:
            self.moe_config()

    @property
    def num_moe_layers(self) -> int:
        return max(0, self.num_layers - self.first_k_dense)

    def transformer_config(self) -> TransformerConfig:
        """The shared decoder's config (pre-norm RMSNorm, SwiGLU, 1D RoPE, GQA)."""
        return TransformerConfig(
            d_model=self.d_model, num_heads=self.num_heads, mlp_dim=self.mlp_dim,
            num_layers=self.num_layers, num_kv_heads=self.num_kv_heads,
            head_dim=self.head_dim, activation="silu", mlp="swiglu", mlp_bias=False,
            norm="rmsnorm", norm_first=True, norm_eps=self.norm_eps, final_norm=True,
            qkv_bias=False, rope="1d", rope_base=self.rope_base, cross_attention=False,
            dtype=self.dtype)

    def moe_config(self) -> MoEConfig:
        """The MoE layers' config."""
        return MoEConfig(
            d_model=self.d_model, num_experts=self.num_experts, top_k=self.top_k,
            expert_dim=self.expert_dim, num_shared_experts=self.num_shared_experts,
            router=self.router, n_group=self.n_group, topk_group=self.topk_group,
            norm_topk_prob=self.norm_topk_prob,
            routed_scaling_factor=self.routed_scaling_factor,
            aux_loss_coef=self.aux_loss_coef, z_loss_coef=self.z_loss_coef,
            seq_aux_loss_coef=self.seq_aux_loss_coef, bias_update_rate=self.bias_update_rate,
            dispatch=self.dispatch, capacity_factor=self.capacity_factor, dtype=self.dtype)

    def replace(self, **changes) -> MoELMConfig:
        return dataclasses.replace(self, **changes)


#: Moonlight-16B-A3B as released (its ``config.json`` on the Hugging Face hub,
#: ``moonshotai/Moonlight-16B-A3B``, DeepseekV3 architecture) and its published size:
#: "16B total parameters, 3B activated" (model name and model card; Liu et al. 2025).
#: Its attention is MLA (``kv_lora_rank=512``, ``qk_nope_head_dim=128``,
#: ``qk_rope_head_dim=64``, ``v_head_dim=128``); ``CONFIGS["moonlight-16b-a3b"]`` keeps
#: every other size and uses 16 grouped-query heads of size 128 instead.
MOONLIGHT_PUBLISHED = {
    "vocab_size": 163840, "hidden_size": 2048, "intermediate_size": 11264,
    "moe_intermediate_size": 1408, "num_hidden_layers": 27, "num_attention_heads": 16,
    "num_key_value_heads": 16, "n_routed_experts": 64, "num_experts_per_tok": 6,
    "n_shared_experts": 2, "first_k_dense_replace": 1, "n_group": 1, "topk_group": 1,
    "routed_scaling_factor": 2.446, "norm_topk_prob": True, "topk_method": "noaux_tc",
    "rope_theta": 50000.0, "max_position_embeddings": 8192, "tie_word_embeddings": False,
    "total_params": 16e9, "active_params": 3e9,
}

CONFIGS: dict[str, MoELMConfig] = {
    "moonlight-16b-a3b": MoELMConfig(
        vocab_size=163840, d_model=2048, num_layers=27, num_heads=16, num_kv_heads=16,
        head_dim=128, mlp_dim=11264, first_k_dense=1, num_experts=64, top_k=6,
        expert_dim=1408, num_shared_experts=2, n_group=1, topk_group=1,
        routed_scaling_factor=2.446, norm_topk_prob=True, rope_base=50000.0,
        max_seq_len=8192),
    # trainable on a CPU; byte vocabulary (common.text.ByteTokenizer)
    "tiny-moe": MoELMConfig(
        vocab_size=259, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
        mlp_dim=128, first_k_dense=1, num_experts=8, top_k=2, expert_dim=32,
        num_shared_experts=1, max_seq_len=256),
    "tiny-dense": MoELMConfig(
        vocab_size=259, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
        mlp_dim=128, first_k_dense=2, max_seq_len=256),
}


def dense_counterpart(config: MoELMConfig, match: str = "active") -> MoELMConfig:
    """The dense model (every layer dense) whose parameter count matches ``config``'s
    ``"active"`` or ``"total"`` count most closely, by choosing ``mlp_dim``.

    A dense layer has ``3·D·F`` feed-forward parameters, so the MoE layers' extra
    (active or total) feed-forward parameters are spread over all ``L`` layers.

    Example:
      >>> dense_counterpart(CONFIGS["tiny-moe"], "total").first_k_dense
      2
    """
    if match not in ("active", "total"):
        raise ValueError(f"match must be 'active' or 'total', got {match!r}")
    m = config.moe_config() if config.num_moe_layers else None
    per_moe = 0 if m is None else (m.active_expert_params if match == "active"
                                    else m.total_params)
    ffn = config.first_k_dense * 3 * config.d_model * config.mlp_dim + (
        config.num_moe_layers * per_moe)
    if config.num_moe_layers == 0:
        ffn = config.num_layers * 3 * config.d_model * config.mlp_dim
    mlp_dim = max(1, round(ffn / (3 * config.d_model * config.num_layers)))
    return config.replace(first_k_dense=config.num_layers, mlp_dim=mlp_dim)


# ----------------------------------------------------------------------------- model


class _MoEFeedForward(nnx.Module):
    """A :class:`MoE` in the place of a decoder layer's feed-forward block: returns the
    output only and keeps the side outputs in an ``nnx.Intermediate`` (``last_aux``),
    which the model reads and removes after each call."""

    def __init__(self, config: MoEConfig, *, rngs: nnx.Rngs):
        self.moe = MoE(config, rngs=rngs)

    def __call__(self, x, *, deterministic: bool = True, rngs=None):
        y, aux = self.moe(x)
        self.last_aux = nnx.Intermediate(aux)
        return y


class LMAux(NamedTuple):
    """Router side outputs of every MoE layer (stacked over the ``L_moe`` MoE layers).

    Attributes:
      aux_loss: scalar, the sum of the layers' weighted auxiliary losses.
      tokens_per_expert: ``[L_moe, E]``.
      dropped: ``[L_moe]`` dropped copies (capacity dispatch).
      indices: ``[L_moe, T, k]`` the experts each token went to.
    """

    aux_loss: jax.Array
    tokens_per_expert: jax.Array
    dropped: jax.Array
    indices: jax.Array


def _collect_aux(auxes, config: MoELMConfig, num_tokens: int) -> LMAux:
    if not auxes:
        k = config.top_k
        return LMAux(jnp.zeros((), jnp.float32), jnp.zeros((0, config.num_experts)),
                     jnp.zeros((0,), jnp.int32), jnp.zeros((0, num_tokens, k), jnp.int32))
    return LMAux(sum(a.aux_loss for a in auxes),
                 jnp.stack([a.tokens_per_expert for a in auxes]),
                 jnp.stack([a.dropped for a in auxes]),
                 jnp.stack([a.indices for a in auxes]))


def _check_tokens(tokens, vocab_size: int) -> None:
    if jnp.ndim(tokens) != 2:
        raise ValueError(f"tokens must have shape [B, T], got shape {shape_str(shape_of(tokens))}")
    if not jnp.issubdtype(jnp.asarray(tokens).dtype, jnp.integer):
        raise ValueError(f"tokens must be integer ids in [0, {vocab_size}), got dtype "
                         f"{jnp.asarray(tokens).dtype}")


class MoELM(nnx.Module):
    """Decoder-only MoE language model: ``logits[b, t]`` predicts token ``t + 1``.

    Args:
      config: a :class:`MoELMConfig`.
      rngs: ``nnx.Rngs``.

    Call:
      ``tokens [B, T]`` int → ``(logits [B, T, V] float32, LMAux)``; or
      ``model(None, embeddings=e)`` with input embeddings ``e [B, T, D]`` (a
      vision-language model's spliced sequence).

    Example:
      >>> lm = MoELM(CONFIGS["tiny-moe"], rngs=nnx.Rngs(0))
      >>> lm(jnp.zeros((1, 8), jnp.int32))[0].shape
      (1, 8, 259)

    Paper: DeepSeek-AI 2024 (first_k_dense dense layers, then DeepSeekMoE layers).
    """

    def __init__(self, config: MoELMConfig, *, rngs: nnx.Rngs):
        if not isinstance(config, MoELMConfig):
            raise ValueError(f"config must be a MoELMConfig, got {type(config).__name__}")
        self.config = config
        self.embed = nnx.Embed(config.vocab_size, config.d_model, rngs=rngs)
        self.decoder = Decoder(config.transformer_config(), rngs=rngs)
        if config.num_moe_layers:
            moe_config = config.moe_config()
            for layer in list(self.decoder.layers)[config.first_k_dense:]:
                layer.ffn = _MoEFeedForward(moe_config, rngs=rngs)
        self.lm_head = nnx.Linear(config.d_model, config.vocab_size, use_bias=False,
                                  rngs=rngs)

    @property
    def moe_layers(self) -> list[MoE]:
        """The :class:`MoE` blocks, in layer order."""
        return [layer.ffn.moe for layer in self.decoder.layers
                if isinstance(layer.ffn, _MoEFeedForward)]

    def __call__(self, tokens: jax.Array | None, *, embeddings: jax.Array | None = None
                 ) -> tuple[jax.Array, LMAux]:
        """``tokens [B, T]``, or ``embeddings [B, T, D]`` that replace the token embedding
        (a vision-language model splices image features into them); ``tokens`` may then
        be ``None``."""
        h = _input_embeddings(self, tokens, embeddings)  # [B, T, D]
        B, T = h.shape[:2]
        h = self.decoder(h, self_mask=causal_mask(T))
        logits = self.lm_head(h).astype(jnp.float32)
        return logits, _pop_aux(self, B * T)


def _input_embeddings(model: MoELM, tokens, embeddings) -> jax.Array:
    """``model.embed(tokens)``, or the given ``embeddings [B, T, D]`` (checked against
    ``tokens [B, T]`` when both are given)."""
    if embeddings is None:
        if tokens is None:
            raise ValueError("tokens [B, T] are required when embeddings are not given")
        _check_tokens(tokens, model.config.vocab_size)
        return model.embed(tokens)
    D = model.config.d_model
    if jnp.ndim(embeddings) != 3 or jnp.shape(embeddings)[-1] != D:
        raise ValueError(f"embeddings must have shape [B, T, {D}], got shape "
                         f"{shape_str(shape_of(embeddings))}")
    if tokens is not None:
        _check_tokens(tokens, model.config.vocab_size)
        if tuple(tokens.shape) != tuple(embeddings.shape[:2]):
            raise ValueError(f"embeddings must have shape [B, T, {D}] with [B, T] = "
                             f"{shape_str(tokens.shape)} (tokens), got shape "
                             f"{shape_str(embeddings.shape)}")
    return embeddings


def _pop_aux(model: MoELM, num_tokens: int) -> LMAux:
    """Read every MoE layer's side outputs in layer order, then drop them."""
    auxes = [layer.ffn.last_aux.get_value() for layer in model.decoder.layers
             if isinstance(layer.ffn, _MoEFeedForward)]
    nnx.pop(model, nnx.Intermediate)
    return _collect_aux(auxes, model.config, num_tokens)


def _abstract_param_count(config: MoELMConfig) -> int:
    model = nnx.eval_shape(lambda: MoELM(config, rngs=nnx.Rngs(0)))
    return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def param_counts(config: MoELMConfig) -> dict[str, int]:
    """Total and per-token active parameters of a model with ``config`` (``nnx.Param``
    only; the router bias is state), counted from abstract models (no memory).

    Layers of one kind have equal shapes, so the model with the dense layers and one
    more layer of the last kind and the model with two more are counted, and the other
    layers are added at the measured per-layer size. Active = total − the ``E − k``
    routed experts a token does not use in each MoE layer (the embedding table and the
    head count as active, as in the published figures).

    Returns:
      ``{"total": int, "active": int}``.

    Example:
      >>> param_counts(CONFIGS["tiny-moe"])["total"] > param_counts(CONFIGS["tiny-dense"])["total"]
      True
    """
    base = config.first_k_dense + 1 if config.num_moe_layers else 1
    if config.num_layers <= base + 1:
        total = _abstract_param_count(config)
    else:
        one = _abstract_param_count(config.replace(num_layers=base))
        two = _abstract_param_count(config.replace(num_layers=base + 1))
        total = one + (config.num_layers - base) * (two - one)
    unused = (config.num_moe_layers * (config.num_experts - config.top_k)
              * 3 * config.d_model * config.expert_dim)
    return {"total": total, "active": total - unused}


def apply_bias_update(model: MoELM, load: jax.Array, rate: float | None = None) -> None:
    """Aux-loss-free balancing step on every MoE layer, in place (outside the gradient).

    ``b^l ← b^l + γ · sign(mean(n^l) − n^l)`` for MoE layer ``l``.

    Args:
      model: a :class:`MoELM`.
      load: ``[L_moe, E]`` tokens per expert of the step (``LMAux.tokens_per_expert``).
      rate: ``γ`` (``None``: the config's ``bias_update_rate``).

    Example:
      >>> logits, aux = lm(tokens)
      >>> apply_bias_update(lm, aux.tokens_per_expert)

    Paper: Wang et al. 2024; DeepSeek-V3 report, section 2.1.2.
    """
    layers = model.moe_layers
    if shape_of(load) != (len(layers), model.config.num_experts):
        raise ValueError(f"load must have shape [L_moe, E] = ({len(layers)}, "
                         f"{model.config.num_experts}), got shape {shape_str(shape_of(load))}")
    rate = model.config.bias_update_rate if rate is None else rate
    for i, layer in enumerate(layers):
        layer.bias[...] = update_router_bias(layer.bias[...], load[i], rate)


# ----------------------------------------------------------------------------- KV cache


class KVCache(NamedTuple):
    """Keys and values of every layer: ``k, v [L, B, S_max, H_kv, Dh]``."""

    k: jax.Array
    v: jax.Array


def init_cache(config: MoELMConfig, batch: int, length: int, dtype=jnp.float32) -> KVCache:
    """An empty cache for ``batch`` sequences of up to ``length`` tokens.

    Example:
      >>> init_cache(CONFIGS["tiny-moe"], 2, 32).k.shape
      (2, 2, 32, 2, 16)
    """
    check_int(batch, "batch")
    check_int(length, "length")
    if length > config.max_seq_len:
        raise ValueError(f"length={length} exceeds the config's max_seq_len="
                         f"{config.max_seq_len}")
    shape = (config.num_layers, batch, length, config.num_kv_heads, config.head_dim)
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def forward_cached(model: MoELM, tokens: jax.Array | None, cache: KVCache, start: jax.Array,
                   *, embeddings: jax.Array | None = None) -> tuple[jax.Array, KVCache]:
    """Run ``T`` new tokens at positions ``start … start+T−1`` against a KV cache.

    Each layer projects the new tokens' keys and values, writes them into the cache at
    ``start`` and attends from the new queries to cache entries ``s <= position``; the
    rest of the layer (norms, RoPE, feed-forward or MoE) is the model's own. Equals the
    matching rows of ``model(full_sequence)``.

    Args:
      model: a :class:`MoELM`.
      tokens: ``[B, T]`` new token ids.
      cache: a :class:`KVCache` holding positions ``< start``.
      start: int32 scalar, the position of ``tokens[:, 0]`` (may be traced), or
        ``[B]`` int32, one start per sequence (sequences of different prompt lengths
        decoded together).
      embeddings: optional ``[B, T, D]`` input embeddings used instead of
        ``model.embed(tokens)`` (``tokens`` may then be ``None``).

    Returns:
      ``(logits [B, T, V] float32, updated cache)``.

    Example:
      >>> logits, cache = forward_cached(lm, prompt, init_cache(cfg, B, 64), 0)
    """
    h = _input_embeddings(model, tokens, embeddings)  # [B, T, D]
    B, T = h.shape[:2]
    if cache.k.shape[1] != B:
        raise ValueError(f"cache must hold batch B={B} (tokens), got {cache.k.shape[1]}")
    S = cache.k.shape[2]
    per_row = jnp.ndim(start) == 1
    if per_row and jnp.shape(start)[0] != B:
        raise ValueError(f"start must be a scalar or have shape [B] = ({B},), got shape "
                         f"{shape_str(shape_of(start))}")
    if per_row:
        positions = start[:, None] + jnp.arange(T)[None, :]  # [B, T]
        mask = (jnp.arange(S)[None, None, :] <= positions[:, :, None])[:, None]  # [B,1,T,S]
        write = jax.vmap(lambda c, x, s: jax.lax.dynamic_update_slice(c, x, (s, 0, 0)))
    else:
        positions = start + jnp.arange(T)  # [T]
        mask = (jnp.arange(S)[None, :] <= positions[:, None])[None, None]  # [1, 1, T, S]
    new_k, new_v = [], []
    for i, layer in enumerate(model.decoder.layers):
        attn = layer.self_attn
        x = layer.norms[0](h)
        q = apply_rope(attn.q_proj(x).reshape(B, T, attn.num_heads, attn.head_dim), positions,
                       base=attn.rope_base)
        k = apply_rope(attn.k_proj(x).reshape(B, T, attn.num_kv_heads, attn.head_dim),
                       positions, base=attn.rope_base)
        v = attn.v_proj(x).reshape(B, T, attn.num_kv_heads, attn.head_dim)
        if per_row:
            k_all = write(cache.k[i], k.astype(cache.k.dtype), start)
            v_all = write(cache.v[i], v.astype(cache.v.dtype), start)
        else:
            k_all = jax.lax.dynamic_update_slice(cache.k[i], k.astype(cache.k.dtype),
                                                 (0, start, 0, 0))
            v_all = jax.lax.dynamic_update_slice(cache.v[i], v.astype(cache.v.dtype),
                                                 (0, start, 0, 0))
        new_k.append(k_all)
        new_v.append(v_all)
        out = dot_product_attention(q, k_all.astype(q.dtype), v_all.astype(q.dtype), mask=mask,
                                    implementation=attn.implementation)
        h = h + attn.out_proj(out.reshape(B, T, attn.num_heads * attn.head_dim))
        h = h + layer.ffn(layer.norms[1](h))
    h = model.decoder.final_norm(h)
    logits = model.lm_head(h).astype(jnp.float32)
    nnx.pop(model, nnx.Intermediate)
    return logits, KVCache(jnp.stack(new_k), jnp.stack(new_v))


def generate(model: MoELM, prompts: jax.Array, length: int, key: jax.Array, *,
             temperature: float = 0.0) -> jax.Array:
    """Generate ``length`` tokens after ``prompts`` with a KV cache, in one ``lax.scan``.

    The prompt fills the cache in one pass; each scan step feeds the last token,
    ``y_t ~ softmax(logits / temperature)`` (greedy ``argmax`` when ``temperature`` is
    0). ``O(L · (P + L))`` attention instead of recomputation's ``O(L · (P + L)²)``.

    Args:
      model: a :class:`MoELM`.
      prompts: ``[B, P]`` token ids, ``P >= 1``.
      length: ``L >= 1`` new tokens.
      key: PRNG key (unused when greedy).
      temperature: ``>= 0``.

    Returns:
      ``[B, P + L]`` int32: prompt then completion.

    Example:
      >>> out = generate(lm, prompts, 16, jax.random.key(0))
    """
    _check_tokens(prompts, model.config.vocab_size)
    check_int(length, "length")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    B, Pn = prompts.shape
    if Pn < 1:
        raise ValueError("prompts must have shape [B, P] with P >= 1")
    cache = init_cache(model.config, B, Pn + length)
    logits, cache = forward_cached(model, prompts.astype(jnp.int32), cache, jnp.int32(0))
    graphdef, state = nnx.split(model)

    def pick(logits_last, k):
        if temperature == 0:
            return jnp.argmax(logits_last, axis=-1).astype(jnp.int32)
        return jax.random.categorical(k, logits_last / temperature).astype(jnp.int32)

    def body(carry, k):
        token, cache, pos = carry
        m = nnx.merge(graphdef, state)
        logits, cache = forward_cached(m, token[:, None], cache, pos)
        nxt = pick(logits[:, -1], k)
        return (nxt, cache, pos + 1), nxt

    keys = jax.random.split(key, length)
    first = pick(logits[:, -1], keys[0])
    if length == 1:
        return jnp.concatenate([prompts.astype(jnp.int32), first[:, None]], axis=1)
    _, rest = jax.lax.scan(body, (first, cache, jnp.int32(Pn)), keys[1:])
    return jnp.concatenate([prompts.astype(jnp.int32), first[:, None], rest.T], axis=1)
