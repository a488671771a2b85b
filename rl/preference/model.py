"""A small causal transformer LM and a reward model on the same backbone, and sampling.

Both are built from ``common.nn``: token embedding → ``Decoder`` (pre-norm RMSNorm,
SwiGLU feed-forward, 1D RoPE, causal self-attention, no cross-attention) → a head.

* :class:`CausalLM`: ``tokens [B, T] -> logits [B, T, V]`` (tied to nothing; a bias-free
  linear head).
* :class:`RewardModel`: ``tokens [B, T], lengths [B] -> rewards [B]``, a scalar head on
  the hidden state of each sequence's last real token (as a sequence-classification
  reward model); initialise its backbone from the SFT model with
  :func:`init_reward_from_lm`.
* :func:`sample_completions`: ancestral sampling with ``lax.scan``. There is no KV
  cache: every step recomputes the whole (fixed-size) sequence and reads the logits at
  the last filled position, ``O(L · T²)`` attention for ``L`` new tokens — fine for the
  toy sequences here (``T <= 16``), wasteful for long ones.

Example:
    >>> cfg = LMConfig(vocab_size=19)
    >>> lm = CausalLM(cfg, rngs=nnx.Rngs(0))
    >>> lm(jnp.zeros((2, 12), jnp.int32)).shape
    (2, 12, 19)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from common.checks import is_concrete
from common.nn import Decoder, TransformerConfig, causal_mask

__all__ = [
    "CausalLM",
    "LMConfig",
    "RewardModel",
    "Samples",
    "init_reward_from_lm",
    "lm_flops_per_token",
    "sample_completions",
]


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """Shape of the language model (and of the reward model's backbone).

    Attributes:
      vocab_size: ``V``.
      d_model: width ``D``.
      num_layers: decoder layers.
      num_heads: attention heads (``D`` divisible by it; head size even for RoPE).
      mlp_dim: SwiGLU hidden size.
      dropout_rate: residual/feed-forward dropout (0 for the toy task).
      dtype: computation dtype of the layers (``None``: float32 like the parameters;
        ``jnp.bfloat16`` under ``common.precision``'s ``bf16``); logits, rewards and
        values come out in float32 for the losses.
    """

    vocab_size: int = 32
    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 4
    mlp_dim: int = 128
    dropout_rate: float = 0.0
    dtype: Any = None


class Backbone(nnx.Module):
    """Embedding + causal pre-norm decoder: ``tokens [B, T] -> hidden [B, T, D]``."""

    def __init__(self, cfg: LMConfig, *, rngs: nnx.Rngs):
        if cfg.vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {cfg.vocab_size}")
        self.vocab_size = cfg.vocab_size
        self.embed = nnx.Embed(cfg.vocab_size, cfg.d_model, rngs=rngs)
        self.decoder = Decoder(TransformerConfig(
            d_model=cfg.d_model, num_heads=cfg.num_heads, mlp_dim=cfg.mlp_dim,
            num_layers=cfg.num_layers, cross_attention=False, norm="rmsnorm", norm_first=True,
            mlp="swiglu", activation="silu", mlp_bias=False, qkv_bias=False, rope="1d",
            dropout_rate=cfg.dropout_rate, final_norm=True, dtype=cfg.dtype), rngs=rngs)

    def __call__(self, tokens: jax.Array, *, deterministic: bool = True,
                 rngs: nnx.Rngs | None = None) -> jax.Array:
        if jnp.ndim(tokens) != 2:
            raise ValueError(f"tokens must have shape [B, T], got shape "
                             f"{tuple(jnp.shape(tokens))}")
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"tokens must be integer ids, got dtype {tokens.dtype}")
        T = tokens.shape[1]
        h = self.embed(tokens)  # [B, T, D]
        return self.decoder(h, self_mask=causal_mask(T), deterministic=deterministic,
                            rngs=rngs)


class CausalLM(nnx.Module):
    """Decoder-only LM: ``logits[b, t]`` predicts token ``t + 1`` from tokens ``<= t``.

    Args:
      cfg: :class:`LMConfig`.
      rngs: ``nnx.Rngs`` for initialisation.

    Call:
      ``tokens [B, T]`` int → ``logits [B, T, V]`` float32.

    Paper: Vaswani et al. 2017; Radford et al. 2019 (GPT-2, decoder-only LM); Touvron
    et al. 2023 (LLaMA: pre-norm RMSNorm, SwiGLU, RoPE).
    """

    def __init__(self, cfg: LMConfig, *, rngs: nnx.Rngs):
        self.backbone = Backbone(cfg, rngs=rngs)
        self.lm_head = nnx.Linear(cfg.d_model, cfg.vocab_size, use_bias=False, rngs=rngs)

    def __call__(self, tokens: jax.Array, *, deterministic: bool = True,
                 rngs: nnx.Rngs | None = None) -> jax.Array:
        logits = self.lm_head(self.backbone(tokens, deterministic=deterministic, rngs=rngs))
        return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))


class RewardModel(nnx.Module):
    """Scalar reward of a sequence: a linear head on the last real token's hidden state.

    ``r(x, y) = w · h_{n−1} + b`` with ``h`` the backbone states of ``(x, y)`` and ``n``
    its length (right padding after it is ignored by causality).

    Call:
      ``tokens [B, T]``, ``lengths [B]`` (tokens before padding, >= 1) → ``[B]``.

    Paper: Ouyang et al. 2022 (InstructGPT), section 3.5; Ziegler et al. 2019.
    """

    def __init__(self, cfg: LMConfig, *, rngs: nnx.Rngs):
        self.backbone = Backbone(cfg, rngs=rngs)
        self.value_head = nnx.Linear(cfg.d_model, 1, kernel_init=nnx.initializers.zeros,
                                     rngs=rngs)

    def __call__(self, tokens: jax.Array, lengths: jax.Array, *,
                 deterministic: bool = True, rngs: nnx.Rngs | None = None) -> jax.Array:
        h = self.backbone(tokens, deterministic=deterministic, rngs=rngs)  # [B, T, D]
        if jnp.shape(lengths) != (tokens.shape[0],):
            raise ValueError(f"lengths must have shape [B] = ({tokens.shape[0]},), got shape "
                             f"{tuple(jnp.shape(lengths))}")
        last = jnp.clip(jnp.asarray(lengths) - 1, 0, tokens.shape[1] - 1)
        pooled = jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]  # [B, D]
        reward = self.value_head(pooled)[:, 0]
        return reward.astype(jnp.promote_types(reward.dtype, jnp.float32))


def init_reward_from_lm(reward_model: RewardModel, lm: CausalLM) -> RewardModel:
    """Copy the LM's backbone into the reward model in place (RLHF's usual start).

    The arrays are copied, so donating the reward model's buffers in a training step
    leaves the LM intact.
    """
    params = jax.tree.map(jnp.copy, nnx.state(lm.backbone, nnx.Param))
    nnx.update(reward_model.backbone, params)
    return reward_model


def lm_flops_per_token(cfg: LMConfig, seq_len: int) -> float:
    """Forward matmul FLOPs per token: ``2·(4D² + 3DF)`` per layer (q, k, v, out
    projections and the SwiGLU), ``4·T·D`` per layer for attention scores and values
    (full ``T×T``, no causal saving), ``2·D·V`` for the LM head."""
    D, F, V = cfg.d_model, cfg.mlp_dim, cfg.vocab_size
    per_layer = 2 * (4 * D * D + 3 * D * F) + 4 * seq_len * D
    return float(cfg.num_layers * per_layer + 2 * D * V)


class Samples(NamedTuple):
    """Sampled sequences ``tokens [B, P + L]`` (prompt then completion) and the sampling
    log-probs ``logps [B, L]`` of each generated token."""

    tokens: jax.Array
    logps: jax.Array


def sample_completions(logits_fn: Callable[[jax.Array], jax.Array], prompts: jax.Array,
                       key: jax.Array, length: int, *, temperature: float = 1.0,
                       pad_id: int = 0) -> Samples:
    """Ancestral sampling of ``length`` tokens after fixed-length prompts, in one ``lax.scan``.

    ``y_t ~ softmax(logits(x, y_{<t})_{P+t−1} / temperature)``; the full sequence buffer
    ``[B, P + L]`` is run through the model at every step (no KV cache; the unfilled
    tail holds ``pad_id`` and cannot influence earlier positions of a causal model).

    Args:
      logits_fn: ``tokens [B, T] -> logits [B, T, V]``.
      prompts: ``[B, P]`` token ids (``P >= 1``; left-align prompts of equal length).
      key: PRNG key.
      length: ``L >= 1`` tokens to generate.
      temperature: ``> 0``.
      pad_id: the filler of not-yet-generated positions.

    Returns:
      ``Samples(tokens [B, P + L], logps [B, L])``.

    Example:
      >>> out = sample_completions(lambda t: lm(t), prompts, jax.random.key(0), 8)
    """
    prompts = jnp.asarray(prompts)
    if jnp.ndim(prompts) != 2 or prompts.shape[1] < 1:
        raise ValueError(f"prompts must have shape [B, P] with P >= 1, got shape "
                         f"{tuple(jnp.shape(prompts))}")
    if not jnp.issubdtype(prompts.dtype, jnp.integer):
        raise ValueError(f"prompts must be integer token ids, got dtype {prompts.dtype}")
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    if is_concrete(temperature) and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    B, P = prompts.shape
    buffer = jnp.concatenate([prompts, jnp.full((B, length), pad_id, prompts.dtype)], axis=1)

    def step(buffer, inputs):
        t, k = inputs
        logits = logits_fn(buffer)  # [B, P + L, V]
        last = jax.lax.dynamic_index_in_dim(logits, P + t - 1, axis=1, keepdims=False)
        last = last.astype(jnp.promote_types(last.dtype, jnp.float32))
        logp = jax.nn.log_softmax(last / temperature)  # [B, V]
        token = jax.random.categorical(k, logp).astype(buffer.dtype)  # [B]
        buffer = jax.lax.dynamic_update_slice_in_dim(buffer, token[:, None], P + t, axis=1)
        return buffer, jnp.take_along_axis(logp, token[:, None].astype(jnp.int32), -1)[:, 0]

    keys = jax.random.split(key, length)
    buffer, logps = jax.lax.scan(step, buffer, (jnp.arange(length), keys))
    return Samples(buffer, logps.T)
