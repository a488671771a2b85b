"""COCO export and bbox AP through pycocotools."""

import json

import numpy as np
import pytest

from vision.coco import coco_detections, coco_ground_truth, evaluate_bbox, write_json
from vision.shapes import CLASSES, generate_shapes


@pytest.fixture(scope="module")
def shapes_gt():
    data = generate_shapes(12, seed=5)
    boxes, labels = zip(*(data.boxes_xywh(n) for n in range(len(data))), strict=True)
    return data, coco_ground_truth(data.sizes, boxes, labels, CLASSES), boxes, labels


def _perfect(boxes, labels, q=8):
    n = len(boxes)
    xyxy = np.zeros((n, q, 4))
    xyxy[..., 2:] = 1.0
    scores = np.zeros((n, q))
    labs = np.zeros((n, q), int)
    for k, (b, lab) in enumerate(zip(boxes, labels, strict=True)):
        xyxy[k, : len(b)] = np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)
        scores[k, : len(b)] = 0.9
        labs[k, : len(b)] = lab
    return xyxy, scores, labs


def test_perfect_predictions_give_ap_one(shapes_gt, tmp_path):
    data, gt, boxes, labels = shapes_gt
    xyxy, scores, labs = _perfect(boxes, labels)
    dets = coco_detections(list(range(1, len(data) + 1)), xyxy, scores, labs, num_classes=4)
    assert len(dets) == sum(len(b) for b in boxes)  # score-0 queries are dropped
    metrics = evaluate_bbox(gt, dets)
    assert metrics["ap"] == pytest.approx(1.0)
    assert metrics["ap50"] == pytest.approx(1.0) and metrics["ap75"] == pytest.approx(1.0)
    write_json(gt, tmp_path / "gt.json")
    write_json(dets, tmp_path / "dets.json")
    assert json.loads((tmp_path / "gt.json").read_text())["categories"][0]["name"] == "circle"
    assert len(json.loads((tmp_path / "dets.json").read_text())) == len(dets)


def test_wrong_class_and_shifted_boxes_lower_ap(shapes_gt):
    data, gt, boxes, labels = shapes_gt
    xyxy, scores, labs = _perfect(boxes, labels)
    wrong = labs.copy()
    wrong[0, 0] = (wrong[0, 0] + 1) % 4
    ids = list(range(1, len(data) + 1))
    assert evaluate_bbox(gt, coco_detections(ids, xyxy, scores, wrong))["ap"] < 1.0
    shifted = xyxy + np.array([2.0, 0.0, 2.0, 0.0])
    m = evaluate_bbox(gt, coco_detections(ids, shifted, scores, labs))
    assert m["ap"] < m["ap50"] <= 1.0
    assert evaluate_bbox(gt, [])["ap"] == 0.0


def test_bad_inputs_raise_clear_errors(shapes_gt):
    data, _, boxes, labels = shapes_gt
    xyxy, scores, labs = _perfect(boxes, labels)
    ids = list(range(1, len(data) + 1))
    with pytest.raises(ValueError, match=r"labels must be class ids in \[0, 4\)"):
        coco_detections(ids, xyxy, scores, labs + 4, num_classes=4)
    with pytest.raises(ValueError, match="x1 >= x0"):
        coco_detections(ids, xyxy[..., [2, 1, 0, 3]], scores, labs)
    with pytest.raises(ValueError, match="finite"):
        coco_detections(ids, xyxy, scores * np.nan, labs)
    with pytest.raises(ValueError, match=r"scores and labels must have shape \[N, Q\]"):
        coco_detections(ids, xyxy, scores[:, :2], labs)
    with pytest.raises(ValueError, match=r"labels of image 0 must be class ids in \[0, 4\)"):
        coco_ground_truth(data.sizes, boxes, [lab + 4 for lab in labels], CLASSES)
    with pytest.raises(ValueError, match="backend must be"):
        evaluate_bbox({}, [{"image_id": 1}], backend="nope")
