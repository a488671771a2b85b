"""moe-lm recipe pieces: the stdlib corpus split by file, a short training run through
``common.train.fit`` with the aux-loss-free bias update, and config validation."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision.recipes.moe_lm import MoELMRecipeConfig, stdlib_corpus, train_one, window_batch

TINY = MoELMRecipeConfig(
    model=MoELMRecipeConfig().model.replace(d_model=16, num_heads=2, num_kv_heads=1,
                                            head_dim=8, mlp_dim=32, expert_dim=8,
                                            num_experts=4, top_k=2, max_seq_len=32),
    seq_len=16, batch_size=4, steps=12, chunk_size=6, val_windows=4, bias_update_rate=0.05,
    optim=dataclasses.replace(MoELMRecipeConfig().optim, warmup_steps=2))


def test_corpus_is_split_by_file():
    train, val, info = stdlib_corpus(10, 200_000, 50_000)
    assert info["train_files"] > 0 and info["val_files"] > 0
    assert train.size == info["train_bytes"] <= 200_000 and val.size <= 50_000
    assert train.min() >= 0 and max(train.max(), val.max()) < 259
    windows = window_batch(jnp.asarray(val), jax.random.key(0), 3, 9)
    assert windows.shape == (3, 9)


@pytest.mark.slow
def test_short_run_updates_the_router_bias():
    train, val, _ = stdlib_corpus(10, 20_000, 5_000)
    data = jnp.asarray(train)
    val_windows = window_batch(jnp.asarray(val), jax.random.key(1), 4, 17)
    history = []
    state, tokens_per_s = train_one(TINY, TINY.model, TINY.bias_update_rate, data, val_windows,
                                    key=jax.random.key(0), history=history)
    assert int(state.step) == TINY.steps and tokens_per_s > 0
    rows = [m for _, m in history if "loss" in m]
    assert len(rows) == TINY.steps and all(np.isfinite(m["loss"]) for m in rows)
    assert {"max_violation", "load_entropy", "load_e0"} <= set(rows[0])
    bias = np.asarray(state.model().moe_layers[0].bias[...])
    # each step moves every bias by ±γ or 0, so it sits on the γ-grid and is not all zero
    assert np.any(bias != 0)
    np.testing.assert_allclose(bias / TINY.bias_update_rate,
                               np.round(bias / TINY.bias_update_rate), atol=1e-3)
    assert any("eval/bits_per_byte" in m for _, m in history)


@pytest.mark.parametrize("change,match", [
    (dict(seq_len=0), "seq_len"),
    (dict(seq_len=40), "max_seq_len"),
    (dict(val_every=1), "val_every"),
    (dict(bias_update_rate=0.0), "bias_update_rate"),
    (dict(steps=2), "warmup_steps"),
])
def test_config_validation(change, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(TINY, **change).validate()
    with pytest.raises(ValueError, match="MoE layer"):
        dataclasses.replace(TINY, model=TINY.model.replace(first_k_dense=2)).validate()
