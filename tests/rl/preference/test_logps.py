"""rl.preference.logps: shifted-label sequence log-probs against a numpy loop, masking
(prompt and padding logits never matter), mean = sum / count, one concatenated forward
pass equal to two separate ones, and errors naming the bad argument."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl.preference import (
    completion_mask,
    concatenate_pairs,
    concatenated_logps,
    sequence_logps,
    token_logps,
)
from tests.tolerances import F32, F64, assert_close

B, T, V = 3, 7, 5


def example():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(B, T, V)) * 2.0
    tokens = rng.integers(0, V, size=(B, T)).astype(np.int32)
    prompt = np.array([2, 1, 3])
    lengths = np.array([6, 7, 4])
    mask = (np.arange(T)[None] >= prompt[:, None]) & (np.arange(T)[None] < lengths[:, None])
    return logits, tokens, mask, prompt, lengths


def numpy_sequence_logps(logits, tokens, mask):
    out = np.zeros(logits.shape[0])
    for b in range(logits.shape[0]):
        for t in range(1, logits.shape[1]):
            if mask[b, t]:
                row = logits[b, t - 1]
                out[b] += row[tokens[b, t]] - np.log(np.sum(np.exp(row)))
    return out, mask[:, 1:].sum(axis=1)


def test_completion_mask():
    got = completion_mask(jnp.array([2, 0]), jnp.array([4, 3]), 5)
    assert got.astype(int).tolist() == [[0, 0, 1, 1, 0], [1, 1, 1, 0, 0]]
    with pytest.raises(ValueError, match="lengths must have shape"):
        completion_mask(jnp.array([2, 0]), jnp.array([4]), 5)


def test_token_logps_is_log_softmax_at_the_labels(x64):
    logits, tokens, _, _, _ = example()
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    want = np.take_along_axis(logp, tokens[..., None], -1)[..., 0]
    assert_close(token_logps(logits, tokens), want, F64)


@pytest.mark.parametrize("jit", [False, True])
def test_sequence_logps_matches_a_numpy_loop(jit, x64):
    logits, tokens, mask, _, _ = example()
    fn = jax.jit(sequence_logps, static_argnames="average") if jit else sequence_logps
    out = fn(logits, tokens, mask)
    want, counts = numpy_sequence_logps(logits, tokens, mask)
    assert_close(out.logps, want, F64)
    assert out.lengths.tolist() == counts.tolist() and out.lengths.dtype == jnp.int32
    mean = fn(logits, tokens, mask, average=True)
    assert_close(mean.logps, want / counts, F64)
    assert_close(mean.logps, out.logps / out.lengths, F64)


def test_prompt_and_padding_logits_do_not_change_sequence_logps():
    logits, tokens, mask, prompt, lengths = example()
    base = sequence_logps(logits, tokens, mask).logps
    # logits at position t only predict token t + 1: perturb every position whose next
    # token is prompt or padding (and the last position, which predicts nothing)
    scored = np.zeros((B, T), bool)
    scored[:, :-1] = mask[:, 1:]
    rng = np.random.default_rng(1)
    noisy = np.where(scored[..., None], logits, rng.normal(size=logits.shape) * 1e3)
    assert_close(sequence_logps(noisy, tokens, mask).logps, base, F32)
    # padding token ids do not matter either
    padded = tokens.copy()
    for b in range(B):
        padded[b, lengths[b]:] = (padded[b, lengths[b]:] + 1) % V
    assert_close(sequence_logps(logits, padded, mask).logps, base, F32)
    # changing a scored logit does change the result (the test can fail)
    changed = logits.copy()
    changed[0, prompt[0] - 1, tokens[0, prompt[0]]] += 1.0
    assert not np.allclose(sequence_logps(changed, tokens, mask).logps[0], base[0])


def test_empty_completion_has_zero_logp_and_zero_mean():
    logits, tokens, _, _, _ = example()
    out = sequence_logps(logits, tokens, np.zeros((B, T), bool), average=True)
    assert out.logps.tolist() == [0.0] * B and out.lengths.tolist() == [0] * B


def test_concatenated_forward_equals_separate_forwards():
    rng = np.random.default_rng(2)
    table = jnp.asarray(rng.normal(size=(V, V)))

    def logits_fn(tokens):  # a bigram "LM"
        return table[tokens]

    cw = rng.integers(0, V, (B, 6)).astype(np.int32)
    cl = rng.integers(0, V, (B, 8)).astype(np.int32)
    mw = np.arange(6)[None].repeat(B, 0) >= 2
    ml = (np.arange(8)[None].repeat(B, 0) >= 3) & (np.arange(8)[None] < 7)
    @jax.jit
    def run(cw, mw, cl, ml):
        return (concatenated_logps(logits_fn, cw, mw, cl, ml),
                sequence_logps(logits_fn(cw), cw, mw), sequence_logps(logits_fn(cl), cl, ml),
                concatenated_logps(logits_fn, cw, mw, cl, ml, average=True))

    out, sep_w, sep_l, avg = run(cw, mw, cl, ml)
    assert_close(out.chosen_logps, sep_w.logps, F32)
    assert_close(out.rejected_logps, sep_l.logps, F32)
    assert out.chosen_lengths.tolist() == sep_w.lengths.tolist()
    tokens, mask = concatenate_pairs(cw, mw, cl, ml, pad_id=4)
    assert tokens.shape == (2 * B, 8) and mask.shape == (2 * B, 8)
    assert np.all(np.asarray(tokens[:B, 6:]) == 4) and not np.any(np.asarray(mask[:B, 6:]))
    assert_close(avg.chosen_logps, sep_w.logps / sep_w.lengths, F32)


def test_bad_inputs_name_the_argument():
    logits, tokens, mask, _, _ = example()
    with pytest.raises(ValueError, match=r"mask must have shape \[B, T\]"):
        sequence_logps(logits, tokens, mask[:, :-1])
    with pytest.raises(ValueError, match="mask must be boolean"):
        sequence_logps(logits, tokens, mask.astype(np.int32))
    with pytest.raises(ValueError, match=r"logits must have shape \[B, T, V\]"):
        sequence_logps(logits[:, :-1], tokens, mask)
    with pytest.raises(ValueError, match="tokens must be integer"):
        sequence_logps(logits, tokens.astype(np.float32), mask)
    with pytest.raises(ValueError, match="labels must have shape"):
        token_logps(logits, tokens[:, :-1])
    with pytest.raises(ValueError, match="rejected_tokens must have the batch size"):
        concatenate_pairs(tokens, mask, tokens[:2], mask[:2])
    with pytest.raises(ValueError, match=r"rejected_mask must have shape \[B, T\]"):
        concatenate_pairs(tokens, mask, tokens, mask[:, :3])
