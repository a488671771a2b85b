"""Margin heads against their formulas written in numpy (insightface's definitions), and
the shared suite every registered head gets."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.tolerances import F64, assert_close
from vision.face.margins import (
    MARGINS,
    margin_logits,
    margin_loss,
    register_margin,
    sphereface_lambda,
)

B, C, D = 12, 9, 3


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(B, D)) * rng.uniform(0.5, 3.0, size=(B, 1))
    w = rng.normal(size=(C, D))
    y = rng.integers(0, C, size=B)
    # rows whose target is nearly opposite: θ + m > π (ArcFace's fallback region)
    x[:3] = -w[y[:3]] + 0.05 * rng.normal(size=(3, D))
    return x, w, y


def _np_cos(x, w):
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    wn = w / np.linalg.norm(w, axis=1, keepdims=True)
    return np.clip(xn @ wn.T, -1.0, 1.0)


def _replace_target(base, y, target):
    out = base.copy()
    rows = np.arange(len(y))
    out[rows, y] = target[rows, y]
    return out


def ref_softmax(x, w, y):
    return x @ w.T


def ref_normface(x, w, y, s=64.0):
    return s * _np_cos(x, w)


def ref_cosface(x, w, y, s=64.0, m=0.35):
    cos = _np_cos(x, w)
    return s * _replace_target(cos, y, cos - m)


def ref_arcface(x, w, y, s=64.0, m=0.5, easy_margin=False):
    cos = _np_cos(x, w)
    theta = np.arccos(cos)
    phi = np.cos(theta + m)
    if easy_margin:
        phi = np.where(cos > 0, phi, cos)
    else:   # insightface: th = cos(π − m), mm = sin(π − m)·m
        phi = np.where(cos > np.cos(np.pi - m), phi, cos - np.sin(np.pi - m) * m)
    return s * _replace_target(cos, y, phi)


def ref_combined(x, w, y, s=64.0, m1=1.0, m2=0.3, m3=0.2):
    cos = _np_cos(x, w)
    return s * _replace_target(cos, y, np.cos(m1 * np.arccos(cos) + m2) - m3)


def ref_sphereface(x, w, y, m=4, lam=5.0):
    cos = _np_cos(x, w)
    theta = np.arccos(cos)
    psi = np.empty_like(theta)
    for idx, t in np.ndenumerate(theta):    # ψ(θ) = (−1)^k cos(mθ) − 2k on [kπ/m, (k+1)π/m]
        k = min(int(t // (np.pi / m)), m - 1)
        psi[idx] = (-1) ** k * np.cos(m * t) - 2 * k
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return norm * _replace_target(cos, y, (lam * cos + psi) / (1 + lam))


CASES = [
    ("softmax", {}, ref_softmax, {}),
    ("normface", {}, ref_normface, {}),
    ("cosface", {"s": 30.0, "m": 0.2}, ref_cosface, {"s": 30.0, "m": 0.2}),
    ("arcface", {}, ref_arcface, {}),
    ("arcface", {"easy_margin": True}, ref_arcface, {"easy_margin": True}),
    ("combined", {}, ref_combined, {}),
    ("combined", {"m1": 1.35, "m2": 0.0, "m3": 0.0}, ref_combined,
     {"m1": 1.35, "m2": 0.0, "m3": 0.0}),
    ("sphereface", {}, ref_sphereface, {"lam": 5.0}),
    ("sphereface", {"m": 2, "lam": 0.0}, ref_sphereface, {"m": 2, "lam": 0.0}),
    ("sphereface", {"step": 100}, ref_sphereface,
     {"lam": max(5.0, 1000.0 / (1 + 0.12 * 100))}),
]


@pytest.mark.parametrize("name, params, ref, ref_params", CASES)
def test_head_equals_numpy_formula(x64, problem, name, params, ref, ref_params):
    x, w, y = problem
    got = margin_logits(name, x, w, y, **params)
    assert got.shape == (B, C)
    assert_close(got, ref(x, w, y, **ref_params), dict(rtol=1e-7, atol=1e-7))


def test_published_special_cases(x64, problem):
    """ArcFace paper eq. 4: (1, 0, m3) is CosFace; (1, m2, 0) is ArcFace where θ + m2 ≤ π."""
    x, w, y = problem
    assert_close(margin_logits("combined", x, w, y, m1=1.0, m2=0.0, m3=0.35),
                 margin_logits("cosface", x, w, y), F64)
    arc = np.asarray(margin_logits("arcface", x, w, y))
    comb = np.asarray(margin_logits("combined", x, w, y, m1=1.0, m2=0.5, m3=0.0))
    assert_close(arc[3:], comb[3:], F64)          # rows 0-2 are in the fallback region
    assert not np.allclose(arc[:3], comb[:3])
    # a margin lowers exactly the target logit
    norm = np.asarray(margin_logits("normface", x, w, y))
    diff = norm - arc
    assert np.all(diff[np.arange(B), y] > 0)
    diff[np.arange(B), y] = 0.0
    assert_close(diff, 0.0, F64)
    # the original SphereFace annealing schedule
    assert float(sphereface_lambda(0)) == 1000.0
    assert float(sphereface_lambda(10**6)) == 5.0
    assert_close(sphereface_lambda(10), 1000.0 / 2.2, dict(rtol=1e-6, atol=0))


def test_margin_loss_is_softmax_cross_entropy(problem):
    x, w, y = (np.asarray(a, np.float32) if a.dtype.kind == "f" else a for a in problem)
    for name in ("arcface",):
        logits = np.asarray(margin_logits(name, x, w, y), np.float64)
        shifted = logits - logits.max(1, keepdims=True)
        ce = np.log(np.exp(shifted).sum(1)) - shifted[np.arange(B), y]
        assert_close(margin_loss(name, x, w, y), ce.mean(), dict(rtol=1e-5, atol=1e-5))


def test_arcface_gradient_matches_finite_differences(x64, problem):
    x, w, y = problem
    x = x[3:]        # away from the non-differentiable switch of the fallback
    y = y[3:]
    loss = jax.jit(lambda x: margin_loss("arcface", x, w, y, s=8.0))
    grad = np.asarray(jax.grad(loss)(jnp.asarray(x)))
    eps, fd = 1e-6, np.zeros_like(x)
    for idx in [(0, 0), (2, 1), (5, 2), (8, 0)]:
        step = np.zeros_like(x)
        step[idx] = eps
        fd[idx] = (loss(x + step) - loss(x - step)) / (2 * eps)
        assert_close(grad[idx], fd[idx], dict(rtol=1e-5, atol=1e-8))


# ---------------------------------------------------------------- the shared suite


@pytest.mark.parametrize("name", MARGINS.names())
def test_registered_head_finite_at_theta_zero_and_pi(name):
    """θ = 0 (embedding on its centre) and θ = π (opposite): finite values and grads."""
    w = jnp.asarray(np.random.default_rng(1).normal(size=(4, 5)), jnp.float32)
    x = jnp.stack([w[0], -w[1], 2.0 * w[2], -w[3]])
    y = jnp.arange(4)

    def loss(x, w):
        return margin_loss(name, x, w, y)

    value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(x, w)
    assert np.isfinite(float(value))
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g)))


@pytest.mark.parametrize("name", MARGINS.names())
def test_registered_head_is_column_separable(name, problem):
    """The Partial FC contract: logits over a subset of centres are those columns, and a
    label of −1 means no target among the centres."""
    x, w, y = (np.asarray(a, np.float32) if a.dtype.kind == "f" else a for a in problem)
    head = MARGINS.get(name)
    keep = np.array([0, 2, 3, 5, 8])
    position = {c: i for i, c in enumerate(keep)}
    sub_labels = np.array([position.get(int(c), -1) for c in y])
    full, sub = jax.jit(lambda x, w, y, ys: (head(x, w, y), head(x, w[keep], ys)))(
        x, w, y, sub_labels)
    full, sub = np.asarray(full), np.asarray(sub)
    assert_close(sub, full[:, keep], dict(rtol=1e-5, atol=1e-4))


@pytest.mark.parametrize("name", MARGINS.names())
def test_registered_head_bad_input(name):
    x, w, y = jnp.ones((2, 3)), jnp.ones((4, 3)), jnp.array([0, 1])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        margin_logits(name, x, w, jnp.array([0, 4]))
    with pytest.raises(ValueError, match=r"embeddings must have shape \[B, D\]"):
        margin_logits(name, jnp.ones((2, 3, 1)), w, y)
    with pytest.raises(ValueError, match="embeddings must be finite"):
        margin_logits(name, x.at[1, 0].set(jnp.nan), w, y)
    with pytest.raises(ValueError, match=r"centers must have shape \[C, D\] with D = 3"):
        margin_logits(name, x, jnp.ones((4, 2)), y)
    with pytest.raises(ValueError, match=r"labels must have shape \[B\] = \(2\)"):
        margin_logits(name, x, w, jnp.array([0, 1, 2]))


def test_traced_bad_values_poison_rows():
    x, w = jnp.ones((3, 2)), jnp.eye(2)
    f = jax.jit(lambda x, y: margin_logits("arcface", x, w, y))
    out = np.asarray(f(x.at[2, 1].set(jnp.inf), jnp.array([0, 5, 1])))
    assert np.all(np.isfinite(out[0]))
    assert np.all(np.isnan(out[1:]))                     # label 5 out of range; inf embedding
    assert np.isnan(float(jax.jit(lambda y: margin_loss("cosface", x, w, y))(
        jnp.array([0, 1, -1]))))


def test_unknown_head_and_registration():
    with pytest.raises(KeyError, match="unknown margin head 'arcfase'; valid names: arcface"):
        margin_logits("arcfase", jnp.ones((1, 2)), jnp.ones((2, 2)), jnp.array([0]))

    @register_margin("test_scaled_cos")
    def scaled(embeddings, centers, labels, *, s=2.0):
        return s * (embeddings @ centers.T)

    try:
        out = margin_logits("test_scaled_cos", jnp.ones((1, 2)), jnp.ones((3, 2)), jnp.array([1]))
        assert_close(out, np.full((1, 3), 4.0))
    finally:
        MARGINS.unregister("test_scaled_cos")
    assert math.isclose(float(margin_logits("normface", jnp.array([[1.0, 0.0]]),
                                            jnp.array([[1.0, 0.0]]), jnp.array([0]))[0, 0]), 64.0)
