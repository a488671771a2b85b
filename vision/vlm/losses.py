"""Losses of the vision-language model: SigLIP's pairwise sigmoid loss and masked
next-token (captioning / answer-only) cross-entropy.

Bad input: shapes and dtypes are checked at trace time (``ValueError`` naming the
argument); the values are not (a mask of all zeros gives a loss of 0, not NaN).

Papers: Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training" (SigLIP);
Kimi Team 2025, "Kimi-VL Technical Report" (MoonViT pre-training: SigLIP loss plus a
caption generation loss; supervised fine-tuning with the loss on answers only).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from common.checks import check_rank, shape_of, shape_str

__all__ = ["caption_loss", "siglip_loss"]


def siglip_loss(image_emb: jax.Array, text_emb: jax.Array, log_temperature: jax.Array,
                bias: jax.Array) -> jax.Array:
    """SigLIP's pairwise sigmoid loss over a batch of matching image–text pairs.

    ``x̂ = x/‖x‖``, ``ŷ = y/‖y‖``, ``ℓ_ij = e^{t'} x̂_i·ŷ_j + b``, ``z_ij = +1`` if
    ``i = j`` else ``−1``: ``L = −(1/N) Σ_i Σ_j log σ(z_ij ℓ_ij)``.

    Args:
      image_emb: ``[N, D]`` image embeddings (unnormalised).
      text_emb: ``[N, D]`` text embeddings; row ``i`` matches image ``i``.
      log_temperature: scalar ``t'`` (learnable; SigLIP initialises ``log 10``).
      bias: scalar ``b`` (learnable; SigLIP initialises ``−10``).

    Returns:
      Scalar loss (float32).

    Example:
      >>> siglip_loss(jnp.eye(3), jnp.eye(3), jnp.log(10.0), -10.0).shape
      ()

    Paper: Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training", Algorithm 1.
    """
    check_rank(image_emb, "image_emb", 2, "[N, D]")
    check_rank(text_emb, "text_emb", 2, "[N, D]")
    if shape_of(text_emb) != shape_of(image_emb):
        raise ValueError(f"text_emb must have the shape of image_emb "
                         f"{shape_str(shape_of(image_emb))}, got {shape_str(shape_of(text_emb))}")
    for name, v in (("log_temperature", log_temperature), ("bias", bias)):
        if jnp.ndim(v) != 0:
            raise ValueError(f"{name} must be a scalar, got shape {shape_str(shape_of(v))}")
    x = image_emb.astype(jnp.float32)
    y = text_emb.astype(jnp.float32)
    x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    y = y / jnp.maximum(jnp.linalg.norm(y, axis=-1, keepdims=True), 1e-12)
    logits = jnp.exp(log_temperature) * (x @ y.T) + bias  # [N, N]
    N = x.shape[0]
    labels = 2.0 * jnp.eye(N) - 1.0
    return -jnp.sum(jax.nn.log_sigmoid(labels * logits)) / max(N, 1)


def caption_loss(logits: jax.Array, tokens: jax.Array, loss_mask: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy over the masked target tokens.

    ``L = Σ_{b,t} m[b,t+1] · CE(logits[b,t], tokens[b,t+1]) / max(1, Σ m[b,1:])``: the
    logits at position ``t`` predict token ``t+1``, which counts only where
    ``loss_mask`` marks it (caption tokens, or answer tokens only for instruction
    tuning).

    Args:
      logits: ``[B, T, V]``.
      tokens: ``[B, T]`` int token ids (the inputs; targets are ``tokens[:, 1:]``).
      loss_mask: ``[B, T]`` bool/float, 1 where the *token* is a target.

    Returns:
      Scalar loss (float32).

    Example:
      >>> caption_loss(jnp.zeros((1, 3, 5)), jnp.array([[1, 2, 3]]),
      ...              jnp.array([[0, 0, 1]])).round(4)
      Array(1.6094, dtype=float32)

    Paper: Kimi Team 2025 (caption loss of MoonViT pre-training; SFT "loss only on
    the answers").
    """
    check_rank(logits, "logits", 3, "[B, T, V]")
    B, T, _ = logits.shape
    for name, v in (("tokens", tokens), ("loss_mask", loss_mask)):
        if shape_of(v) != (B, T):
            raise ValueError(f"{name} must have shape [B, T] = ({B}, {T}) like logits, got "
                             f"shape {shape_str(shape_of(v))}")
    if not jnp.issubdtype(jnp.asarray(tokens).dtype, jnp.integer):
        raise ValueError(f"tokens must be integer ids, got dtype {jnp.asarray(tokens).dtype}")
    ce = optax.softmax_cross_entropy_with_integer_labels(
        logits[:, :-1].astype(jnp.float32), tokens[:, 1:])  # [B, T-1]
    m = loss_mask[:, 1:].astype(jnp.float32)
    return jnp.sum(ce * m) / jnp.maximum(jnp.sum(m), 1.0)
