"""Keypoint AP plumbing through pycocotools on hand-made cases with known AP."""

import math

import numpy as np
import pytest

from vision.coco import coco_keypoint_detections, coco_keypoint_ground_truth, evaluate_keypoints

SIGMA = 0.05
AREA = 400.0


def _gt(points):
    """One person per image, K = 1 keypoint at ``points[i]`` (visible)."""
    n = len(points)
    kps = [np.array([[[x, y, 2.0]]]) for x, y in points]
    box = np.array([[0.0, 0.0, 20.0, 20.0]])
    return coco_keypoint_ground_truth(np.full((n, 2), 64), kps, [box] * n,
                                      [np.array([AREA])] * n, ["point"])


def _offset_for(target_oks):
    """Distance giving OKS = target for one keypoint: exp(−d² / (2 s² (2σ)²)) = target."""
    return math.sqrt(-2.0 * math.log(target_oks) * AREA * (2 * SIGMA) ** 2)


def test_perfect_and_missed_detections_give_the_101_point_ap():
    gt = _gt([(10.0, 10.0), (30.0, 30.0)])
    far = 10.0 + _offset_for(0.1)                # OKS 0.1: below every threshold
    dets = coco_keypoint_detections([1, 2], np.array([[[10.0, 10.0]], [[far, 30.0]]]),
                                    np.array([0.9, 0.8]))
    stats = evaluate_keypoints(gt, dets, sigmas=[SIGMA])
    # recall 1/2 at precision 1, recall 1 never reached: 51 of 101 recall points
    for key in ("ap", "ap50", "ap75"):
        assert stats[key] == pytest.approx(51 / 101, abs=1e-9)
    assert stats["ar"] == pytest.approx(0.5)


def test_an_oks_between_thresholds_counts_at_the_lower_ones_only():
    gt = _gt([(20.0, 20.0)])
    dets = coco_keypoint_detections([1], np.array([[[20.0 + _offset_for(0.6), 20.0]]]),
                                    np.array([1.0]))
    stats = evaluate_keypoints(gt, dets, sigmas=[SIGMA])
    assert stats["ap50"] == pytest.approx(1.0) and stats["ap75"] == pytest.approx(0.0)
    assert stats["ap"] == pytest.approx(0.2)     # thresholds 0.50 and 0.55 of ten


def test_scores_rank_detections():
    gt = _gt([(10.0, 10.0), (30.0, 30.0)])
    far = 10.0 + _offset_for(0.1)
    pred = np.array([[[10.0, 10.0]], [[far, 30.0]]])
    worse = evaluate_keypoints(gt, coco_keypoint_detections([1, 2], pred, np.array([0.1, 0.9])),
                               sigmas=[SIGMA])
    # the wrong detection ranked first: precision 1/2 at recall 1/2
    assert worse["ap50"] == pytest.approx(51 / 101 * 0.5, abs=1e-9)


def test_unlabelled_keypoints_and_empty_detections():
    kps = [np.array([[[4., 5., 0.], [6., 7., 1.]]])]
    gt = coco_keypoint_ground_truth(np.array([[32, 32]]), kps,
                                    [np.array([[1., 1., 10., 10.]])], [np.array([80.])], ["a", "b"])
    ann = gt["annotations"][0]
    assert ann["keypoints"] == [0.0, 0.0, 0, 6.0, 7.0, 1] and ann["num_keypoints"] == 1
    assert evaluate_keypoints(gt, [], sigmas=[0.1, 0.1])["ap"] == 0.0


def test_bad_input_names_the_argument():
    gt = _gt([(10.0, 10.0)])
    dets = coco_keypoint_detections([1], np.array([[[10.0, 10.0]]]), np.array([1.0]))
    with pytest.raises(ValueError, match=r"sigmas must have shape \[K\] = \(1\)"):
        evaluate_keypoints(gt, dets, sigmas=[0.1, 0.2])
    with pytest.raises(ValueError, match="sigmas must be given"):
        evaluate_keypoints(gt, dets)
    with pytest.raises(ValueError, match="sigmas must be finite and > 0"):
        evaluate_keypoints(gt, dets, sigmas=[0.0])
    with pytest.raises(ValueError, match=r"keypoints of image 0 must have shape \[T, K, 3\]"):
        coco_keypoint_ground_truth(np.array([[32, 32]]), [np.zeros((1, 2, 3))],
                                   [np.zeros((1, 4))], [np.ones(1)], ["a"])
    with pytest.raises(ValueError, match="visibility must be 0, 1 or 2"):
        coco_keypoint_ground_truth(np.array([[32, 32]]), [np.full((1, 1, 3), 3.0)],
                                   [np.zeros((1, 4))], [np.ones(1)], ["a"])
    with pytest.raises(ValueError, match=r"scores must have shape \[D\] = \(1\)"):
        coco_keypoint_detections([1], np.zeros((1, 1, 2)), np.ones(2))
    with pytest.raises(ValueError, match="keypoints must have shape"):
        coco_keypoint_detections([1], np.zeros((1, 2)), np.ones(1))
