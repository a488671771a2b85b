"""rl.preference.task: the hidden reward, the demonstrator, Bradley–Terry labels, the
sequence KL, the importance-sampled optimum against its closed form, and the frontier
comparison; plus a slow end-to-end run of the dpo-frontier recipe."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl.preference.task import (
    SentimentTask,
    compare_frontiers,
    demonstrations,
    label_pairs,
    make_pairs,
    optimal_frontier,
    reward_envelope,
    sample_prompts,
    sequence_kl,
    true_reward,
)
from tests.tolerances import F32, assert_close

TASK = SentimentTask(alphabet="abcdef", positive="ab", negative="f", prompt_length=2,
                     completion_length=3)


def test_true_reward_counts_positive_minus_negative_letters():
    tok = TASK.tokenizer()
    seqs = np.array([[1, *tok.encode("cd"), *tok.encode("abf")],
                     [1, *tok.encode("ab"), *tok.encode("ccc")],
                     [1, *tok.encode("ff"), *tok.encode("aab")]])
    assert_close(true_reward(TASK, jnp.asarray(seqs)), [1 / 3, 0.0, 1.0], F32)
    with pytest.raises(ValueError, match=r"tokens must have shape \[N, 6\]"):
        true_reward(TASK, jnp.asarray(seqs[:, :-1]))


def test_demonstrator_copies_the_prompt_and_prompts_start_with_bos():
    copy_all = dataclasses.replace(TASK, copy_prob=1.0)

    @jax.jit
    def draw(key):
        prompts = sample_prompts(TASK, key, 64)
        return prompts, demonstrations(copy_all, jax.random.fold_in(key, 1), prompts)

    prompts, seqs = jax.device_get(draw(jax.random.key(0)))
    assert prompts.shape == (64, 3) and np.all(prompts[:, 0] == 1)
    assert np.all(prompts[:, 1:] >= 3)
    for row in seqs:
        assert set(row[3:]) <= set(row[1:3])
    with pytest.raises(ValueError, match="not in the alphabet"):
        SentimentTask(positive="z")


def test_pairs_follow_bradley_terry_on_the_true_reward():
    V = TASK.tokenizer().vocab_size

    def logits_fn(params, tokens):  # uniform over the letters
        return jnp.broadcast_to(params, (*tokens.shape, V))

    uniform = jnp.where(jnp.arange(V) >= 3, 0.0, -1e9)
    prompts = sample_prompts(TASK, jax.random.key(0), 256)
    sharp = dataclasses.replace(TASK, bt_scale=1e4)
    pairs = jax.jit(make_pairs, static_argnums=(0, 2))(sharp, jax.random.key(1), logits_fn,
                                                        uniform, prompts)
    assert np.all(np.asarray(pairs["chosen_reward"]) >= np.asarray(pairs["rejected_reward"]))
    assert np.array_equal(np.asarray(pairs["chosen"][:, :3]), np.asarray(prompts))
    assert pairs["chosen_mask"].shape == (256, 6) and pairs["chosen_mask"].dtype == bool
    # with scale s, P(first chosen) = σ(s (r_1 − r_2))
    first, second = pairs["chosen"], pairs["rejected"]
    diff = np.asarray(true_reward(TASK, first) - true_reward(TASK, second))
    for scale in (2.0,):
        task = dataclasses.replace(TASK, bt_scale=scale)
        keys = jax.random.split(jax.random.key(2), 200)
        picks = jax.jit(jax.vmap(lambda k, t=task: label_pairs(t, k, first, second)["chosen"]))(
            keys)
        rate = np.mean(np.all(np.asarray(picks) == np.asarray(first)[None], axis=2), axis=0)
        want = 1.0 / (1.0 + np.exp(-scale * diff))
        distinct = np.any(np.asarray(first) != np.asarray(second), axis=1)
        assert np.max(np.abs(rate - want)[distinct]) < 5 * np.sqrt(0.25 / 200)
    with pytest.raises(ValueError, match="second must have the shape"):
        label_pairs(TASK, jax.random.key(0), first, second[:3])


def test_sequence_kl_is_the_sum_of_per_token_kls(x64):
    rng = np.random.default_rng(0)
    p, q = rng.normal(size=(2, 5, 4)), rng.normal(size=(2, 5, 4))
    tokens = np.zeros((2, 5), np.int32)
    mask = np.array([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]], bool)
    lp = p - np.log(np.exp(p).sum(-1, keepdims=True))
    lq = q - np.log(np.exp(q).sum(-1, keepdims=True))
    per = (np.exp(lp) * (lp - lq)).sum(-1)
    want = [(per[b, :-1] * mask[b, 1:]).sum() for b in range(2)]
    assert_close(sequence_kl(p, q, tokens, mask), want, dict(rtol=1e-10, atol=1e-12))
    assert_close(sequence_kl(p, p, tokens, mask), [0.0, 0.0], F32)
    with pytest.raises(ValueError, match="ref_logits must have shape"):
        sequence_kl(p, q[:, :-1], tokens, mask)


def test_optimal_frontier_matches_the_closed_form_for_an_additive_reward():
    """With a context-free reference and a per-token reward, π* factorises:
    q(v) ∝ p(v) exp(s_v / (β L)), E[r] = E_q[s], KL = L · KL(q ‖ p)."""
    V = TASK.tokenizer().vocab_size
    base = jnp.asarray(np.r_[-1e9, -1e9, -1e9, np.linspace(-0.5, 0.5, V - 3)], jnp.float32)

    def logits_fn(params, tokens):
        return jnp.broadcast_to(params, (*tokens.shape, V))

    prompts = sample_prompts(TASK, jax.random.key(0), 64)
    betas = np.array([0.5, 1.0, 3.0])
    got = optimal_frontier(TASK, logits_fn, base, prompts, jax.random.key(1), betas,
                           num_samples=512)
    p = np.exp(np.asarray(base, np.float64))
    p /= p.sum()
    s = np.asarray(TASK.token_scores(), np.float64)
    L = TASK.completion_length
    for i, beta in enumerate(betas):
        q = p * np.exp(s / (beta * L))
        q /= q.sum()
        live = p > 0
        kl = L * np.sum(q[live] * np.log(q[live] / p[live]))
        assert abs(got["reward"][i] - np.sum(q * s)) < 0.03, (beta, got["reward"][i])
        assert abs(got["kl"][i] - kl) < 0.05 + 0.1 * kl, (beta, got["kl"][i], kl)
        assert got["ess_fraction"][i] > 0.3


def test_reward_envelope_and_frontier_comparison():
    grid = np.array([0.0, 0.5, 1.0, 2.0, 3.0])
    env = reward_envelope([1.0, 2.0, 0.5], [0.3, 0.2, 0.1], grid)
    assert np.isnan(env[0]) and env[1:].tolist() == [0.1, 0.3, 0.3, 0.3]
    start = (0.0, 0.0)
    better = compare_frontiers([1.0, 2.0], [0.5, 0.8], [1.0, 3.0], [0.3, 0.9], start=start,
                               checkpoints=(1.5, 5.0))
    assert better["a_dominates"] and better["a_better_fraction"] == 1.0
    assert better["kl_max_compared"] == 2.0 and better["mean_reward_gap"] > 0
    assert better["reward_at_kl"] == {"1.5": {"a": 0.5, "b": 0.3}}
    crossing = compare_frontiers([1.0, 2.0], [0.5, 0.6], [1.0, 2.0], [0.3, 0.9], start=start)
    assert not crossing["a_dominates"] and 0.0 < crossing["a_better_fraction"] < 1.0
    with pytest.raises(ValueError, match="matching"):
        reward_envelope([1.0], [1.0, 2.0], grid)


@pytest.mark.slow
def test_dpo_frontier_recipe_end_to_end(tmp_path):
    from common.recipe import run_recipe
    from rl.recipes import dpo_frontier  # noqa: F401 (registers the recipe)

    overrides = {"sft_steps": "20", "num_pairs": "64", "rm_steps": "10", "dpo_steps": "20",
                 "rlhf_steps": "20", "eval_every": "10", "eval_prompts": "16",
                 "oracle_samples": "8", "chunk_size": "10", "d_model": "16", "mlp_dim": "32",
                 "num_heads": "2", "num_layers": "1", "dpo_betas": "0.1,1.0",
                 "rlhf_kl_coefs": "0.1,1.0"}
    run_dir, summary = run_recipe("dpo-frontier", overrides=overrides, runs_root=tmp_path,
                                  progress=False)
    assert (run_dir / "frontier.png").exists()
    saved = json.loads((run_dir / "summary.json").read_text())
    assert isinstance(saved["dpo_frontier_dominates"], bool)
    assert len(saved["dpo_final"]) == 2 and len(saved["rlhf_final"]) == 2
    # a rerun of a finished config starts a new folder; an unfinished one would resume
    assert summary["sft_true_reward"] == saved["sft_true_reward"]
