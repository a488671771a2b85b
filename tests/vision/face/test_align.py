"""Five-point alignment against scikit-image (SimilarityTransform, warp order=1, cval=0)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage.transform import SimilarityTransform, warp

from tests.tolerances import F64, assert_close
from vision.face.align import (
    ARCFACE_TEMPLATE,
    estimate_norm,
    landmarks_ok,
    norm_crop,
    umeyama,
    warp_affine,
)


def _skimage_similarity(src, dst):
    return SimilarityTransform.from_estimate(np.asarray(src, np.float64),
                                             np.asarray(dst, np.float64)).params


def _face_landmarks(rng, n=1):
    """Template landmarks rotated, scaled, shifted and jittered (a face in an image)."""
    out = []
    for _ in range(n):
        angle = rng.uniform(-0.6, 0.6)
        scale = rng.uniform(0.5, 1.3)
        rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        pts = (ARCFACE_TEMPLATE - 56.0) @ rot.T + rng.uniform(35, 65, size=2)
        out.append(pts + rng.normal(scale=1.5, size=(5, 2)))
    return np.stack(out)


@pytest.mark.parametrize("n", [2, 7])
def test_umeyama_equals_skimage(x64, n):
    rng = np.random.default_rng(n)
    src = rng.normal(size=(n, 2)) * 30 + 50
    dst = rng.normal(size=(n, 2)) * 10 - 3
    assert_close(umeyama(src, dst), _skimage_similarity(src, dst), F64)
    mirrored = src * np.array([-1.0, 1.0])      # a reflection: the best proper similarity
    assert_close(umeyama(src, mirrored), _skimage_similarity(src, mirrored), F64)
    # exact when dst is a similarity image of src
    true = np.array([[0.0, -2.0, 1.0], [2.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    dst_exact = src @ true[:2, :2].T + true[:2, 2]
    assert_close(umeyama(src, dst_exact), true, dict(rtol=1e-9, atol=1e-9))


def test_umeyama_gradient_matches_finite_differences(x64):
    rng = np.random.default_rng(3)
    src, dst = rng.normal(size=(5, 2)), rng.normal(size=(5, 2))
    weights = rng.normal(size=(3, 3))

    @jax.jit
    def f(s):
        return jnp.sum(umeyama(s, dst) * weights)

    grad = np.asarray(jax.grad(f)(jnp.asarray(src)))
    eps = 1e-6
    fd = np.zeros_like(src)
    for idx in np.ndindex(*src.shape):
        step = np.zeros_like(src)
        step[idx] = eps
        fd[idx] = (f(src + step) - f(src - step)) / (2 * eps)
    assert_close(grad, fd, dict(rtol=1e-6, atol=1e-8))


@pytest.mark.parametrize("size", [112, 128])
def test_norm_crop_equals_skimage_warp(x64, size):
    rng = np.random.default_rng(size)
    image = rng.uniform(size=(100, 90, 3))
    landmarks = _face_landmarks(rng)[0]
    # insightface's template for this size, estimated by scikit-image
    ratio, shift = (size / 112, 0.0) if size % 112 == 0 else (size / 128, 8 * size / 128)
    dst = ARCFACE_TEMPLATE.astype(np.float64) * ratio + np.array([shift, 0.0])
    params = _skimage_similarity(landmarks, dst)
    assert_close(estimate_norm(landmarks, size), params, dict(rtol=1e-9, atol=1e-9))
    ref = warp(image, np.linalg.inv(params), output_shape=(size, size), order=1,
               mode="constant", cval=0.0, preserve_range=True)
    crop = norm_crop(image, landmarks, size)
    assert crop.shape == (size, size, 3)
    assert_close(crop, ref, dict(rtol=1e-9, atol=1e-9))
    assert np.mean(ref == 0) > 0.01            # the zero border is exercised


def test_norm_crop_vmap_jit_float32_and_identity():
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(3, 80, 96, 2)).astype(np.float32)
    landmarks = _face_landmarks(rng, 3).astype(np.float32)
    batched = jax.jit(jax.vmap(norm_crop))(images, landmarks)
    for i in range(3):
        params = _skimage_similarity(landmarks[i], ARCFACE_TEMPLATE)
        ref = warp(images[i].astype(np.float64), np.linalg.inv(params), output_shape=(112, 112),
                   order=1, mode="constant", cval=0.0, preserve_range=True)
        assert_close(batched[i], ref, dict(rtol=1e-3, atol=2e-4))
    # landmarks already on the template: the crop is the image itself (zero beyond it)
    crop = np.asarray(norm_crop(images[0], ARCFACE_TEMPLATE))
    assert_close(crop[:80, :96], images[0], dict(rtol=1e-3, atol=1e-4))
    assert np.all(crop[81:] == 0) and np.all(crop[:, 97:] == 0)
    # integer images are accepted and converted
    assert norm_crop((255 * images[0]).astype(np.uint8), landmarks[0]).dtype == jnp.float32


def test_warp_affine_pure_translation_is_a_shift():
    image = np.arange(4 * 5 * 1, dtype=np.float32).reshape(4, 5, 1)
    shifted = warp_affine(image, np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]), (4, 5))
    np.testing.assert_array_equal(np.asarray(shifted[:, 1:]), image[:, :-1])
    np.testing.assert_array_equal(np.asarray(shifted[:, 0]), 0.0)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((4, 2)), r"landmarks must have shape \[5, 2\]"),
    (np.zeros((5, 3)), r"landmarks must have shape \[5, 2\]"),
    (np.ones((5, 2)), "landmarks must be finite, not all coincident and not collinear"),
    (np.stack([np.arange(5.0), 2 * np.arange(5.0) + 1], 1), "not collinear"),
    (np.where(np.eye(5, 2) > 0, np.nan, ARCFACE_TEMPLATE), "landmarks must be finite"),
])
def test_bad_landmarks_raise_eagerly(bad, message):
    with pytest.raises(ValueError, match=message):
        norm_crop(np.zeros((64, 64, 3), np.float32), bad)
    with pytest.raises(ValueError, match=message):
        estimate_norm(bad)


def test_bad_arguments_named():
    with pytest.raises(ValueError, match=r"image must have shape \[H, W, C\]"):
        norm_crop(np.zeros((64, 64), np.float32), ARCFACE_TEMPLATE)
    with pytest.raises(ValueError, match="src must be finite and not all coincident"):
        umeyama(np.ones((3, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="src and dst must hold the same number"):
        umeyama(np.zeros((3, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"dst must have shape \[N, 2\]"):
        umeyama(np.zeros((3, 2)), np.zeros((3,)))
    with pytest.raises(ValueError, match="size must be an integer >= 1"):
        norm_crop(np.zeros((64, 64, 3)), ARCFACE_TEMPLATE, size=0)
    # umeyama accepts collinear points (two points are always collinear) ...
    assert np.all(np.isfinite(np.asarray(umeyama(np.array([[0., 0.], [1., 1.], [2., 2.]]),
                                                 np.zeros((3, 2))))))
    # ... alignment does not
    assert not bool(landmarks_ok(jnp.array([[0., 0.], [1., 1.], [2., 2.]])))


def test_traced_degenerate_landmarks_give_nan_crops_only_for_that_face():
    rng = np.random.default_rng(1)
    images = rng.uniform(size=(2, 64, 64, 3)).astype(np.float32)
    landmarks = np.stack([_face_landmarks(rng)[0] * 0.5, np.ones((5, 2))]).astype(np.float32)
    crops = jax.jit(jax.vmap(lambda i, lm: norm_crop(i, lm, 32)))(images, landmarks)
    assert np.all(np.isfinite(np.asarray(crops[0])))
    assert np.all(np.isnan(np.asarray(crops[1])))
    matrix = jax.jit(umeyama)(jnp.ones((3, 2)), jnp.zeros((3, 2)))
    assert np.all(np.isnan(np.asarray(matrix)))
