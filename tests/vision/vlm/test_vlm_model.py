"""The VLM: placeholder expansion, splicing at exact positions, the answer-only mask of a
batch, KV-cached answer generation = recomputation, and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vision.vlm.language_model import MoELMConfig
from vision.vlm.model import (
    VLM,
    VLMConfig,
    expand_placeholders,
    generate_answers,
    make_batch,
    splice_image_features,
)
from vision.vlm.moonvit import MoonViTConfig

IMG = 19
CFG = VLMConfig(
    vision=MoonViTConfig(patch_size=4, d_model=16, num_layers=1, num_heads=2, mlp_dim=32,
                         pos_grid=(3, 3)),
    text=MoELMConfig(vocab_size=20, d_model=16, num_layers=2, num_heads=2, num_kv_heads=1,
                     head_dim=8, mlp_dim=32, num_experts=4, top_k=2, expert_dim=8,
                     max_seq_len=64),
    image_token_id=IMG, embed_dim=8)


@pytest.fixture(scope="module")
def model():
    return VLM(CFG, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    images = [rng.uniform(size=s) for s in [(8, 16, 3), (16, 8, 3), (4, 8, 3)]]
    prompts = [[1, IMG, 5, 6], [1, 4, IMG, 7], [1, IMG, 5]]
    targets = [[8, 2], [9, 9, 2], [3, 2]]
    return make_batch(images, prompts, targets, CFG, max_tokens=12, num_rows=2,
                      max_text=12)


def test_expansion_and_answer_mask(batch):
    b, info = batch
    assert info["counts"] == [2, 2, 1]
    tokens = np.asarray(b.tokens)
    np.testing.assert_array_equal(tokens[1, :8], [1, 4, IMG, IMG, 7, 9, 9, 2])
    mask = np.asarray(b.loss_mask)
    # exactly the target tokens (answer and <eos>) are marked
    np.testing.assert_array_equal(np.nonzero(mask[0])[0], [5, 6])
    np.testing.assert_array_equal(np.nonzero(mask[1])[0], [5, 6, 7])
    np.testing.assert_array_equal(np.nonzero(mask[2])[0], [3, 4])
    np.testing.assert_array_equal(np.asarray(b.prompt_lengths), [5, 5, 3])
    assert int(b.num_features) == 5


def test_splice_places_features_exactly():
    rng = np.random.default_rng(1)
    tokens = np.array([[3, IMG, IMG, 4], [IMG, 5, 6, IMG]])
    emb = rng.normal(size=(2, 4, 3)).astype(np.float32)
    feats = rng.normal(size=(5, 3)).astype(np.float32)  # the last row is padding
    splice = jax.jit(splice_image_features, static_argnums=3)
    got = np.asarray(splice(jnp.asarray(emb), jnp.asarray(tokens), jnp.asarray(feats), IMG, 4))
    ref = emb.copy()
    k = 0
    for b in range(2):
        for t in range(4):
            if tokens[b, t] == IMG:
                ref[b, t] = feats[k]
                k += 1
    np.testing.assert_array_equal(got, ref)


def test_image_features_reach_only_their_tokens(model, batch):
    b, _ = batch
    emb, plain = nnx.jit(lambda m, x: (m.embed(x), m.lm.embed(x.tokens)))(model, b)
    plain = np.asarray(plain)
    changed = np.any(np.asarray(emb) != plain, axis=-1)
    np.testing.assert_array_equal(changed, np.asarray(b.tokens) == IMG)


def test_generation_with_cache_equals_recomputation(model, batch):
    b, _ = batch
    n = 4
    cached = np.asarray(nnx.jit(generate_answers, static_argnums=2)(model, b, n))
    forward = nnx.jit(lambda m, x: m(x)[0])
    tokens = np.asarray(b.tokens).copy()
    lengths = np.asarray(b.prompt_lengths)
    rows = np.arange(tokens.shape[0])
    tokens[rows[:, None], lengths[:, None] + np.arange(tokens.shape[1] - lengths.max())] = 0
    for i in range(n):
        logits = np.asarray(forward(model, b._replace(tokens=jnp.asarray(tokens))))
        nxt = logits[rows, lengths + i - 1].argmax(-1)
        np.testing.assert_array_equal(cached[:, i], nxt)
        tokens[rows, lengths + i] = nxt


def test_bad_input_names_the_argument(model, batch):
    with pytest.raises(ValueError, match="prompts\\[0\\] holds 2 <image> placeholders but 1"):
        make_batch([np.zeros((8, 8, 3))], [[IMG, IMG]], [[2]], CFG, max_tokens=8, num_rows=1,
                   max_text=16)
    with pytest.raises(ValueError, match="tokens holds 0 <image>"):
        expand_placeholders([1, 2], [4], IMG)
    with pytest.raises(ValueError, match="tokens must be holding one <image> placeholder"):
        splice_image_features(jnp.zeros((1, 3, 2)), jnp.array([[IMG, 1, 1]]), jnp.ones((2, 2)),
                              IMG, 2)
    # traced: the spliced embeddings are poisoned (NaN) instead
    out = jax.jit(lambda n: splice_image_features(
        jnp.zeros((1, 3, 2)), jnp.array([[IMG, 1, 1]]), jnp.ones((2, 2)), IMG, n))(2)
    assert np.all(np.isnan(np.asarray(out)))
    with pytest.raises(ValueError, match="max_tokens=4"):
        make_batch([np.zeros((8, 16, 3))], [[IMG]], [[2]], CFG, max_tokens=4, num_rows=1,
                   max_text=16)
    with pytest.raises(ValueError, match="images\\[0\\] of 2×8 pixels"):
        make_batch([np.zeros((2, 8, 3))], [[IMG]], [[2]], CFG, max_tokens=8, num_rows=1,
                   max_text=16)
    with pytest.raises(ValueError, match="image_token_id"):
        CFG.replace(image_token_id=20)
    with pytest.raises(ValueError, match="features must have shape"):
        splice_image_features(jnp.zeros((1, 3, 2)), jnp.array([[IMG, 1, 1]]), jnp.ones((1, 3)),
                              IMG)
