"""The Kimi-VL-style vision-language model: MoonViT → patch merger / MLP projector → MoE LM.

A text holds one ``<image>`` placeholder per image; :func:`expand_placeholders` repeats
it as many times as the image has merged patches, and :func:`splice_image_features`
writes the projected features over those positions of the embedded sequence, in order
(the ``k``-th placeholder of the flattened batch gets feature row ``k``: Kimi-VL's
``inputs_embeds[input_ids == image_token_index] = image_features``). Training uses
:func:`vision.vlm.losses.caption_loss` with a mask on caption or answer tokens only;
:func:`generate_answers` decodes answers greedily with the language model's KV cache,
each sequence continuing from its own prompt length.

The encoder stage's contrastive towers live here too: an image embedding (mean of an
image's MoonViT features, then a linear map) and a small text tower (byte embedding, a
pre-norm transformer encoder with 1-D RoPE, mean pool, linear map), with SigLIP's
learnable temperature and bias.

Bad input (host side, concrete values): a placeholder count that disagrees with the
images raises ``ValueError`` naming ``tokens`` (or ``texts``); shapes are checked at
trace time. Inside ``jit`` a count mismatch cannot raise: by ``common.checks``' policy
the spliced embeddings (and so the logits) become NaN.

Paper: Kimi Team 2025, "Kimi-VL Technical Report".
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from common.checks import check_int, check_rank, poison, shape_of, shape_str, value_ok
from common.nn import Encoder, TransformerConfig, padding_mask
from vision.vlm.language_model import LMAux, MoELM, MoELMConfig, forward_cached, init_cache
from vision.vlm.moonvit import MoonViT, MoonViTConfig, PackedImages, pack_images
from vision.vlm.projector import Projector, ProjectorConfig, merge_gather_index, merged_grid

__all__ = [
    "VLM",
    "VLMBatch",
    "VLMConfig",
    "answer_mask",
    "expand_placeholders",
    "generate_answers",
    "image_features",
    "make_batch",
    "splice_image_features",
]


@dataclasses.dataclass(frozen=True)
class VLMConfig:
    """Shape of the vision-language model.

    Attributes:
      vision: the :class:`MoonViTConfig`.
      text: the language model's :class:`MoELMConfig`.
      image_token_id: id of the ``<image>`` placeholder (``< text.vocab_size``).
      kernel: patch-merge kernel ``(kh, kw)``.
      embed_dim: width of the SigLIP embeddings (encoder stage).
      text_tower_layers: layers of the SigLIP text tower.
    """

    vision: MoonViTConfig
    text: MoELMConfig
    image_token_id: int
    kernel: tuple[int, int] = (2, 2)
    embed_dim: int = 32
    text_tower_layers: int = 1

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        if not isinstance(self.vision, MoonViTConfig):
            raise ValueError(f"vision must be a MoonViTConfig, got {type(self.vision).__name__}")
        if not isinstance(self.text, MoELMConfig):
            raise ValueError(f"text must be a MoELMConfig, got {type(self.text).__name__}")
        check_int(self.image_token_id, "image_token_id", 0, self.text.vocab_size - 1)
        check_int(self.embed_dim, "embed_dim")
        check_int(self.text_tower_layers, "text_tower_layers")
        self.projector_config()

    def projector_config(self) -> ProjectorConfig:
        return ProjectorConfig(self.vision.d_model, self.text.d_model, tuple(self.kernel))

    def replace(self, **changes) -> VLMConfig:
        return dataclasses.replace(self, **changes)


class VLMBatch(NamedTuple):
    """A batch of image–text examples (device arrays; a pytree).

    Attributes:
      packed: the batch's images, packed (:class:`PackedImages`, ``[R, L]`` buffers).
      merge_index: ``[M, kh·kw]`` int32 rows of the flat ``[R·L]`` feature buffer that
        make each merged token (``R·L`` = a zero row), images in batch order, padded
        with zero-row indices to the budget ``M``.
      num_features: int32 scalar, the real merged tokens (``<= M``).
      tokens: ``[B, T]`` int32 text with expanded placeholders, right-padded.
      loss_mask: ``[B, T]`` bool, target tokens (caption or answer, and ``<eos>``).
      prompt_lengths: ``[B]`` int32, tokens before the first target.
      image_of: ``[B]`` int32, the image index of example ``b`` (its segment id).
    """

    packed: PackedImages
    merge_index: jax.Array
    num_features: jax.Array
    tokens: jax.Array
    loss_mask: jax.Array
    prompt_lengths: jax.Array
    image_of: jax.Array


# ----------------------------------------------------------------------------- host side


def expand_placeholders(ids, counts, image_token_id: int, *, name: str = "tokens"
                        ) -> list[int]:
    """Repeat the ``i``-th ``<image>`` placeholder ``counts[i]`` times.

    Args:
      ids: a sequence of token ids with one placeholder per image.
      counts: merged-token count of each image, in placeholder order.
      image_token_id: the placeholder id.
      name: the argument name used in errors.

    Returns:
      The expanded id list.

    Raises:
      ValueError: the number of placeholders differs from ``len(counts)``.

    Example:
      >>> expand_placeholders([1, 9, 5], [3], 9)
      [1, 9, 9, 9, 5]
    """
    ids = [int(i) for i in ids]
    found = sum(i == image_token_id for i in ids)
    if found != len(counts):
        raise ValueError(f"{name} holds {found} <image> placeholders but {len(counts)} images "
                         "were given (placeholder count must equal the number of images)")
    out, k = [], 0
    for i in ids:
        if i == image_token_id:
            out.extend([image_token_id] * int(counts[k]))
            k += 1
        else:
            out.append(i)
    return out


def answer_mask(prompt_length: int, total_length: int, padded_length: int) -> np.ndarray:
    """The answer-only loss mask: ``m[t] = prompt_length <= t < total_length``.

    Example:
      >>> answer_mask(2, 4, 5).astype(int).tolist()
      [0, 0, 1, 1, 0]
    """
    t = np.arange(padded_length)
    return (t >= prompt_length) & (t < total_length)


def make_batch(images, prompts, targets, config: VLMConfig, *, max_tokens: int,
               num_rows: int, max_text: int, max_features: int | None = None,
               one_per_row: bool = False, pad_id: int = 0, text_only: bool = False
               ) -> tuple[VLMBatch, dict]:
    """Pack images and build the text side of a batch (host side).

    Example ``b``'s sequence is ``prompts[b]`` (with one ``<image>`` placeholder,
    expanded) followed by ``targets[b]``; the loss mask marks ``targets[b]``.

    Args:
      images: ``B`` arrays ``[H_b, W_b, C]``.
      prompts: ``B`` token-id lists, each with one placeholder.
      targets: ``B`` token-id lists (answer or caption, ending with ``<eos>``).
      config: the :class:`VLMConfig`.
      max_tokens, num_rows, one_per_row: the packing (:func:`pack_images`).
      max_text: ``T``, the padded text length.
      max_features: ``M``, the merged-token budget (default ``num_rows·max_tokens``
        divided by the kernel size, rounded up).
      pad_id: padding token id.
      text_only: drop the placeholders from the prompts (the text-only ablation: the
        images are still packed but never spliced; use ``use_images=False``).

    Returns:
      ``(VLMBatch, info)`` with ``info = {"pack": PackInfo, "counts": [...]}``.

    Example:
      >>> batch, info = make_batch([img], [[1, 42]], [[7, 2]], cfg, max_tokens=64,
      ...                          num_rows=1, max_text=32)
    """
    B = len(images)
    if not (len(prompts) == len(targets) == B):
        raise ValueError(f"images, prompts and targets must have equal lengths, got {B}, "
                         f"{len(prompts)}, {len(targets)}")
    c = config
    kh, kw = c.kernel
    packed, info = pack_images(images, c.vision.patch_size, max_tokens, num_rows,
                               one_per_row=one_per_row)
    pad_index = num_rows * max_tokens
    counts = [int(np.prod(merged_grid(g, c.kernel))) for g in info.grids]
    M = max_features if max_features is not None else -(-pad_index // (kh * kw))
    if sum(counts) > M:
        raise ValueError(f"{sum(counts)} merged image tokens exceed max_features={M}")
    index = np.full((M, kh * kw), pad_index, np.int32)
    k = 0
    for g, off, n in zip(info.grids, info.offsets, counts, strict=True):
        index[k:k + n] = merge_gather_index(g, off, c.kernel, pad_index=pad_index)
        k += n
    tokens = np.full((B, max_text), pad_id, np.int32)
    mask = np.zeros((B, max_text), bool)
    lengths = np.zeros(B, np.int32)
    for b in range(B):
        if text_only:
            p = [int(i) for i in prompts[b] if i != c.image_token_id]
        else:
            p = expand_placeholders(prompts[b], [counts[b]], c.image_token_id,
                                    name=f"prompts[{b}]")
        seq = p + [int(t) for t in targets[b]]
        if len(seq) > max_text:
            raise ValueError(f"example {b} has {len(seq)} tokens, over max_text={max_text}")
        tokens[b, :len(seq)] = seq
        mask[b] = answer_mask(len(p), len(seq), max_text)
        lengths[b] = len(p)
    batch = VLMBatch(packed, jnp.asarray(index), jnp.int32(sum(counts)), jnp.asarray(tokens),
                     jnp.asarray(mask), jnp.asarray(lengths), jnp.arange(B, dtype=jnp.int32))
    return batch, {"pack": info, "counts": counts}


# ----------------------------------------------------------------------------- model


class VLM(nnx.Module):
    """MoonViT, projector and MoE language model, plus the SigLIP towers.

    Args:
      config: a :class:`VLMConfig`.
      rngs: ``nnx.Rngs``.

    Call:
      ``model(batch: VLMBatch) -> (logits [B, T, V], LMAux)``; ``model(batch,
      use_images=False)`` runs the language model on the placeholder embeddings alone
      (the text-only ablation keeps no placeholders).

    Example:
      >>> model = VLM(cfg, rngs=nnx.Rngs(0))
      >>> logits, aux = model(batch)

    Paper: Kimi Team 2025, "Kimi-VL Technical Report".
    """

    def __init__(self, config: VLMConfig, *, rngs: nnx.Rngs):
        if not isinstance(config, VLMConfig):
            raise ValueError(f"config must be a VLMConfig, got {type(config).__name__}")
        self.config = config
        self.vision = MoonViT(config.vision, rngs=rngs)
        self.projector = Projector(config.projector_config(), rngs=rngs)
        self.lm = MoELM(config.text, rngs=rngs)
        Dv, E, Dt = config.vision.d_model, config.embed_dim, config.text.d_model
        self.image_head = nnx.Linear(Dv, E, rngs=rngs)
        self.text_embed = nnx.Embed(config.text.vocab_size, Dt, rngs=rngs)
        self.text_tower = Encoder(TransformerConfig(
            d_model=Dt, num_heads=config.text.num_heads, mlp_dim=2 * Dt,
            num_layers=config.text_tower_layers, activation="gelu", norm_first=True,
            rope="1d"), rngs=rngs)
        self.text_head = nnx.Linear(Dt, E, rngs=rngs)
        self.log_temperature = nnx.Param(jnp.log(jnp.float32(10.0)))
        self.siglip_bias = nnx.Param(jnp.float32(-10.0))

    def __call__(self, batch: VLMBatch, *, use_images: bool = True
                 ) -> tuple[jax.Array, LMAux]:
        return self.lm(None, embeddings=self.embed(batch, use_images=use_images))

    def embed(self, batch: VLMBatch, *, use_images: bool = True) -> jax.Array:
        """The language model's input: token embeddings with image features spliced in."""
        h = self.lm.embed(batch.tokens)
        if not use_images:
            return h
        feats = image_features(self, batch.packed, batch.merge_index)
        return splice_image_features(h, batch.tokens, feats, self.config.image_token_id,
                                     batch.num_features)

    def image_embeddings(self, packed: PackedImages, num_images: int) -> jax.Array:
        """SigLIP image embeddings ``[N, E]``: mean MoonViT feature of each image, mapped."""
        feats = self.vision(packed)  # [R, L, Dv]
        Dv = feats.shape[-1]
        seg = packed.segment_ids.reshape(-1)
        seg = jnp.where(seg < 0, num_images, seg)
        total = jax.ops.segment_sum(feats.reshape(-1, Dv), seg, num_images + 1)[:num_images]
        count = jax.ops.segment_sum(jnp.ones_like(seg, jnp.float32), seg, num_images + 1)
        return self.image_head(total / jnp.maximum(count[:num_images, None], 1.0))

    def text_embeddings(self, tokens: jax.Array, pad_id: int = 0) -> jax.Array:
        """SigLIP text embeddings ``[N, E]`` of ``tokens [N, T]`` (mean over non-pad)."""
        check_rank(tokens, "tokens", 2, "[N, T]")
        valid = tokens != pad_id
        h = self.text_tower(self.text_embed(tokens), mask=padding_mask(valid),
                            positions=jnp.arange(tokens.shape[1]))
        w = valid.astype(h.dtype)[..., None]
        return self.text_head(jnp.sum(h * w, 1) / jnp.maximum(jnp.sum(w, 1), 1.0))


def image_features(model: VLM, packed: PackedImages, merge_index: jax.Array) -> jax.Array:
    """Projected image tokens: MoonViT over the pack, 2×2 merge by gather, projector.

    ``f = Projector(gather(concat(ViT(packed).reshape(R·L, D), 0), merge_index))``.

    Args:
      model: a :class:`VLM`.
      packed: ``[R, L]`` packed images.
      merge_index: ``[M, kh·kw]`` indices into the ``R·L + 1`` rows (last = zeros).

    Returns:
      ``[M, D_lm]``.
    """
    feats = model.vision(packed)  # [R, L, Dv]
    R, L, Dv = feats.shape
    K = model.config.kernel[0] * model.config.kernel[1]
    check_rank(merge_index, "merge_index", 2, f"[M, {K}]")
    if merge_index.shape[1] != K:
        raise ValueError(f"merge_index must have shape [M, {K}], got shape "
                         f"{shape_str(shape_of(merge_index))}")
    flat = jnp.concatenate([feats.reshape(R * L, Dv), jnp.zeros((1, Dv), feats.dtype)])
    return model.projector(flat[merge_index])  # [M, D_lm]


def splice_image_features(embeddings: jax.Array, tokens: jax.Array, features: jax.Array,
                          image_token_id: int, num_features=None) -> jax.Array:
    """Write image features over the placeholder positions, in order.

    ``e'[b, t] = features[k(b, t)]`` where ``tokens[b, t]`` is the ``k``-th placeholder
    of the flattened batch (row-major), else ``e[b, t]``.

    Args:
      embeddings: ``[B, T, D]`` token embeddings.
      tokens: ``[B, T]`` token ids.
      features: ``[M, D]`` image features (the first ``num_features`` rows are real).
      image_token_id: the placeholder id.
      num_features: real feature rows (int or int32 scalar; default ``M``).

    Returns:
      ``[B, T, D]``; NaN everywhere when (traced) the placeholder count differs from
      ``num_features``.

    Raises:
      ValueError: (concrete values) the placeholder count in ``tokens`` differs from
        ``num_features``; wrong shapes.

    Example:
      >>> splice_image_features(jnp.zeros((1, 3, 2)), jnp.array([[5, 9, 5]]),
      ...                       jnp.ones((1, 2)), 9)[0, :, 0].tolist()
      [0.0, 1.0, 0.0]
    """
    check_rank(embeddings, "embeddings", 3, "[B, T, D]")
    B, T, D = embeddings.shape
    if shape_of(tokens) != (B, T):
        raise ValueError(f"tokens must have shape [B, T] = ({B}, {T}), got shape "
                         f"{shape_str(shape_of(tokens))}")
    check_rank(features, "features", 2, f"[M, {D}]")
    if features.shape[1] != D:
        raise ValueError(f"features must have shape [M, {D}], got shape "
                         f"{shape_str(features.shape)}")
    M = features.shape[0]
    num_features = M if num_features is None else num_features
    is_image = (tokens == image_token_id).reshape(-1)  # [B·T]
    count = jnp.sum(is_image.astype(jnp.int32))
    ok = value_ok(count - num_features, "tokens", lambda d: d == 0,
                  "holding one <image> placeholder per image feature (placeholder count "
                  "minus num_features = 0)")
    k = jnp.clip(jnp.cumsum(is_image.astype(jnp.int32)) - 1, 0, max(M - 1, 0))
    flat = embeddings.reshape(B * T, D)
    if M:
        flat = jnp.where(is_image[:, None], features[k].astype(flat.dtype), flat)
    out = flat.reshape(B, T, D)
    return out if ok is True else poison(out, ok)


def generate_answers(model: VLM, batch: VLMBatch, length: int, *, use_images: bool = True
                     ) -> jax.Array:
    """Greedy answers after each prompt, with the language model's KV cache.

    The prompts (``batch.tokens[b, :prompt_lengths[b]]``, right-padded, images spliced)
    fill the cache in one pass; then ``length − 1`` ``lax.scan`` steps feed each
    sequence's last token at its own position ``prompt_lengths[b] + i``. Cache entries
    past a sequence's position are never attended (the causal cache mask), so padding
    left in the cache by the prefill is overwritten before it is read.

    Args:
      model: a :class:`VLM`.
      batch: a :class:`VLMBatch` (targets after the prompts are ignored).
      length: answer tokens to generate.
      use_images: splice the images (``False``: placeholders' own embeddings).

    Returns:
      ``[B, length]`` int32 generated ids.

    Example:
      >>> answers = nnx.jit(generate_answers, static_argnums=2)(model, batch, 8)
    """
    check_int(length, "length")
    lm = model.lm
    emb = model.embed(batch, use_images=use_images)
    B, T = batch.tokens.shape
    cache = init_cache(lm.config, B, T + length)
    logits, cache = forward_cached(lm, None, cache, jnp.int32(0), embeddings=emb)
    last = jnp.take_along_axis(logits, (batch.prompt_lengths - 1)[:, None, None], axis=1)
    first = jnp.argmax(last[:, 0], axis=-1).astype(jnp.int32)
    graphdef, state = nnx.split(lm)

    def body(carry, _):
        token, cache, pos = carry
        m = nnx.merge(graphdef, state)
        logits, cache = forward_cached(m, token[:, None], cache, pos)
        nxt = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
        return (nxt, cache, pos + 1), nxt

    if length == 1:
        return first[:, None]
    _, rest = jax.lax.scan(body, (first, cache, batch.prompt_lengths.astype(jnp.int32)),
                           None, length=length - 1)
    return jnp.concatenate([first[:, None], rest.T], axis=1)
