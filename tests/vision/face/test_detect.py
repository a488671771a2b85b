"""Face detector: targets, loss and decoding on hand-made cases, NMS, NME, COCO AP."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common.nn.resnet import ResNetConfig
from vision.face.detect import (
    Detections,
    DetectorConfig,
    FaceDetector,
    coco_face_metrics,
    decode,
    detector_loss,
    encode_targets,
    landmark_nme,
    match_detections,
    nms,
)

CFG = DetectorConfig()  # stride 4


def _np_iou(a, b):
    x0, y0 = np.maximum(a[0], b[0]), np.maximum(a[1], b[1])
    x1, y1 = np.minimum(a[2], b[2]), np.minimum(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _greedy_nms(boxes, scores, thr, score_thr):
    """Textbook greedy NMS in plain numpy: pick the best, drop its overlaps, repeat."""
    left = [i for i in np.argsort(-scores, kind="stable") if scores[i] > score_thr]
    keep = []
    while left:
        i = left.pop(0)
        keep.append(int(i))
        left = [j for j in left if _np_iou(boxes[i], boxes[j]) <= thr]
    return keep


@pytest.mark.parametrize("seed, thr", [(0, 0.3), (2, 0.7)])
def test_nms_matches_brute_force_greedy(seed, thr):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 40, (40, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 20, (40, 2))], 1).astype(np.float32)
    scores = rng.uniform(0, 1, 40).astype(np.float32)
    ref = _greedy_nms(boxes, scores, thr, 0.2)
    for m in (3, 50):
        jitted = jax.jit(lambda b, s, m=m: nms(b, s, iou_threshold=thr, max_output=m,
                                               score_threshold=0.2))
        idx, ok = jitted(jnp.asarray(boxes), jnp.asarray(scores))
        assert np.asarray(idx)[np.asarray(ok)].tolist() == ref[:m]
        assert int(np.asarray(ok).sum()) == min(m, len(ref))
    if seed == 0:  # eager gives the same
        idx, ok = nms(jnp.asarray(boxes), jnp.asarray(scores), iou_threshold=thr,
                      max_output=50, score_threshold=0.2)
        assert np.asarray(idx)[np.asarray(ok)].tolist() == ref


def _one_face():
    boxes = jnp.array([[[8.0, 6.0, 24.0, 26.0], [0.0, 0.0, 0.0, 0.0]]])  # [1, 2, 4]
    lm = jnp.array([[[[12.0, 12.0], [20.0, 12.0], [16.0, 17.0], [13.0, 21.0], [19.0, 21.0]],
                     [[0.0, 0.0]] * 5]])
    mask = jnp.array([[True, False]])
    return boxes, lm, mask


def test_encode_targets_hand_made():
    boxes, lm, mask = _one_face()
    t = encode_targets(boxes, lm, mask, (8, 8), CFG)
    # centre (16, 16) → cell (4, 4), offset 0; w, h = 16, 20; σ = max(0.5, 0.1·√320/4)
    sigma = max(0.5, 0.1 * np.sqrt(16 * 20) / 4)
    yy, xx = np.mgrid[:8, :8]
    np.testing.assert_allclose(t["heatmap"][0], np.exp(-((xx - 4) ** 2 + (yy - 4) ** 2)
                                                        / (2 * sigma ** 2)), atol=1e-6)
    assert int(t["index"][0, 0]) == 4 * 8 + 4
    np.testing.assert_allclose(t["offset"][0, 0], [0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(t["size"][0, 0], np.log([16 / 4, 20 / 4]), rtol=1e-6)
    rel = (np.asarray(lm[0, 0]) - 16.0) / np.array([16.0, 20.0])
    np.testing.assert_allclose(t["landmarks"][0, 0], rel.reshape(-1), atol=1e-6)


def _outputs_from_targets(t, h=8, w=8, logit=12.0):
    """Perfect outputs: a heatmap peak at each centre, the targets stored there."""
    heat = jnp.full((1, h, w), -logit)
    out = {"heatmap": heat}
    idx = int(t["index"][0, 0])
    out["heatmap"] = heat.reshape(1, -1).at[0, idx].set(logit).reshape(1, h, w)
    for name, c in (("offset", 2), ("size", 2), ("landmarks", 10)):
        out[name] = jnp.zeros((1, h * w, c)).at[0, idx].set(t[name][0, 0]).reshape(1, h, w, c)
    return out


def test_loss_hand_made_and_decoding_recovers_the_face():
    boxes, lm, mask = _one_face()
    t = encode_targets(boxes, lm, mask, (8, 8), CFG)
    out = _outputs_from_targets(t)
    _loss, parts = detector_loss(out, t, mask, CFG)
    for k in ("loss_offset", "loss_size", "loss_landmarks"):
        assert float(parts[k]) == pytest.approx(0.0, abs=1e-6)
    # focal term against the formula in numpy
    logits, y = np.asarray(out["heatmap"], np.float64), np.asarray(t["heatmap"], np.float64)
    p = 1 / (1 + np.exp(-logits))
    ref = -np.sum(np.where(y == 1, (1 - p) ** 2 * np.log(p),
                           (1 - y) ** 4 * p ** 2 * np.log(1 - p)))
    assert float(parts["loss_heatmap"]) == pytest.approx(ref, rel=1e-4)
    # a 0.1 error in the offset costs 0.1 per coordinate (one face)
    shifted = dict(out, offset=out["offset"] + 0.1)
    _, parts2 = detector_loss(shifted, t, mask, CFG)
    assert float(parts2["loss_offset"]) == pytest.approx(0.2, rel=1e-5)
    # random logits: the focal term still equals the formula
    rnd = jax.random.normal(jax.random.key(0), (1, 8, 8)) * 3
    _, parts3 = detector_loss(dict(out, heatmap=rnd), t, mask, CFG)
    p = 1 / (1 + np.exp(-np.asarray(rnd, np.float64)))
    ref = -np.sum(np.where(y == 1, (1 - p) ** 2 * np.log(p),
                           (1 - y) ** 4 * p ** 2 * np.log(1 - p)))
    assert float(parts3["loss_heatmap"]) == pytest.approx(ref, rel=1e-4)
    dets = jax.jit(lambda o: decode(o, CFG, max_output=3))(out)
    assert dets.valid[0].tolist() == [True, False, False]
    np.testing.assert_allclose(dets.boxes[0, 0], boxes[0, 0], atol=1e-4)
    np.testing.assert_allclose(dets.landmarks[0, 0], lm[0, 0], atol=1e-4)
    assert float(dets.scores[0, 0]) == pytest.approx(1 / (1 + np.exp(-12.0)), rel=1e-6)


def test_detector_refuses_a_size_off_its_stride():
    # forward shapes and training are exercised by the recipe smoke test
    tiny = DetectorConfig(backbone=ResNetConfig(stem_channels=8, stem_kernel=3, stem_stride=2,
                                                stem_pool=False, channels=(8, 8),
                                                blocks=(1, 1), strides=(2, 2),
                                                norm="groupnorm", norm_groups=4),
                          head_channels=8)
    model = FaceDetector(tiny, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="x must have shape"):
        model(jnp.zeros((1, 30, 32, 3)))


def test_landmark_nme_matches_numpy():
    rng = np.random.default_rng(0)
    gt = rng.uniform(0, 50, (6, 5, 2)).astype(np.float32)
    pred = gt + rng.normal(0, 2, gt.shape).astype(np.float32)
    ref = np.array([np.mean([np.linalg.norm(pred[n, k] - gt[n, k]) for k in range(5)])
                    / np.linalg.norm(gt[n, 0] - gt[n, 1]) for n in range(6)])
    np.testing.assert_allclose(landmark_nme(jnp.asarray(pred), jnp.asarray(gt)), ref, rtol=1e-5)
    bad = gt.copy()
    bad[0, 1] = bad[0, 0]
    with pytest.raises(ValueError, match="gt"):
        landmark_nme(jnp.asarray(pred), jnp.asarray(bad))
    traced = jax.jit(landmark_nme)(jnp.asarray(pred), jnp.asarray(bad))
    assert np.isnan(traced[0]) and np.all(np.isfinite(traced[1:]))
    with pytest.raises(ValueError, match="pred must have shape"):
        landmark_nme(jnp.zeros((6, 4, 2)), jnp.asarray(gt))


def test_coco_ap_of_a_known_case_and_matching():
    # two faces in two images; detections: a hit (0.9), a false positive (0.8), a hit (0.7)
    gt = np.array([[[10, 10, 30, 30]], [[5, 5, 25, 35]]], np.float32)
    mask = np.ones((2, 1), bool)
    dets = Detections(boxes=np.array([[[10, 10, 30, 30], [40, 40, 60, 60]],
                                      [[5, 5, 25, 35], [0, 0, 1, 1]]], np.float32),
                      scores=np.array([[0.9, 0.8], [0.7, 0.0]]),
                      landmarks=np.zeros((2, 2, 5, 2)), valid=np.array([[True, True],
                                                                        [True, False]]))
    # precision 1 up to recall 0.5, then 2/3 at recall 1: 101-point interpolated AP
    expected = (51 * 1.0 + 50 * 2 / 3) / 101
    metrics = coco_face_metrics(np.full((2, 2), 64), gt, mask, dets)
    assert metrics["ap"] == pytest.approx(expected, abs=1e-6)
    assert metrics["ap50"] == pytest.approx(expected, abs=1e-6)
    idx, ok = match_detections(jnp.asarray(dets.boxes[0]), jnp.asarray(dets.valid[0]),
                               jnp.asarray(gt[0]), jnp.asarray(mask[0]))
    assert idx.tolist() == [0] and ok.tolist() == [True]


@pytest.mark.parametrize("call, name", [
    (lambda: nms(jnp.zeros((3, 5)), jnp.zeros(3)), "boxes"),
    (lambda: nms(jnp.zeros((3, 4)), jnp.zeros(2)), "scores"),
    (lambda: nms(jnp.zeros((3, 4)), jnp.zeros(3), max_output=0), "max_output"),
    (lambda: encode_targets(jnp.zeros((1, 2, 4)), jnp.zeros((1, 2, 4, 2)),
                            jnp.ones((1, 2), bool), (8, 8), CFG), "landmarks"),
    (lambda: encode_targets(jnp.array([[[5.0, 5.0, 1.0, 9.0]]]), jnp.zeros((1, 1, 5, 2)),
                            jnp.ones((1, 1), bool), (8, 8), CFG), "boxes"),
    (lambda: encode_targets(jnp.zeros((1, 2, 4)), jnp.zeros((1, 2, 5, 2)),
                            jnp.ones((2,), bool), (8, 8), CFG), "mask"),
    (lambda: decode({"heatmap": jnp.zeros((8, 8))}, CFG), "heatmap"),
    (lambda: FaceDetector("big", rngs=nnx.Rngs(0)), "config"),
    (lambda: coco_face_metrics(np.full((1, 2), 8), np.zeros((1, 4)), np.ones((1, 1), bool),
                               None), "gt_boxes"),
])
def test_bad_input_names_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()
