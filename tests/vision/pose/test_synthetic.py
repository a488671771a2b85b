"""Synthetic people: COCO annotations, visibility flags and top-down crops."""

import jax.numpy as jnp
import numpy as np
import pytest

from tests.tolerances import assert_close
from vision.pose.synthetic import crop_to_image, image_to_crop, render_people, top_down_crops


@pytest.fixture(scope="module")
def data():
    return render_people(40, image_size=64, seed=3, truncation=0.5)


def test_annotations_are_coco_consistent(data):
    assert data.images.shape == (40, 64, 64, 3) and data.images.dtype == np.uint8
    vis = data.keypoints[..., 2]
    assert set(np.unique(vis)) == {0.0, 1.0, 2.0}            # all three flags occur
    assert np.all((vis > 0).sum(1) >= 5)
    xy = data.keypoints[..., :2]
    inside = np.all((xy > -0.5) & (xy < 63.5), -1)
    assert np.array_equal(vis > 0, inside)                   # v = 0 exactly off-image
    x, y, w, h = data.boxes.T
    assert np.all(data.areas <= w * h) and np.all(data.areas > 0)
    assert np.all(x >= -0.5) and np.all(x + w <= 63.5) and np.all(y + h <= 63.5)
    # visible keypoints lie on the figure, so inside its box (1 px of slack for rounding)
    lab = vis == 2
    px, py = xy[..., 0], xy[..., 1]
    assert np.all(((px >= x[:, None] - 1) & (px <= (x + w)[:, None] + 1))[lab])
    assert np.all(((py >= y[:, None] - 1) & (py <= (y + h)[:, None] + 1))[lab])


def test_same_seed_same_data():
    a, b = render_people(3, image_size=48, seed=7), render_people(3, image_size=48, seed=7)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.keypoints, b.keypoints)


def test_crops_equal_slicing_when_the_scale_is_one():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 40, 40, 3)).astype(np.uint8)
    # boxes on pixel edges (pixel centres are integers): [9.5, 25.5] covers pixels 10..25
    boxes = np.array([[9.5, 5.5, 16.0, 12.0], [2.5, 19.5, 8.0, 16.0]])
    crops, t = top_down_crops(images, boxes, 16, padding=1.0)
    # squares of side max(w, h) = 16 centred on the boxes
    assert t.tolist() == [[9.5, 3.5, 1.0], [-1.5, 19.5, 1.0]]
    # crop pixel j is centred on image pixel x0 + (j + 0.5) · 1 = 10 + j (first crop)
    assert_close(crops[0], images[0, 4:20, 10:26] / 255.0, dict(rtol=0, atol=1e-5))
    assert_close(crops[1, :, 1:], images[1, 20:36, 0:15] / 255.0, dict(rtol=0, atol=1e-5))


def test_crop_coordinates_round_trip(data):
    _, t = top_down_crops(data.images[:5], data.boxes[:5], 32)
    xy = jnp.asarray(data.keypoints[:5, :, :2])
    c = image_to_crop(xy, t)
    assert_close(crop_to_image(c, t), xy, dict(rtol=0, atol=1e-4))
    # the box fits in the padded crop: its labelled keypoints land inside [−0.5, 31.5]
    lab = data.keypoints[:5, :, 2] == 2
    assert np.all((np.asarray(c)[lab] > -1.0) & (np.asarray(c)[lab] < 32.0))


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="num must be an integer"):
        render_people(-1)
    with pytest.raises(ValueError, match="min_height"):
        render_people(1, min_height=0.9, max_height=0.5)
    with pytest.raises(ValueError, match=r"boxes must have shape \[N, 4\] = \(1, 4\)"):
        top_down_crops(np.zeros((1, 8, 8, 3)), np.zeros((2, 4)), 4)
    with pytest.raises(ValueError, match="images must have shape"):
        top_down_crops(np.zeros((1, 8, 8)), np.zeros((1, 4)), 4)
    with pytest.raises(ValueError, match="padding must be > 0"):
        top_down_crops(np.zeros((1, 8, 8, 3)), np.zeros((1, 4)), 4, padding=0.0)
