"""rl.preference model, tokenizer, sampling and training steps: byte tokenizer round
trips, causality of the LM, reward pooling, scan sampling against the model's own
log-probs and a known distribution, cached vs recomputed reference log-probs, sweeps
equal to single runs, and the RLOO gradient against the exact policy gradient."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common.optim import build_optimizer
from common.train import TrainState, train_step_fn
from rl.preference import (
    ByteTokenizer,
    CausalLM,
    LMConfig,
    RewardModel,
    init_reward_from_lm,
    make_dpo_loss,
    make_logits_fn,
    make_reward_fn,
    make_reward_model_loss,
    make_rloo_loss,
    make_sft_loss,
    make_sweep_loss,
    reference_logps,
    sample_completions,
    sequence_logps,
    stack_params,
    unstack_params,
)
from tests.tolerances import F32, F32_LOOSE, assert_close

TINY = LMConfig(vocab_size=11, d_model=16, num_layers=1, num_heads=2, mlp_dim=32)


@pytest.fixture(scope="module")
def lm():
    """The tiny transformer, its jitted ``logits_fn(params, tokens)`` and parameters."""
    model = CausalLM(TINY, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return model, jax.jit(make_logits_fn(graphdef, rest)), params


def bigram_logits(params, tokens):
    """A bigram "LM" (logits of the next token from the current one): the training
    functions are model-agnostic, and this keeps their tests fast."""
    return params["table"][tokens]


def bigram_params(seed=0):
    return {"table": jnp.asarray(np.random.default_rng(seed).normal(size=(11, 11)),
                                 jnp.float32)}


def pair_data(n, T=7, prompt=3, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.broadcast_to(np.arange(T) >= prompt, (n, T))
    length = np.full(n, T, np.int32)
    return {"chosen": jnp.asarray(rng.integers(3, 11, (n, T)), jnp.int32),
            "rejected": jnp.asarray(rng.integers(3, 11, (n, T)), jnp.int32),
            "chosen_mask": jnp.asarray(mask), "rejected_mask": jnp.asarray(mask),
            "chosen_length": jnp.asarray(length), "rejected_length": jnp.asarray(length)}


# ----------------------------------------------------------------------------- tokenizer


def test_byte_tokenizer_round_trips_and_pads():
    tok = ByteTokenizer()
    text = "héllo, wörld"
    assert tok.vocab_size == 259
    assert tok.decode(tok.encode(text, bos=True, eos=True)) == text
    small = ByteTokenizer("abc")
    assert small.vocab_size == 6 and small.encode("cab", bos=True) == [1, 5, 3, 4]
    ids, lengths = small.encode_batch(["ab", "c", ""], eos=True)
    assert ids.tolist() == [[3, 4, 2], [5, 2, 0], [2, 0, 0]] and lengths.tolist() == [3, 2, 1]
    assert small.decode([1, 3, 2, 4]) == "a"
    with pytest.raises(ValueError, match="outside the alphabet"):
        small.encode("abd")
    with pytest.raises(ValueError, match="repeated"):
        ByteTokenizer("aa")
    with pytest.raises(ValueError, match="more than length=1"):
        small.encode_batch(["abc"], length=1)


# ----------------------------------------------------------------------------- models


def test_lm_is_causal_and_reward_model_pools_the_last_real_token(lm):
    model, logits_fn, params = lm
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 11, (2, 6)), jnp.int32)
    changed = tokens.at[:, 4:].set(0)
    a, b = logits_fn(params, tokens), logits_fn(params, changed)
    assert a.shape == (2, 6, 11)
    assert_close(a[:, :4], b[:, :4], F32)
    assert not np.allclose(np.asarray(a[:, 4:]), np.asarray(b[:, 4:]))

    rm = RewardModel(TINY, rngs=nnx.Rngs(1))
    init_reward_from_lm(rm, model)
    rm.value_head.kernel[...] = jnp.ones_like(rm.value_head.kernel[...])
    graphdef, rparams, rest = nnx.split(rm, nnx.Param, ...)
    reward_fn = jax.jit(make_reward_fn(graphdef, rest))
    lengths = jnp.array([4, 6])
    r1, r2 = reward_fn(rparams, tokens, lengths), reward_fn(rparams, changed, lengths)
    assert r1.shape == (2,)
    assert_close(r1[0], r2[0], F32)  # padding after length 4 is ignored
    assert not np.isclose(float(r1[1]), float(r2[1]))
    assert_close(rm.backbone.embed.embedding[...], model.backbone.embed.embedding[...], F32)
    # zero head: equal rewards, so the Bradley–Terry loss is log 2 and accuracy 0
    rparams = jax.tree.map(jnp.zeros_like, rparams)
    loss, metrics = make_reward_model_loss(reward_fn)(rparams, None, pair_data(1, T=6), None)
    assert_close(loss, np.log(2.0), F32)
    assert float(metrics["accuracy"]) == 0.0
    with pytest.raises(ValueError, match="lengths must have shape"):
        reward_fn(rparams, tokens, jnp.array([4]))
    with pytest.raises(ValueError, match=r"tokens must have shape \[B, T\]"):
        logits_fn(params, tokens[0])


def test_sampling_logps_agree_with_the_model(lm):
    _, logits_fn, params = lm
    prompts = jnp.asarray([[1, 3, 4], [1, 9, 5]], jnp.int32)
    mask = jnp.broadcast_to(jnp.arange(7) >= 3, (2, 7))

    @jax.jit
    def sample_and_score(key):
        fn = functools.partial(logits_fn, params)
        out = sample_completions(fn, prompts, key, 4)
        return out, sequence_logps(fn(out.tokens), out.tokens, mask).logps

    out, seq = sample_and_score(jax.random.key(3))
    assert out.tokens.shape == (2, 7) and out.logps.shape == (2, 4)
    assert np.all(np.asarray(out.tokens[:, :3]) == np.asarray(prompts))
    assert_close(jnp.sum(out.logps, axis=1), seq, F32_LOOSE)
    again, _ = sample_and_score(jax.random.key(3))
    assert np.array_equal(np.asarray(again.tokens), np.asarray(out.tokens))
    fn = functools.partial(bigram_logits, bigram_params())
    with pytest.raises(ValueError, match="length must be >= 1"):
        sample_completions(fn, prompts, jax.random.key(0), 0)
    with pytest.raises(ValueError, match="prompts must have shape"):
        sample_completions(fn, prompts[0], jax.random.key(0), 2)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        sample_completions(fn, prompts, jax.random.key(0), 2, temperature=0.0)


def test_sampling_follows_a_known_bigram_distribution():
    rng = np.random.default_rng(4)
    table = rng.normal(size=(4, 4)).astype(np.float32)
    probs = np.exp(table) / np.exp(table).sum(-1, keepdims=True)

    def logits_fn(tokens):
        return jnp.asarray(table)[tokens]

    n = 4000
    prompts = jnp.zeros((n, 1), jnp.int32)
    out = sample_completions(logits_fn, prompts, jax.random.key(0), 2)
    first = np.asarray(out.tokens[:, 1])
    freq = np.bincount(first, minlength=4) / n
    assert np.max(np.abs(freq - probs[0])) < 4 * np.sqrt(0.25 / n)
    # second token given first = 2
    sel = np.asarray(out.tokens[:, 2])[first == 2]
    freq2 = np.bincount(sel, minlength=4) / len(sel)
    assert np.max(np.abs(freq2 - probs[2])) < 4 * np.sqrt(0.25 / len(sel))


# ----------------------------------------------------------------------------- training


def test_cached_and_per_step_reference_give_the_same_dpo_step():
    logits_fn, params = bigram_logits, bigram_params()
    pairs = pair_data(6)
    ref = jax.tree.map(lambda x: x + 0.01, params)
    cached = reference_logps(logits_fn, ref, pairs, batch_size=4)  # 6 pairs, 2 chunks
    direct = make_dpo_loss(logits_fn, beta=0.2, ref_params=ref)
    via_cache = make_dpo_loss(logits_fn, beta=0.2)

    @jax.jit
    def both(params, pairs, cached):
        key = jax.random.key(0)
        one = jax.value_and_grad(direct, has_aux=True)(params, None, pairs, key)
        two = jax.value_and_grad(via_cache, has_aux=True)(params, None, cached, key)
        seq = sequence_logps(logits_fn(ref, pairs["chosen"]), pairs["chosen"],
                             pairs["chosen_mask"])
        return one, two, seq.logps

    ((l1, m1), g1), ((l2, m2), g2), ref_chosen = both(params, pairs, cached)
    assert_close(l1, l2, F32)
    assert_close(m1["rewards/margins"], m2["rewards/margins"], F32)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        assert_close(a, b, F32_LOOSE)
    assert_close(cached["ref_chosen_logps"], ref_chosen, F32)  # the cache is per pair
    with pytest.raises(ValueError, match="batch is missing"):
        via_cache(params, None, pairs, None)


def test_sweep_members_train_like_single_runs():
    logits_fn, params = bigram_logits, bigram_params()
    pairs = reference_logps(logits_fn, params, pair_data(4))
    betas = (0.1, 1.0)
    dpo = make_dpo_loss(logits_fn)
    tx = build_optimizer(name="adam", learning_rate=1e-2)
    key = jax.random.key(1)

    @jax.jit
    def two_sweep_steps(params):
        step = train_step_fn(make_sweep_loss(dpo, betas), tx)
        state = TrainState.create(stack_params(params, 2), tx, key)
        state, metrics = step(state, pairs)
        return step(state, pairs)[0].params, metrics

    @jax.jit
    def two_single_steps(params, beta):
        step = train_step_fn(lambda p, r, b, k: dpo(p, r, b, k, beta), tx)
        state = TrainState.create(params, tx, key)
        state, _ = step(state, pairs)
        return step(state, pairs)[0].params

    swept, metrics = two_sweep_steps(params)
    assert "rewards/accuracies[1]" in metrics and "loss[0]" in metrics
    for k, beta in enumerate(betas):
        single = two_single_steps(params, beta)
        for a, b in zip(jax.tree.leaves(unstack_params(swept, k)), jax.tree.leaves(single),
                        strict=True):
            assert_close(a, b, F32_LOOSE)


def test_sft_loss_is_the_token_mean_nll():
    logits_fn, params = bigram_logits, bigram_params()
    pairs = pair_data(4)
    batch = {"tokens": pairs["chosen"], "mask": pairs["chosen_mask"]}
    loss, _ = make_sft_loss(logits_fn)(params, None, batch, None)
    out = sequence_logps(logits_fn(params, batch["tokens"]), batch["tokens"], batch["mask"])
    assert_close(loss, -out.logps.sum() / out.lengths.sum(), F32)
    with pytest.raises(ValueError, match="batch is missing"):
        make_sft_loss(logits_fn)(params, None, {"tokens": batch["tokens"]}, None)


def test_rloo_gradient_is_the_exact_kl_regularised_policy_gradient():
    """A context-free policy over 4 tokens, one-token completions: the expected RLOO
    gradient equals ∇_θ (E_π[r] − β KL(π ‖ π_ref)), computed here in closed form."""
    V = 4
    r = jnp.array([1.0, -0.5, 0.3, 2.0])
    theta = jnp.array([0.2, -0.3, 0.5, 0.0])
    theta_ref = jnp.array([0.0, 0.4, -0.2, 0.1])
    beta = 0.5

    def logits_fn(params, tokens):
        return jnp.broadcast_to(params, (*tokens.shape, V))

    def reward_fn(tokens):
        return r[tokens[:, -1]]

    rloo = make_rloo_loss(logits_fn, theta_ref, reward_fn, completion_length=1,
                          num_samples=4, kl_coef=beta)
    batch = {"prompts": jnp.zeros((5000, 1), jnp.int32)}
    grad = jax.jit(jax.grad(lambda p, k: rloo(p, None, batch, k)[0]))(theta, jax.random.key(0))

    def objective(params):
        p = jax.nn.softmax(params)
        logp, logq = jax.nn.log_softmax(params), jax.nn.log_softmax(theta_ref)
        return jnp.sum(p * r) - beta * jnp.sum(p * (logp - logq))

    exact = -jax.grad(objective)(theta)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(exact), atol=0.01)
    assert float(jnp.max(jnp.abs(exact))) > 0.1  # a non-trivial gradient
    with pytest.raises(ValueError, match="num_samples must be >= 2"):
        make_rloo_loss(logits_fn, theta_ref, reward_fn, completion_length=1, num_samples=1)
