"""vision.vlm.language_model: parameter counts of the published config against a closed
form and the published figures, the dense/MoE layout, KV-cached generation against full
recomputation, the bias update, and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common.nn.moe import MoE
from tests.tolerances import F32_LOOSE, assert_close
from vision.vlm import (
    CONFIGS,
    MOONLIGHT_PUBLISHED,
    MoELM,
    MoELMConfig,
    apply_bias_update,
    dense_counterpart,
    forward_cached,
    generate,
    init_cache,
    param_counts,
)

SMALL = CONFIGS["tiny-moe"].replace(d_model=32, num_heads=4, num_kv_heads=2, head_dim=8,
                                    mlp_dim=48, num_layers=2, first_k_dense=1, expert_dim=16,
                                    n_group=2, topk_group=1, max_seq_len=32)


@pytest.fixture(scope="module")
def lm():
    return nnx.jit(lambda: MoELM(SMALL, rngs=nnx.Rngs(0)))()  # one compile, not op by op


def closed_form_counts(c: MoELMConfig):
    """Parameters from the architecture: embedding + head, per layer two RMSNorm scales,
    q/k/v/out projections (out with bias), a dense SwiGLU or router + E routed + shared
    SwiGLU experts, and the final norm."""
    D, V = c.d_model, c.vocab_size
    attn = D * c.num_heads * c.head_dim * 2 + D * c.num_kv_heads * c.head_dim * 2 + D
    dense = 3 * D * c.mlp_dim
    expert = 3 * D * c.expert_dim
    moe_total = D * c.num_experts + (c.num_experts + c.num_shared_experts) * expert
    moe_active = D * c.num_experts + (c.top_k + c.num_shared_experts) * expert
    moe_layers = c.num_layers - c.first_k_dense
    common = 2 * V * D + c.num_layers * (attn + 2 * D) + c.first_k_dense * dense + D
    return common + moe_layers * moe_total, common + moe_layers * moe_active


def test_published_moonlight_config_counts():
    cfg = CONFIGS["moonlight-16b-a3b"]
    pub = MOONLIGHT_PUBLISHED
    assert (cfg.vocab_size, cfg.d_model, cfg.mlp_dim, cfg.expert_dim, cfg.num_layers,
            cfg.num_heads, cfg.num_experts, cfg.top_k, cfg.num_shared_experts,
            cfg.first_k_dense, cfg.routed_scaling_factor) == (
        pub["vocab_size"], pub["hidden_size"], pub["intermediate_size"],
        pub["moe_intermediate_size"], pub["num_hidden_layers"], pub["num_attention_heads"],
        pub["n_routed_experts"], pub["num_experts_per_tok"], pub["n_shared_experts"],
        pub["first_k_dense_replace"], pub["routed_scaling_factor"])
    counts = param_counts(cfg)
    total, active = closed_form_counts(cfg)
    assert counts == {"total": total, "active": active}
    # published: 16B total, 3B activated (to the figures' precision)
    assert round(counts["total"] / 1e9) == pub["total_params"] / 1e9
    assert round(counts["active"] / 1e9) == pub["active_params"] / 1e9


def test_tiny_counts_and_dense_counterparts():
    for cfg in (SMALL, SMALL.replace(num_layers=5), SMALL.replace(first_k_dense=4,
                                                                  num_layers=4)):
        total, active = closed_form_counts(cfg)
        assert param_counts(cfg) == {"total": total, "active": active}
    total, active = closed_form_counts(SMALL)
    for match, target in (("active", active), ("total", total)):
        dense = dense_counterpart(SMALL, match)
        assert dense.num_moe_layers == 0
        n = param_counts(dense)["total"]
        assert abs(n - target) <= 3 * dense.d_model * dense.num_layers  # one unit of mlp_dim


def test_layout_and_aux(lm):
    layers = list(lm.decoder.layers)
    assert not isinstance(layers[0].ffn, MoE) and len(lm.moe_layers) == 1
    tokens = jax.random.randint(jax.random.key(0), (2, 6), 0, SMALL.vocab_size)
    logits, aux = nnx.jit(lambda m, t: m(t))(lm, tokens)
    assert logits.shape == (2, 6, SMALL.vocab_size) and logits.dtype == jnp.float32
    assert aux.tokens_per_expert.shape == (1, SMALL.num_experts)
    np.testing.assert_array_equal(aux.tokens_per_expert.sum(1), [12 * SMALL.top_k])
    assert aux.indices.shape == (1, 12, SMALL.top_k)
    assert not any(path for path, _ in nnx.to_flat_state(nnx.state(lm, nnx.Intermediate)))


def test_kv_cached_generation_equals_recomputation(lm):
    P, L = 5, 7
    prompts = jax.random.randint(jax.random.key(1), (2, P), 3, SMALL.vocab_size)
    out = nnx.jit(lambda m, p: generate(m, p, L, jax.random.key(0)))(lm, prompts)
    # recompute the whole sequence for every new token (a zero-padded buffer of fixed
    # length: causal attention keeps the padding out of earlier positions)
    seq = np.zeros((2, P + L), np.int32)
    seq[:, :P] = prompts
    full = nnx.jit(lambda m, t: m(t)[0])
    for t in range(P, P + L):
        seq[:, t] = np.argmax(full(lm, jnp.asarray(seq))[:, t - 1], -1)
    np.testing.assert_array_equal(out, seq)


@pytest.mark.slow
def test_kv_cache_in_chunks_equals_full_forward(lm):
    seq = np.asarray(jax.random.randint(jax.random.key(3), (2, 12), 3, SMALL.vocab_size))
    logits = nnx.jit(lambda m, t: m(t)[0])(lm, jnp.asarray(seq))
    P, L = 5, 7
    cache = init_cache(SMALL, 2, P + L)
    chunks = nnx.jit(lambda m, t, c: (lambda a, c2: jnp.concatenate(
        [a, forward_cached(m, t[:, 6:], c2, jnp.int32(6))[0]], axis=1))(
            *forward_cached(m, t[:, :6], c, jnp.int32(0))))
    assert_close(chunks(lm, jnp.asarray(seq), cache), logits, F32_LOOSE)


def test_bias_update_moves_against_load(lm):
    before = [np.asarray(m.bias[...]) for m in lm.moe_layers]
    load = jnp.arange(SMALL.num_experts, dtype=jnp.float32)[None]
    apply_bias_update(lm, load, 0.5)
    after = [np.asarray(m.bias[...]) for m in lm.moe_layers]
    for b0, b1 in zip(before, after, strict=True):
        assert np.all((b1 - b0)[:4] == 0.5) and np.all((b1 - b0)[4:] == -0.5)
    for m, b0 in zip(lm.moe_layers, before, strict=True):
        m.bias[...] = jnp.asarray(b0)
    with pytest.raises(ValueError, match="load"):
        apply_bias_update(lm, load[0])


def test_bad_input(lm):
    with pytest.raises(ValueError, match="tokens"):
        lm(jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="tokens"):
        lm(jnp.zeros(3, jnp.int32))
    with pytest.raises(ValueError, match="length"):
        init_cache(SMALL, 1, SMALL.max_seq_len + 1)
    with pytest.raises(ValueError, match="head_dim"):
        SMALL.replace(head_dim=7)
    with pytest.raises(ValueError, match="num_kv_heads"):
        SMALL.replace(num_kv_heads=3)
    with pytest.raises(ValueError, match="top_k"):
        SMALL.replace(top_k=SMALL.num_experts + 1)
    with pytest.raises(ValueError, match="match"):
        dense_counterpart(SMALL, "both")
    with pytest.raises(ValueError, match="temperature"):
        generate(lm, jnp.zeros((1, 2), jnp.int32), 2, jax.random.key(0), temperature=-1.0)
    with pytest.raises(ValueError, match="config"):
        MoELM(SMALL.moe_config(), rngs=nnx.Rngs(0))
