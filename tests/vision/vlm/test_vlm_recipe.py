"""vlm-shapes recipe pieces: config validation, packing of the splits, a tiny encoder
stage through ``common.train.fit`` and KV-cached evaluation; the whole recipe (three
stages, three models) at a tiny size only with ``-m slow``."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from vision.recipes.vlm_shapes import (
    VLMShapesConfig,
    accuracy_table,
    build_packs,
    evaluate,
    run,
    train_stages,
)
from vision.vlm.model import VLM
from vision.vlm.moonvit import MoonViTConfig
from vision.vlm.synthetic import make_examples

BASE = VLMShapesConfig()
TINY = dataclasses.replace(
    BASE,
    vision=MoonViTConfig(patch_size=14, d_model=16, num_layers=1, num_heads=2, mlp_dim=32,
                         pos_grid=(4, 4)),
    text=BASE.text.replace(d_model=16, num_heads=2, num_kv_heads=1, head_dim=8, mlp_dim=32,
                           num_experts=4, expert_dim=8, max_seq_len=80, num_layers=1,
                           first_k_dense=1),
    sides=(28, 56), max_objects=3, num_train=8, num_test=4, batch_size=4, max_tokens=16,
    max_text_qa=64, max_text_caption=72, square_side=28, stage1_steps=2, stage2_steps=2,
    stage3_steps=2, chunk_size=2, answer_length=4,
    optim=dataclasses.replace(BASE.optim, warmup_steps=1))


@pytest.mark.slow  # heavy: runs under pytest -m slow
def test_tiny_stage_through_fit():
    TINY.validate()
    train = make_examples(TINY.num_train, 0, sides=TINY.sides, max_objects=TINY.max_objects)
    packs = build_packs(train, TINY)
    assert packs["qa"].tokens.shape == (2, 4, TINY.max_text_qa)
    assert np.all(packs["efficiency"] >= packs["padded_efficiency"] - 1e-9)
    model = VLM(TINY.model_config(), rngs=nnx.Rngs(0))
    history = []
    train_stages(model, packs, TINY, key=jax.random.key(0), stages=("stage3",),
                 history=history)
    rows = [m for _, m in history if "loss" in m]
    assert len(rows) == 2 and "answer_ce" in rows[0]
    assert all(np.isfinite(m["loss"]) for m in rows)


def test_accuracy_table_weights_aspect():
    ex = make_examples(5, 1, sides=(28, 112))
    correct = np.array([e.aspect >= 3 for e in ex])
    table = accuracy_table(correct, ex, 3.0)
    asp = np.array([e.aspect for e in ex])
    assert table["aspect_weighted"] == pytest.approx(float((asp * correct).sum() / asp.sum()))
    if (asp >= 3).any():
        assert table["extreme_aspect"] == 1.0


@pytest.mark.parametrize("change,match", [
    (dict(sides=(30,)), "multiples of 2·patch_size"),
    (dict(num_train=10), "num_train"),
    (dict(stage2_steps=3), "stage2_steps"),
    (dict(max_tokens=2), "max_tokens"),
    (dict(max_text_qa=200), "max_seq_len"),
    (dict(num_rows=-1), "num_rows"),
])
def test_config_validation(change, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(TINY, **change).validate()
    with pytest.raises(ValueError, match="vocab_size"):
        dataclasses.replace(TINY, text=TINY.text.replace(vocab_size=50)).validate()


@pytest.mark.slow
def test_whole_recipe_tiny():
    train = make_examples(TINY.num_train, 0, sides=TINY.sides, max_objects=TINY.max_objects)
    packs = build_packs(train, TINY)
    model = VLM(TINY.model_config(), rngs=nnx.Rngs(0))
    result = evaluate(model, packs, train, TINY)
    assert len(result["predictions"]) == TINY.num_train
    moe = dataclasses.replace(TINY, text=TINY.text.replace(num_layers=2))
    summary = run(None, moe)
    for name in ("native", "square", "text_only"):
        assert 0.0 <= summary[f"{name}_acc_all"] <= 1.0
    assert summary["packing_efficiency"] >= summary["padded_efficiency"]
    assert len(summary["expert_share_image"]) == moe.text.num_experts
