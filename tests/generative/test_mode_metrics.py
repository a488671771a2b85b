"""Mode-structure and image-sample checks of generative.metrics, against numpy/scipy
references, exact samples of the true distribution (where they must be near perfect)
and collapsed sample sets (a ring, a diagonal cross, dropped modes, speckle)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.distance import cdist
from scipy.stats import chi2

from generative.data import checkerboard_log_prob, eight_gaussians, sample_toy
from generative.metrics import (
    checkerboard_fraction,
    gaussian_within_prob,
    image_roughness,
    mode_stats,
    nearest_neighbour_distance,
)
from tests.tolerances import F64, assert_close

MIX = eight_gaussians()
MEANS = np.asarray(MIX.means)
TAU = MIX.std
P3 = 1.0 - math.exp(-4.5)  # P(‖z‖ <= 3) in 2-D
P2 = 1.0 - math.exp(-2.0)


def _mode_stats_numpy(x, means, radius, expected, min_share):
    d = np.linalg.norm(x[:, None, :] - means[None], axis=-1)  # [N, K]
    nearest = d.argmin(1)
    inside = d.min(1) <= radius
    weights = np.array([np.mean((nearest == k) & inside) for k in range(len(means))])
    return weights.sum(), weights, int(np.sum(weights >= min_share * expected))


@pytest.mark.parametrize("jit", [False, True])
def test_mode_stats_matches_numpy(x64, jit):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3)) * 2.0
    means = rng.normal(size=(5, 3)) * 2.0
    expected = rng.dirichlet(np.ones(5)) * 0.5
    fn = jax.jit(mode_stats, static_argnames=("min_share",)) if jit else mode_stats
    stats = fn(jnp.asarray(x), jnp.asarray(means), 1.3, expected=jnp.asarray(expected),
               min_share=0.4)
    in_modes, weights, covered = _mode_stats_numpy(x, means, 1.3, expected, 0.4)
    assert_close(stats.in_modes, in_modes, F64)
    assert_close(stats.weights, weights, F64)
    assert int(stats.covered) == covered
    assert 0 < covered < 5  # the comparison saw both outcomes


def test_mode_stats_exact_samples_find_every_mode():
    x = MIX.sample(jax.random.key(0), 8000)
    expected = jnp.full((8,), P3 / 8)
    three = mode_stats(x, jnp.asarray(MEANS, jnp.float32), 3 * TAU, expected=expected)
    two = mode_stats(x, jnp.asarray(MEANS, jnp.float32), 2 * TAU)
    assert abs(float(three.in_modes) - P3) < 0.005
    assert abs(float(two.in_modes) - P2) < 0.015
    assert int(three.covered) == 8
    np.testing.assert_allclose(np.asarray(three.weights) / (P3 / 8), 1.0, atol=0.12)
    assert_close(gaussian_within_prob(3.0, 2), P3, dict(rtol=1e-6, atol=0.0))


def test_mode_stats_ring_and_dropped_modes_score_poorly():
    key_r, key_a, key_c = jax.random.split(jax.random.key(1), 3)
    # a ring through the modes, as blurred radially as the modes: what an
    # undertrained score model drew, and what MMD² could not tell from the data
    angle = jax.random.uniform(key_a, (8000,), maxval=2 * math.pi)
    radius = 2 * math.sqrt(2) + TAU * jax.random.normal(key_r, (8000,))
    ring = jnp.stack([radius * jnp.cos(angle), radius * jnp.sin(angle)], axis=-1)
    means = jnp.asarray(MEANS, jnp.float32)
    two = mode_stats(ring, means, 2 * TAU)
    three = mode_stats(ring, means, 3 * TAU)
    assert float(two.in_modes) < P2 - 0.25  # 0.54 against 0.86
    assert float(three.in_modes) < P3 - 0.05  # 0.90 against 0.99
    # collapse onto three modes: the others are not covered
    kept = MIX.sample(key_c, 8000)
    kept = kept[jnp.argmin(jnp.sum((kept[:, None] - means[None]) ** 2, -1), 1) < 3]
    stats = mode_stats(kept, means, 3 * TAU, expected=jnp.full((8,), P3 / 8))
    assert int(stats.covered) == 3
    assert float(stats.in_modes) > 0.95  # every sample is still inside a mode


def test_mode_stats_min_share_and_single_point():
    means = jnp.asarray([[0.0, 0.0], [10.0, 0.0]])
    x = jnp.asarray([[0.1, 0.0], [0.0, 0.2], [10.0, 0.3], [5.0, 5.0]])
    stats = mode_stats(x, means, 1.0)  # shares 1/2, 1/4 of the 1/2 expected
    assert_close(stats.weights, [0.5, 0.25])
    assert int(stats.covered) == 2
    assert int(mode_stats(x, means, 1.0, min_share=0.6).covered) == 1
    one = mode_stats(jnp.asarray([[10.0, 0.0]]), means, 0.5)
    assert float(one.in_modes) == 1.0 and int(one.covered) == 1


def test_gaussian_within_prob_matches_chi2():
    for k in (0.0, 0.5, 2.0, 3.0):
        for d in (1, 2, 5):
            assert_close(gaussian_within_prob(k, d), chi2.cdf(k * k, d),
                         dict(rtol=1e-5, atol=1e-6))


@pytest.mark.parametrize("jit", [False, True])
def test_checkerboard_fraction_matches_log_prob(jit):
    x = jax.random.uniform(jax.random.key(2), (5000, 2), minval=-5.0, maxval=5.0)
    fn = jax.jit(checkerboard_fraction) if jit else checkerboard_fraction
    reference = np.mean(np.isfinite(np.asarray(checkerboard_log_prob(x))))
    assert_close(fn(x), reference)
    # numpy: cells floor((x + 4) / 2), on the board, even sum
    xn = np.asarray(x)
    cells = np.floor((xn + 4.0) / 2.0)
    on = np.all((xn >= -4) & (xn < 4), 1) & (cells.sum(1) % 2 == 0)
    assert_close(fn(x), on.mean())


def test_checkerboard_fraction_exact_samples_and_collapsed_cross():
    exact = sample_toy("checkerboard", jax.random.key(3), 4000)
    assert float(checkerboard_fraction(exact)) == 1.0
    # the diagonal "X" an undertrained model draws: y = x runs through data squares,
    # y = −x through empty ones, so half the cross is off the data
    s = jax.random.uniform(jax.random.key(4), (4000,), minval=-3.99, maxval=3.99)
    cross = jnp.concatenate([jnp.stack([s, s], -1), jnp.stack([s, -s], -1)])
    assert abs(float(checkerboard_fraction(cross)) - 0.5) < 0.01
    board = jax.random.uniform(jax.random.key(5), (4000, 2), minval=-4.0, maxval=4.0)
    assert abs(float(checkerboard_fraction(board)) - 0.5) < 0.03
    blurred = exact + 0.5 * jax.random.normal(jax.random.key(6), exact.shape)
    assert float(checkerboard_fraction(blurred)) < 0.85
    # a 2 x 2 board with cells of side 1 (the arguments, not the toy's defaults)
    pts = jnp.asarray([[0.5, 0.5], [1.5, 0.5], [1.5, 1.5], [2.5, 0.5]])
    assert float(checkerboard_fraction(pts, low=0.0, high=2.0, cells=2)) == 0.5


@pytest.mark.parametrize("block_size", [1, 3, 7, 100])
def test_nearest_neighbour_distance_matches_scipy(block_size):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(6, 4, 4, 1)).astype(np.float32)
    ref = rng.normal(size=(7, 4, 4, 1)).astype(np.float32)
    got = jax.jit(nearest_neighbour_distance, static_argnames=("block_size",))(
        jnp.asarray(x), jnp.asarray(ref), block_size=block_size)
    want = cdist(x.reshape(6, -1), ref.reshape(7, -1)).min(1)
    assert_close(got, want, dict(rtol=1e-4, atol=1e-4))
    assert nearest_neighbour_distance(jnp.zeros((0, 4, 4, 1)), jnp.asarray(ref)).shape == (0,)
    # a point of the reference set is at distance 0
    assert float(nearest_neighbour_distance(jnp.asarray(ref[2:3]), jnp.asarray(ref))[0]) < 1e-3


def test_image_roughness_matches_numpy_and_sees_speckle():
    rng = np.random.default_rng(4)
    images = rng.uniform(size=(3, 5, 6, 2))
    want = (np.abs(np.diff(images, axis=1)).mean((1, 2, 3))
            + np.abs(np.diff(images, axis=2)).mean((1, 2, 3)))
    assert_close(image_roughness(jnp.asarray(images, jnp.float32)), want)
    # four lit pixels as one 2 x 2 block (8 unit steps) or scattered (16 unit steps),
    # each direction having 7 x 8 neighbour pairs
    block = np.zeros((1, 8, 8, 1))
    block[0, 3:5, 3:5] = 1.0
    speckled = np.zeros((1, 8, 8, 1))
    speckled[0, 1:7:4, 1:7:4] = 1.0
    rough = np.asarray(image_roughness(jnp.asarray(np.concatenate([block, speckled]))))
    assert_close(rough, [8 / 56, 16 / 56])
    assert float(image_roughness(jnp.zeros((1, 2, 2, 1)))[0]) == 0.0


def test_mode_metrics_bad_inputs():
    means = jnp.zeros((3, 2))
    with pytest.raises(ValueError, match="same D"):
        mode_stats(jnp.zeros((4, 3)), means, 1.0)
    with pytest.raises(ValueError, match="at least one row"):
        mode_stats(jnp.zeros((0, 2)), means, 1.0)
    with pytest.raises(ValueError, match="radius must be finite and > 0"):
        mode_stats(jnp.zeros((4, 2)), means, 0.0)
    with pytest.raises(ValueError, match=r"expected must have shape \[K\]"):
        mode_stats(jnp.zeros((4, 2)), means, 1.0, expected=jnp.ones(2))
    with pytest.raises(ValueError, match="min_share must lie in"):
        mode_stats(jnp.zeros((4, 2)), means, 1.0, min_share=1.5)
    with pytest.raises(ValueError, match=r"x must have shape \[N, 2\]"):
        checkerboard_fraction(jnp.zeros((4, 3)))
    with pytest.raises(ValueError, match="high must be > low"):
        checkerboard_fraction(jnp.zeros((4, 2)), low=1.0, high=1.0)
    with pytest.raises(ValueError, match="dim must be >= 1"):
        gaussian_within_prob(1.0, 0)
    with pytest.raises(ValueError, match="same point dimension"):
        nearest_neighbour_distance(jnp.zeros((2, 3)), jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match="at least one point"):
        nearest_neighbour_distance(jnp.zeros((2, 3)), jnp.zeros((0, 3)))
    with pytest.raises(ValueError, match=r"images must have shape \[N, H, W, C\]"):
        image_roughness(jnp.zeros((2, 8, 8)))
