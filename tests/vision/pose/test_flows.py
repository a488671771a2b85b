"""Flows: invertibility, log-determinant against jax.jacfwd, normalisation, sampling.

Parametrised over ``FLOWS.names()``: a registered flow type gets these tests."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.tolerances import F32_LOOSE, assert_close
from vision.pose.flows import FLOWS, FlowConfig, RealNVP, make_flow, standard_normal_log_prob


def _flow(name):
    # a non-trivial flow: larger initial weights than the near-identity default
    return make_flow(FlowConfig(name=name, hidden=16, num_pairs=2, init_gain=1.0),
                     rngs=nnx.Rngs(3))


POINTS = jax.random.normal(jax.random.key(0), (6, 2)) * 1.5


@pytest.mark.parametrize("name", FLOWS.names())
def test_inverse_then_forward_is_identity(name):
    flow = _flow(name)
    z, _ = flow.inverse(POINTS)
    assert_close(flow.forward(z), POINTS, F32_LOOSE)
    x = flow.forward(POINTS)
    assert_close(flow.inverse(x)[0], POINTS, F32_LOOSE)


@pytest.mark.parametrize("name", FLOWS.names())
def test_log_det_matches_jacfwd(name):
    flow = _flow(name)
    _, log_det = flow.inverse(POINTS)
    for x, ld in zip(POINTS, log_det, strict=True):
        jac = jax.jacfwd(lambda p: flow.inverse(p)[0])(x)           # [2, 2]
        _, ref = np.linalg.slogdet(np.asarray(jac, np.float64))
        assert_close(ld, ref, F32_LOOSE)


@pytest.mark.parametrize("name", FLOWS.names())
def test_density_integrates_to_one_and_matches_change_of_variables(name):
    flow = _flow(name)
    grid = np.linspace(-9.0, 9.0, 301)
    xx, yy = np.meshgrid(grid, grid)
    pts = jnp.asarray(np.stack([xx, yy], -1), jnp.float32)
    logp = np.asarray(jax.jit(flow.log_prob)(pts), np.float64)
    mass = np.exp(logp).sum() * (grid[1] - grid[0]) ** 2
    assert abs(mass - 1.0) < 0.01, mass
    z, log_det = flow.inverse(POINTS)
    ref = -0.5 * np.sum(np.asarray(z) ** 2, -1) - np.log(2 * np.pi) + np.asarray(log_det)
    assert_close(flow.log_prob(POINTS), ref, F32_LOOSE)


@pytest.mark.parametrize("name", FLOWS.names())
def test_samples_follow_the_density(name):
    flow = _flow(name)
    samples = np.asarray(flow.sample(jax.random.key(1), (4000,)))
    assert samples.shape == (4000, 2) and np.all(np.isfinite(samples))
    # mean by quadrature of the density vs the sample mean
    grid = np.linspace(-9.0, 9.0, 241)
    xx, yy = np.meshgrid(grid, grid)
    pts = np.stack([xx, yy], -1)
    p = np.exp(np.asarray(flow.log_prob(jnp.asarray(pts, jnp.float32)), np.float64))
    p /= p.sum()
    mean = (p[..., None] * pts).sum((0, 1))
    np.testing.assert_allclose(samples.mean(0), mean, atol=0.1)


def test_default_realnvp_starts_near_the_standard_normal():
    flow = RealNVP(FlowConfig(), rngs=nnx.Rngs(0))
    assert len(flow.masks) == 6 and flow.masks[0] == (0.0, 1.0)
    assert_close(flow.log_prob(POINTS), standard_normal_log_prob(POINTS), dict(rtol=0, atol=0.05))


def test_bad_input_names_the_argument():
    flow = _flow("realnvp")
    with pytest.raises(ValueError, match=r"x must have shape \[\.\.\., 2\]"):
        flow.log_prob(jnp.zeros((4, 3)))
    with pytest.raises(ValueError, match="z must have shape"):
        flow.forward(jnp.zeros((4,)))
    with pytest.raises(KeyError, match="unknown flow 'glow'"):
        FlowConfig(name="glow").validate()
    with pytest.raises(ValueError, match="hidden"):
        FlowConfig(hidden=0).validate()


def test_a_flow_without_inverse_or_forward_is_refused_at_definition():
    from vision.pose.flows import _Flow

    with pytest.raises(TypeError, match="must define forward"):
        class OnlyInverse(_Flow):
            def inverse(self, x):
                return x, x[..., 0]
