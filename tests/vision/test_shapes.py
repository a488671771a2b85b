"""The synthetic shapes set: determinism, box correctness, padding."""

import jax.numpy as jnp
import numpy as np
import pytest

from vision.shapes import generate_shapes, pixel_mask


def test_deterministic_and_well_formed():
    a = generate_shapes(20, seed=3)
    b = generate_shapes(20, seed=3)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    assert a.images.shape == (20, 64, 64, 3) and a.boxes.shape == (20, 6, 4)
    counts = a.box_mask.sum(1)
    assert counts.min() >= 1 and counts.max() <= 6
    assert np.all((a.sizes >= 48) & (a.sizes <= 64))
    real = a.boxes[a.box_mask]
    corners = np.concatenate([real[:, :2] - real[:, 2:] / 2, real[:, :2] + real[:, 2:] / 2], 1)
    assert np.all(corners >= -1e-6) and np.all(corners <= 1 + 1e-6)
    assert set(np.unique(a.labels[a.box_mask])) <= {0, 1, 2, 3}
    for n in range(20):
        h, w = a.sizes[n]
        assert not a.images[n, h:].any() and not a.images[n, :, w:].any()  # zero padding
    assert not np.array_equal(generate_shapes(2, seed=4).images, a.images[:2])


def test_boxes_are_tight_pixel_bounds():
    """With one shape per image, the box equals the bounds of the non-white pixels."""
    data = generate_shapes(40, max_objects=1, seed=7)
    for n in range(len(data)):
        h, w = data.sizes[n]
        fg = np.any(data.images[n, :h, :w] != 255, axis=-1)
        rows, cols = np.nonzero(fg)
        (x, y, bw, bh), = data.boxes_xywh(n)[0]
        np.testing.assert_allclose([x, y, x + bw, y + bh],
                                   [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1],
                                   atol=1e-4)


def test_pixel_mask_numpy_and_jax():
    sizes = np.array([[2, 3], [4, 1]])
    m = pixel_mask(sizes, 4)
    assert m.shape == (2, 4, 4) and m[0].sum() == 6 and m[1].sum() == 4
    np.testing.assert_array_equal(np.asarray(pixel_mask(jnp.asarray(sizes), 4)), m)


def test_bad_arguments():
    with pytest.raises(ValueError, match="min_image_size"):
        generate_shapes(1, image_size=32, min_image_size=40)
    with pytest.raises(ValueError, match="min_shape"):
        generate_shapes(1, min_shape=1)
