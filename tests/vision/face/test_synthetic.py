"""Synthetic faces: landmarks on the drawn features, exact boxes, disjoint identities."""

import numpy as np
import pytest

from vision.face.synthetic import (
    LANDMARK_NAMES,
    TEST_ID_OFFSET,
    Nuisance,
    identity_range,
    identity_vectors,
    render_faces,
    render_scenes,
    sample_pairs,
)

# every geometric nuisance, but no photometric one, so colours are exact
GEOMETRIC = Nuisance(rotation=30.0, scale=0.1, shift=0.05, yaw=0.6, expression=1.0, light=0.0,
                     noise=0.0, occlusion=0.0)
PUPIL = np.array([15, 15, 20])


@pytest.fixture(scope="module")
def big_faces():
    return render_faces(np.arange(12), size=160, seed=3, nuisance=GEOMETRIC, face_scale=0.4)


def _pixel(image, xy):
    return image[round(xy[1]), round(xy[0])]


def test_eye_landmarks_are_pupil_centres(big_faces):
    for img, lm in zip(big_faces.images, big_faces.landmarks, strict=True):
        for k in (0, 1):
            np.testing.assert_array_equal(_pixel(img, lm[k]), PUPIL)
        # ArcFace order: the left eye and left mouth corner have the smaller x in the
        # face's own frame (rotations up to 30° keep that order in the image)
        assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]
        assert lm[0, 1] < lm[2, 1] < lm[3, 1]  # eyes above the nose above the mouth


def test_nose_and_mouth_landmarks_lie_on_their_features(big_faces):
    from skimage.color import deltaE_cie76, rgb2lab

    for img, lm in zip(big_faces.images, big_faces.landmarks, strict=True):
        rr, cc = np.mgrid[:img.shape[0], :img.shape[1]]
        # nose tip: a darker ellipse around it; skin is the face's most common colour
        colours, counts = np.unique(img.reshape(-1, 3), axis=0, return_counts=True)
        ranked = colours[np.argsort(-counts)]
        skin = ranked[0] if not np.array_equal(ranked[0], img[0, 0]) else ranked[1]
        nose = _pixel(img, lm[2]).astype(float)
        assert np.all(nose <= 0.85 * skin + 1)
        # mouth corners: vertices of the lip polygon, so a lip-coloured pixel within 1.5 px
        centre = _pixel(img, 0.5 * (lm[3] + lm[4]))
        lab = rgb2lab(img / 255.0)
        lip_like = deltaE_cie76(lab, rgb2lab(centre[None, None] / 255.0)[0, 0]) < 1.0
        for k in (3, 4):
            d = np.hypot(rr - lm[k, 1], cc - lm[k, 0])
            assert d[lip_like].min() <= 1.5


def test_boxes_contain_the_face_and_are_tight():
    data = render_faces(np.arange(10), size=96, seed=5, nuisance=GEOMETRIC, face_scale=0.3)
    for img, box, lm in zip(data.images, data.boxes, data.landmarks, strict=True):
        background = img[0, 0]
        fg = np.any(img != background, axis=-1)
        ys, xs = np.nonzero(fg)
        x0, y0, x1, y1 = box
        assert xs.min() >= x0 and xs.max() <= x1 and ys.min() >= y0 and ys.max() <= y1
        assert xs.min() - x0 <= 1.5 and x1 - xs.max() <= 1.5
        assert ys.min() - y0 <= 1.5 and y1 - ys.max() <= 1.5
        assert np.all((lm >= box[:2]) & (lm <= box[2:]))


def test_identities_are_disjoint_and_deterministic():
    train, test = identity_range("train", 5000), identity_range("test", 5000)
    assert not set(train) & set(test) and test.min() == TEST_ID_OFFSET
    z = identity_vectors(np.array([3, 3, 4]))
    assert z.shape == (3, 18) and np.all((z >= 0) & (z <= 1))
    np.testing.assert_array_equal(z[0], z[1])
    assert not np.array_equal(z[0], z[2])
    a = render_faces([7, 8], size=48, seed=1)
    b = render_faces([7, 8], size=48, seed=1)
    c = render_faces([7, 8], size=48, seed=2)
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)
    # an identity's vector does not depend on the other ids in the call
    np.testing.assert_array_equal(identity_vectors([8])[0], identity_vectors([1, 8])[1])
    assert len(LANDMARK_NAMES) == 5


def test_scenes_boxes_inside_disjoint_and_hold_landmarks():
    s = render_scenes(20, size=64, max_faces=3, min_face=6.0, max_face=14.0, seed=2,
                      nuisance=GEOMETRIC)
    assert s.images.shape == (20, 64, 64, 3) and s.mask[:, 0].all()
    for n in range(len(s)):
        boxes = s.boxes[n, s.mask[n]]
        assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2:] <= 63)
        lm = s.landmarks[n, s.mask[n]]
        assert np.all((lm >= boxes[:, None, :2]) & (lm <= boxes[:, None, 2:]))
        for i in range(len(boxes)):
            for j in range(i):
                a, b = boxes[i], boxes[j]
                assert a[0] > b[2] or a[2] < b[0] or a[1] > b[3] or a[3] < b[1]
        xywh = s.boxes_xywh(n)
        np.testing.assert_allclose(xywh[:, 2:], boxes[:, 2:] - boxes[:, :2], rtol=1e-6)
    assert (s.mask.sum(1) > 1).any()
    assert np.all(s.labels[~s.mask] == -1) and np.all(s.labels[s.mask] >= 0)


def test_sample_pairs():
    labels = np.repeat(np.arange(10), 3)
    i, j, same = sample_pairs(labels, 41, seed=0)
    assert same.sum() == 20 and len(same) == 41
    assert np.all(same[:40:2]) and not np.any(same[1:40:2])
    np.testing.assert_array_equal(labels[i] == labels[j], same)
    assert np.all(i != j)


@pytest.mark.parametrize("call, name", [
    (lambda: render_faces([[1, 2]]), "identities"),
    (lambda: render_faces([-1]), "identities"),
    (lambda: render_faces([1], size=8), "size"),
    (lambda: render_faces([1], face_scale=0.9), "face_scale"),
    (lambda: render_faces([1], nuisance=Nuisance(rotation=-1.0)), "nuisance.rotation"),
    (lambda: identity_range("val", 3), "split"),
    (lambda: identity_range("train", -1), "count"),
    (lambda: render_scenes(2, size=32, min_face=20.0, max_face=30.0), "min_face"),
    (lambda: render_scenes(2, gray_prob=2.0), "gray_prob"),
    (lambda: sample_pairs(np.zeros(4, int), 4), "labels"),
])
def test_bad_input_names_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()
