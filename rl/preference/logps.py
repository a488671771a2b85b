"""Sequence log-probabilities of completions from a causal LM's logits.

A causal LM's logits at position ``t`` predict token ``t + 1``, so with tokens
``s = (s_0, …, s_{T−1})`` (prompt, completion, right padding) and a boolean
completion mask ``m`` over token positions,

    ``log π(y|x) = Σ_{t=1}^{T−1} m_t · log softmax(logits_{t−1})[s_t]``

(the labels are the tokens shifted left by one; the first token is never scored).
Prompt and padding tokens carry ``m_t = 0``, so their logits and values never change
the result. ``average=True`` divides by the completion token count ``n = Σ_t m_t``
(TRL's ``average_log_prob``; IPO, SimPO and ORPO use per-token log-probs).

:func:`concatenated_logps` runs the chosen and rejected sequences through the model in
one forward pass of ``[2B, T]`` (padding the shorter batch), as TRL's
``concatenated_forward`` does.

Example:
    >>> logits = model(tokens)                               # [B, T, V]
    >>> out = sequence_logps(logits, tokens, mask)           # out.logps [B], out.lengths [B]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from common.checks import shape_of

__all__ = [
    "PairLogps",
    "SequenceLogps",
    "completion_mask",
    "concatenate_pairs",
    "concatenated_logps",
    "sequence_logps",
    "token_logps",
]


class SequenceLogps(NamedTuple):
    """``logps [B]`` (sum, or mean with ``average=True``) and ``lengths [B]`` (int32 counts)."""

    logps: jax.Array
    lengths: jax.Array


def token_logps(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """``log softmax(logits)[labels]`` per position, without materialising the softmax.

    ``out[b, t] = logits[b, t, labels[b, t]] − logsumexp_v logits[b, t, v]``.

    Args:
      logits: ``[B, T, V]``.
      labels: ``[B, T]`` integer ids in ``[0, V)``.

    Returns:
      ``[B, T]`` log-probabilities in the dtype of ``logits`` (float32 at least).

    Example:
      >>> token_logps(jnp.zeros((1, 2, 4)), jnp.array([[0, 3]]))  # log(1/4) each
    """
    if jnp.ndim(logits) != 3:
        raise ValueError(f"logits must have shape [B, T, V], got shape {shape_of(logits)}")
    if shape_of(labels) != shape_of(logits)[:2]:
        raise ValueError(f"labels must have shape [B, T] = {shape_of(logits)[:2]}, got shape "
                         f"{shape_of(labels)}")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be integer token ids, got dtype {labels.dtype}")
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    picked = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(logits, axis=-1)


def completion_mask(prompt_lengths: jax.Array, lengths: jax.Array, seq_len: int) -> jax.Array:
    """Boolean mask of completion positions: ``prompt_lengths[b] <= t < lengths[b]``.

    Args:
      prompt_lengths: ``[B]`` prompt token counts (the completion starts there).
      lengths: ``[B]`` total (prompt + completion) token counts; later positions are padding.
      seq_len: ``T``.

    Returns:
      ``[B, T]`` boolean.

    Example:
      >>> completion_mask(jnp.array([2]), jnp.array([4]), 5).astype(int).tolist()
      [[0, 0, 1, 1, 0]]
    """
    prompt_lengths = jnp.asarray(prompt_lengths)
    lengths = jnp.asarray(lengths)
    if jnp.ndim(prompt_lengths) != 1:
        raise ValueError(f"prompt_lengths must have shape [B], got shape "
                         f"{shape_of(prompt_lengths)}")
    if shape_of(lengths) != shape_of(prompt_lengths):
        raise ValueError(f"lengths must have shape [B] = {shape_of(prompt_lengths)} like "
                         f"prompt_lengths, got shape {shape_of(lengths)}")
    t = jnp.arange(seq_len)[None, :]
    return (t >= prompt_lengths[:, None]) & (t < lengths[:, None])


def _check_tokens_mask(tokens, mask, tokens_name: str, mask_name: str) -> None:
    if jnp.ndim(tokens) != 2:
        raise ValueError(f"{tokens_name} must have shape [B, T], got shape {shape_of(tokens)}")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"{tokens_name} must be integer token ids, got dtype {tokens.dtype}")
    if shape_of(mask) != shape_of(tokens):
        raise ValueError(f"{mask_name} must have shape [B, T] = {shape_of(tokens)} like "
                         f"{tokens_name}, got shape {shape_of(mask)}")
    if mask.dtype != jnp.bool_:
        raise ValueError(f"{mask_name} must be boolean (True = completion token), got dtype "
                         f"{mask.dtype}")


def sequence_logps(logits: jax.Array, tokens: jax.Array, mask: jax.Array, *,
                   average: bool = False) -> SequenceLogps:
    """Per-sequence completion log-probabilities with shifted labels and a mask.

    ``logps_b = Σ_{t≥1} m_{b,t} log p(s_{b,t} | s_{b,<t})`` where the conditional is
    ``softmax(logits_{b,t−1})``; with ``average``, divided by ``n_b = Σ_{t≥1} m_{b,t}``
    (0 when ``n_b = 0``).

    Args:
      logits: ``[B, T, V]`` causal-LM logits of ``tokens``.
      tokens: ``[B, T]`` token ids (prompt, completion, padding).
      mask: ``[B, T]`` boolean, True on completion tokens (position 0 is ignored: it has
        no prediction).
      average: return the mean instead of the sum over completion tokens.

    Returns:
      ``SequenceLogps(logps [B], lengths [B] int32)``.

    Example:
      >>> out = sequence_logps(model(tokens), tokens, completion_mask(p, n, T))

    Paper: Rafailov et al. 2023 (DPO), section 4 (``log π(y|x)`` of a completion).
    """
    tokens = jnp.asarray(tokens)
    mask = jnp.asarray(mask)
    _check_tokens_mask(tokens, mask, "tokens", "mask")
    if jnp.ndim(logits) != 3 or shape_of(logits)[:2] != shape_of(tokens):
        raise ValueError(f"logits must have shape [B, T, V] with [B, T] = {shape_of(tokens)}, "
                         f"got shape {shape_of(logits)}")
    per_token = token_logps(logits[:, :-1], tokens[:, 1:])  # [B, T-1]
    shifted = mask[:, 1:]
    total = jnp.sum(jnp.where(shifted, per_token, 0.0), axis=-1)  # [B]
    lengths = jnp.sum(shifted, axis=-1, dtype=jnp.int32)
    if average:
        total = total / jnp.maximum(lengths, 1).astype(total.dtype)
    return SequenceLogps(total, lengths)


def concatenate_pairs(chosen_tokens: jax.Array, chosen_mask: jax.Array,
                      rejected_tokens: jax.Array, rejected_mask: jax.Array, *,
                      pad_id: int = 0) -> tuple[jax.Array, jax.Array]:
    """Stack chosen over rejected sequences, right-padding the shorter batch.

    Args:
      chosen_tokens: ``[B, T_w]``; chosen_mask: ``[B, T_w]`` boolean.
      rejected_tokens: ``[B, T_l]``; rejected_mask: ``[B, T_l]`` boolean.
      pad_id: token used for padding (its positions are masked out).

    Returns:
      ``tokens [2B, T]`` and ``mask [2B, T]`` with ``T = max(T_w, T_l)``; rows ``:B`` are
      the chosen sequences.

    Example:
      >>> tokens, mask = concatenate_pairs(cw, mw, cl, ml)
    """
    chosen_tokens, rejected_tokens = jnp.asarray(chosen_tokens), jnp.asarray(rejected_tokens)
    chosen_mask, rejected_mask = jnp.asarray(chosen_mask), jnp.asarray(rejected_mask)
    _check_tokens_mask(chosen_tokens, chosen_mask, "chosen_tokens", "chosen_mask")
    _check_tokens_mask(rejected_tokens, rejected_mask, "rejected_tokens", "rejected_mask")
    if rejected_tokens.shape[0] != chosen_tokens.shape[0]:
        raise ValueError(f"rejected_tokens must have the batch size B = "
                         f"{chosen_tokens.shape[0]} of chosen_tokens, got shape "
                         f"{shape_of(rejected_tokens)}")
    T = max(chosen_tokens.shape[1], rejected_tokens.shape[1])

    def pad(x, value):
        return jnp.pad(x, ((0, 0), (0, T - x.shape[1])), constant_values=value)

    tokens = jnp.concatenate([pad(chosen_tokens, pad_id),
                              pad(rejected_tokens, pad_id).astype(chosen_tokens.dtype)])
    mask = jnp.concatenate([pad(chosen_mask, False), pad(rejected_mask, False)])
    return tokens, mask


class PairLogps(NamedTuple):
    """Chosen and rejected sequence log-probs ``[B]`` and completion lengths ``[B]``."""

    chosen_logps: jax.Array
    rejected_logps: jax.Array
    chosen_lengths: jax.Array
    rejected_lengths: jax.Array


def concatenated_logps(logits_fn: Callable[[jax.Array], jax.Array], chosen_tokens: jax.Array,
                       chosen_mask: jax.Array, rejected_tokens: jax.Array,
                       rejected_mask: jax.Array, *, average: bool = False,
                       pad_id: int = 0) -> PairLogps:
    """Chosen and rejected log-probs from one forward pass over ``[2B, T]``.

    Args:
      logits_fn: ``tokens [N, T] -> logits [N, T, V]`` (a causal LM; right padding only
        affects positions after it, which are masked).
      chosen_tokens, chosen_mask, rejected_tokens, rejected_mask: as in
        :func:`concatenate_pairs`.
      average: per-token mean log-probs instead of sums.
      pad_id: padding token.

    Returns:
      ``PairLogps(chosen_logps [B], rejected_logps [B], chosen_lengths [B],
      rejected_lengths [B])``.

    Example:
      >>> out = concatenated_logps(lambda t: model(t), cw, mw, cl, ml)
      >>> preference_loss(out.chosen_logps, out.rejected_logps, ref_w, ref_l)
    """
    tokens, mask = concatenate_pairs(chosen_tokens, chosen_mask, rejected_tokens,
                                     rejected_mask, pad_id=pad_id)
    B = chosen_tokens.shape[0]
    out = sequence_logps(logits_fn(tokens), tokens, mask, average=average)
    return PairLogps(out.logps[:B], out.logps[B:], out.lengths[:B], out.lengths[B:])
