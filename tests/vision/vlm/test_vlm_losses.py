"""SigLIP's sigmoid loss against its formula; the masked (answer-only) next-token loss
against a numpy cross-entropy, and its insensitivity to unmasked positions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import log_softmax

from vision.vlm.losses import caption_loss, siglip_loss


def test_siglip_matches_formula():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 4))
    y = rng.normal(size=(5, 4))
    t, b = 1.3, -2.0
    got = float(jax.jit(siglip_loss)(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32),
                                     jnp.float32(t), jnp.float32(b)))
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    yn = y / np.linalg.norm(y, axis=1, keepdims=True)
    ref = 0.0
    for i in range(5):
        for j in range(5):
            z = 1.0 if i == j else -1.0
            logit = np.exp(t) * xn[i] @ yn[j] + b
            ref += np.log1p(np.exp(-z * logit))
    assert got == pytest.approx(ref / 5, rel=1e-5)


def test_siglip_gradients_reach_temperature_and_bias():
    x = jnp.eye(3)
    g = jax.jit(jax.grad(siglip_loss, argnums=(2, 3)))(x, x, jnp.float32(0.0), jnp.float32(0.0))
    assert all(np.isfinite(float(v)) and float(v) != 0 for v in g)


def test_answer_only_loss():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
    tokens = rng.integers(0, 7, size=(2, 5))
    mask = np.array([[0, 0, 0, 1, 1], [0, 0, 1, 1, 0]], bool)
    loss = jax.jit(caption_loss)
    got = float(loss(jnp.asarray(logits), jnp.asarray(tokens), jnp.asarray(mask)))
    lp = log_softmax(logits.astype(np.float64), axis=-1)
    terms = [-lp[b, t - 1, tokens[b, t]] for b in range(2) for t in range(1, 5) if mask[b, t]]
    assert got == pytest.approx(np.mean(terms), rel=1e-5)
    # logits that predict unmasked tokens do not matter
    other = logits.copy()
    other[0, :2] += 10 * rng.normal(size=(2, 7))
    other[1, 3:] += 10 * rng.normal(size=(2, 7))
    assert float(loss(jnp.asarray(other), jnp.asarray(tokens),
                      jnp.asarray(mask))) == pytest.approx(got, rel=1e-6)


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="text_emb"):
        siglip_loss(jnp.ones((3, 4)), jnp.ones((2, 4)), 0.0, 0.0)
    with pytest.raises(ValueError, match="bias"):
        siglip_loss(jnp.ones((3, 4)), jnp.ones((3, 4)), 0.0, jnp.ones(2))
    with pytest.raises(ValueError, match="loss_mask"):
        caption_loss(jnp.ones((2, 3, 4)), jnp.ones((2, 3), int), jnp.ones((2, 4)))
    with pytest.raises(ValueError, match="tokens must be integer"):
        caption_loss(jnp.ones((2, 3, 4)), jnp.ones((2, 3)), jnp.ones((2, 3)))
