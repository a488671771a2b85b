"""RLE and the other keypoint losses and decoders against numpy formulas."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.tolerances import F32, F32_LOOSE, assert_close
from vision.pose.flows import standard_normal_log_prob
from vision.pose.rle import (
    argmax_decode,
    gaussian_heatmaps,
    heatmap_mse,
    l1_loss,
    l2_loss,
    rle_loss,
    soft_argmax,
)

RNG = np.random.default_rng(0)
B, K = 3, 5
MU = RNG.normal(0, 0.3, (B, K, 2)).astype(np.float32)
TARGET = RNG.normal(0, 0.3, (B, K, 2)).astype(np.float32)
SIGMA = RNG.uniform(0.05, 0.8, (B, K, 2)).astype(np.float32)
WEIGHT = (RNG.random((B, K)) > 0.3).astype(np.float32)


def flow_log_prob(eps):
    """A non-Gaussian, closed-form 'flow' density: a correlated Student-like bump."""
    return -jnp.log1p(0.5 * (eps[..., 0] ** 2 + eps[..., 0] * eps[..., 1] + eps[..., 1] ** 2))


def np_flow_log_prob(eps):
    return -np.log1p(0.5 * (eps[..., 0] ** 2 + eps[..., 0] * eps[..., 1] + eps[..., 1] ** 2))


def np_rle(mu, sigma, target, weight, q="laplace", residual=True):
    """The official RLELoss (residual mode) written out in float64 numpy."""
    mu, sigma, target, weight = (np.asarray(a, np.float64) for a in (mu, sigma, target, weight))
    eps = (mu - target) / sigma
    nf = np.log(sigma) - np_flow_log_prob(eps)[..., None]
    if residual:
        if q == "laplace":
            log_q = np.log(sigma / (1 / math.sqrt(2 * math.pi))) + np.abs(target - mu) / (
                math.sqrt(2) * sigma + 1e-9)
        else:
            log_q = np.log(sigma * math.sqrt(2 * math.pi)) + (target - mu) ** 2 / (2 * sigma**2)
        nf = nf + log_q
    return np.sum(weight[..., None] * nf) / mu.shape[0]


@pytest.mark.parametrize("q,residual", [("laplace", True), ("gaussian", True),
                                        ("laplace", False)])
def test_rle_loss_matches_the_formula(q, residual):
    got = rle_loss(MU, SIGMA, TARGET, WEIGHT, flow_log_prob, q=q, residual=residual)
    assert_close(got, np_rle(MU, SIGMA, TARGET, WEIGHT, q, residual), F32_LOOSE)
    jitted = jax.jit(lambda m, s: rle_loss(m, s, TARGET, WEIGHT, flow_log_prob, q=q,
                                           residual=residual))(MU, SIGMA)
    assert_close(jitted, got, F32)


def test_rle_with_gaussian_flow_and_gaussian_q_is_a_closed_form():
    # Q = N(0, 1) per coordinate, G = N(0, I): loss = Σ w [2 log σ + ε² + log 2π] per coord
    got = rle_loss(MU, SIGMA, TARGET, WEIGHT, standard_normal_log_prob, q="gaussian")
    eps = (MU - TARGET) / SIGMA
    per = (np.log(SIGMA) + 0.5 * np.sum(eps**2, -1, keepdims=True) + np.log(2 * np.pi)
           + np.log(SIGMA) + 0.5 * np.log(2 * np.pi) + 0.5 * eps**2)
    assert_close(got, np.sum(WEIGHT[..., None] * per) / B, F32_LOOSE)


def test_l1_and_l2_match_numpy():
    assert_close(l1_loss(MU, TARGET, WEIGHT),
                 np.sum(WEIGHT[..., None] * np.abs(MU - TARGET)) / B)
    assert_close(l2_loss(MU, TARGET, WEIGHT),
                 np.sum(WEIGHT[..., None] * (MU - TARGET) ** 2) / B)


def test_gradients_are_finite_as_sigma_goes_to_zero():
    tiny = np.full_like(SIGMA, 1e-12)
    grads = jax.grad(lambda m, s: rle_loss(m, s, TARGET, WEIGHT, flow_log_prob), (0, 1))(
        jnp.asarray(MU), jnp.asarray(tiny))
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)
    # below the clamp σ has no gradient, and the loss equals the loss at the clamp
    assert np.all(np.asarray(grads[1]) == 0.0)
    assert_close(rle_loss(MU, tiny, TARGET, WEIGHT, flow_log_prob, min_sigma=1e-3),
                 np_rle(MU, np.full_like(SIGMA, 1e-3), TARGET, WEIGHT), dict(rtol=1e-4, atol=0))


def test_heatmap_targets_and_mse_match_numpy():
    centers = np.array([[[1.3, 2.0], [0.0, 3.7]]], np.float32)     # [1, 2, 2]
    maps = np.asarray(gaussian_heatmaps(centers, 5, 4, 1.5))
    ii, jj = np.meshgrid(np.arange(5), np.arange(4), indexing="ij")
    for k, (x, y) in enumerate(centers[0]):
        assert_close(maps[0, k], np.exp(-((jj - x) ** 2 + (ii - y) ** 2) / (2 * 1.5**2)))
    pred = RNG.random((1, 2, 5, 4)).astype(np.float32)
    w = np.array([[1.0, 0.0]], np.float32)
    ref = np.mean([0.5 * np.mean((w[0, k] * (pred[0, k] - maps[0, k])) ** 2)
                   for k in range(2)])
    assert_close(heatmap_mse(pred, maps, w), ref)


def np_argmax_decode(maps):
    """A numpy port of Simple Baselines' get_max_preds + quarter-pixel refinement."""
    k, h, w = maps.shape
    out = np.zeros((k, 2))
    for j in range(k):
        idx = int(np.argmax(maps[j]))
        px, py = idx % w, idx // w
        x, y = float(px), float(py)
        if 1 < px < w - 1 and 1 < py < h - 1:
            x += 0.25 * np.sign(maps[j, py, px + 1] - maps[j, py, px - 1])
            y += 0.25 * np.sign(maps[j, py + 1, px] - maps[j, py - 1, px])
        out[j] = x, y
    return out


def test_argmax_decode_matches_the_reference():
    maps = RNG.random((12, 7, 6)).astype(np.float32)
    maps[0] = 0.0
    maps[0, 3, 2] = 1.0                                # exact peak: no shift
    maps[1, 0, 0] = 5.0                                # at the border: no refinement
    coords, maxvals = argmax_decode(jnp.asarray(maps))
    assert_close(coords, np_argmax_decode(maps))
    assert_close(maxvals, maps.reshape(12, -1).max(-1))
    assert coords[0].tolist() == [2.0, 3.0]
    plain, _ = argmax_decode(jnp.asarray(maps), refine=False)
    assert np.all(np.asarray(plain) == np.round(np.asarray(plain)))


def test_soft_argmax_matches_numpy_and_is_exact_on_a_delta():
    logits = RNG.normal(0, 2, (2, 3, 6, 5)).astype(np.float32)
    p = np.exp(2.0 * logits.reshape(2, 3, -1).astype(np.float64))
    p /= p.sum(-1, keepdims=True)
    p = p.reshape(2, 3, 6, 5)
    ii, jj = np.meshgrid(np.arange(6), np.arange(5), indexing="ij")
    ref = np.stack([(p * jj).sum((-2, -1)), (p * ii).sum((-2, -1))], -1)
    assert_close(soft_argmax(logits, beta=2.0), ref)
    delta = np.full((6, 5), -1e9, np.float32)
    delta[4, 1] = 0.0
    assert soft_argmax(delta).tolist() == [1.0, 4.0]


def test_bad_input_names_the_argument():
    other_k = np.zeros((B, K + 1, 2), np.float32)
    with pytest.raises(ValueError, match=r"target must have shape \[B, K, 2\] = \(3, 5, 2\)"):
        rle_loss(MU, SIGMA, other_k, WEIGHT, flow_log_prob)
    with pytest.raises(ValueError, match="sigma must have shape"):
        rle_loss(MU, SIGMA[:, :2], TARGET, WEIGHT, flow_log_prob)
    with pytest.raises(ValueError, match="sigma must be finite and > 0"):
        rle_loss(MU, -SIGMA, TARGET, WEIGHT, flow_log_prob)
    with pytest.raises(ValueError, match="sigma must be finite and > 0"):
        rle_loss(MU, np.zeros_like(SIGMA), TARGET, WEIGHT, flow_log_prob)
    with pytest.raises(ValueError, match=r"weight must have shape \[B, K\] = \(3, 5\)"):
        rle_loss(MU, SIGMA, TARGET, WEIGHT[:, :3], flow_log_prob)
    with pytest.raises(ValueError, match="weight must be finite and >= 0"):
        l1_loss(MU, TARGET, -WEIGHT)
    with pytest.raises(ValueError, match="target must have shape"):
        l2_loss(MU, other_k, WEIGHT)
    with pytest.raises(ValueError, match="q must be one of"):
        rle_loss(MU, SIGMA, TARGET, WEIGHT, flow_log_prob, q="cauchy")
    with pytest.raises(ValueError, match="flow_log_prob must map"):
        rle_loss(MU, SIGMA, TARGET, WEIGHT, lambda e: e)
    with pytest.raises(ValueError, match="weight must have shape"):
        heatmap_mse(np.zeros((1, 2, 3, 3)), np.zeros((1, 2, 3, 3)), np.ones((1, 3)))
    with pytest.raises(ValueError, match="target must have shape"):
        heatmap_mse(np.zeros((1, 2, 3, 3)), np.zeros((1, 2, 3, 4)), np.ones((1, 2)))
    with pytest.raises(ValueError, match="heatmaps must have shape"):
        argmax_decode(jnp.zeros(4))
    with pytest.raises(ValueError, match="beta must be"):
        soft_argmax(jnp.zeros((3, 3)), beta=0.0)
    with pytest.raises(ValueError, match="centers must have shape"):
        gaussian_heatmaps(jnp.zeros((2, 3)), 4, 4, 1.0)


def test_bad_traced_values_give_nan():
    loss = jax.jit(lambda s: rle_loss(MU, s, TARGET, WEIGHT, flow_log_prob))(-SIGMA)
    assert np.isnan(float(loss))
    assert np.isnan(float(jax.jit(lambda w: l1_loss(MU, TARGET, w))(-WEIGHT)))
