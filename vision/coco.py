"""COCO-format export of detections and ground truth, and bbox AP through pycocotools.

* :func:`coco_ground_truth`: images, annotations (``[x, y, w, h]`` pixel boxes, area,
  ``iscrowd = 0``) and categories as a COCO dataset dict.
* :func:`coco_detections`: per-query detections as the COCO results list
  (``image_id``, ``category_id``, ``bbox`` ``[x, y, w, h]``, ``score``).
* :func:`evaluate_bbox`: the 12 standard COCO bbox figures (AP averaged over IoU
  0.50:0.95, AP50, AP75, AP by object size, AR), computed by ``pycocotools``'
  ``COCOeval`` (the reference implementation). ``faster-coco-eval`` gives the same
  figures (checked on the shapes set); pass ``backend="faster_coco_eval"`` when it
  is installed.
* :func:`write_json`: save either as a ``.json`` file.

Category ids are ``class id + 1`` (COCO ids start at 1).

Paper: Lin et al. 2014, "Microsoft COCO: Common Objects in Context" (the metric).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Sequence

import numpy as np

__all__ = ["COCO_STAT_NAMES", "coco_detections", "coco_ground_truth", "evaluate_bbox",
           "write_json"]

#: Names of ``COCOeval.stats`` for bbox evaluation, in order.
COCO_STAT_NAMES = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "ar1", "ar10",
                   "ar100", "ar_small", "ar_medium", "ar_large")


def coco_ground_truth(sizes: np.ndarray, boxes_xywh: Sequence[np.ndarray],
                      labels: Sequence[np.ndarray], class_names: Sequence[str],
                      image_ids: Sequence[int] | None = None) -> dict:
    """Ground truth as a COCO dataset dict.

    Args:
      sizes: ``[N, 2]`` image ``(height, width)``.
      boxes_xywh: ``N`` arrays ``[T_n, 4]`` of pixel ``[x, y, w, h]`` boxes.
      labels: ``N`` arrays ``[T_n]`` of class ids in ``[0, len(class_names))``.
      class_names: category names in class-id order.
      image_ids: COCO image ids (default ``1 .. N``).

    Returns:
      ``{"images": [...], "annotations": [...], "categories": [...]}``.

    Example:
      >>> gt = coco_ground_truth(np.array([[32, 32]]), [np.array([[1., 2., 3., 4.]])],
      ...                        [np.array([0])], ["circle"])
      >>> gt["annotations"][0]["bbox"], gt["annotations"][0]["category_id"]
      ([1.0, 2.0, 3.0, 4.0], 1)
    """
    sizes = np.asarray(sizes)
    if sizes.ndim != 2 or sizes.shape[1] != 2:
        raise ValueError(f"sizes must have shape [N, 2] (height, width), got {sizes.shape}")
    n = sizes.shape[0]
    if len(boxes_xywh) != n or len(labels) != n:
        raise ValueError(f"boxes_xywh and labels must hold one entry per image ({n}), got "
                         f"{len(boxes_xywh)} and {len(labels)}")
    ids = list(range(1, n + 1)) if image_ids is None else [int(i) for i in image_ids]
    images, annotations = [], []
    for k in range(n):
        h, w = (int(v) for v in sizes[k])
        images.append({"id": ids[k], "height": h, "width": w, "file_name": f"{ids[k]}.png"})
        b = np.asarray(boxes_xywh[k], dtype=np.float64).reshape(-1, 4)
        lab = np.asarray(labels[k]).reshape(-1)
        if b.shape[0] != lab.shape[0]:
            raise ValueError(f"image {k}: {b.shape[0]} boxes but {lab.shape[0]} labels")
        _check_classes(lab, len(class_names), f"labels of image {k}")
        if b.size and (np.any(b[:, 2:] < 0) or not np.all(np.isfinite(b))):
            raise ValueError(f"image {k}: boxes must be finite [x, y, w, h] with w, h >= 0")
        for box, c in zip(b, lab, strict=True):
            annotations.append({"id": len(annotations) + 1, "image_id": ids[k],
                                "category_id": int(c) + 1, "bbox": [float(v) for v in box],
                                "area": float(box[2] * box[3]), "iscrowd": 0})
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(class_names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def _check_classes(labels: np.ndarray, num_classes: int, name: str) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{name} must be class ids in [0, {num_classes}), got values in "
                         f"[{labels.min()}, {labels.max()}]")


def coco_detections(image_ids: Sequence[int], boxes_xyxy: np.ndarray, scores: np.ndarray,
                    labels: np.ndarray, *, num_classes: int | None = None,
                    min_score: float = 0.0) -> list[dict]:
    """Detections as a COCO results list (one entry per query with ``score > min_score``).

    Args:
      image_ids: ``N`` COCO image ids.
      boxes_xyxy: ``[N, Q, 4]`` pixel ``xyxy`` boxes (e.g. from
        ``vision.detr.postprocess``).
      scores: ``[N, Q]`` confidences.
      labels: ``[N, Q]`` class ids.
      num_classes: if given, class ids must be in ``[0, num_classes)``.
      min_score: drop detections scoring at most this.

    Returns:
      ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, ...]``.

    Example:
      >>> dets = coco_detections([1], np.array([[[1., 2., 4., 6.]]]), np.array([[0.9]]),
      ...                        np.array([[0]]))
      >>> dets[0]["bbox"]
      [1.0, 2.0, 3.0, 4.0]
    """
    boxes_xyxy = np.asarray(boxes_xyxy, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if boxes_xyxy.ndim != 3 or boxes_xyxy.shape[-1] != 4:
        raise ValueError(f"boxes_xyxy must have shape [N, Q, 4], got {boxes_xyxy.shape}")
    n, q, _ = boxes_xyxy.shape
    if scores.shape != (n, q) or labels.shape != (n, q):
        raise ValueError(f"scores and labels must have shape [N, Q] = ({n}, {q}), got "
                         f"{scores.shape} and {labels.shape}")
    if len(image_ids) != n:
        raise ValueError(f"image_ids must have N = {n} entries, got {len(image_ids)}")
    if not np.all(np.isfinite(boxes_xyxy)) or not np.all(np.isfinite(scores)):
        raise ValueError("boxes_xyxy and scores must be finite")
    if np.any(boxes_xyxy[..., 2:] < boxes_xyxy[..., :2]):
        raise ValueError("boxes_xyxy must have x1 >= x0 and y1 >= y0")
    if num_classes is not None:
        _check_classes(labels, num_classes, "labels")
    out = []
    for k in range(n):
        for j in range(q):
            if scores[k, j] <= min_score:
                continue
            x0, y0, x1, y1 = boxes_xyxy[k, j]
            out.append({"image_id": int(image_ids[k]), "category_id": int(labels[k, j]) + 1,
                        "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                        "score": float(scores[k, j])})
    return out


def _backend(name: str):
    if name == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        return COCO, COCOeval
    if name == "faster_coco_eval":
        from faster_coco_eval import COCO, COCOeval_faster

        return COCO, COCOeval_faster
    raise ValueError(f"backend must be 'pycocotools' or 'faster_coco_eval', got {name!r}")


def evaluate_bbox(ground_truth: dict, detections: list[dict], *,
                  backend: str = "pycocotools") -> dict[str, float]:
    """COCO bbox AP/AR of ``detections`` against ``ground_truth``.

    ``AP = mean over IoU thresholds {0.50, 0.55, …, 0.95} and categories of the
    101-point interpolated precision–recall area``, at most 100 detections per image.

    Args:
      ground_truth: a COCO dataset dict (:func:`coco_ground_truth`).
      detections: a COCO results list (:func:`coco_detections`); empty gives zeros.
      backend: ``"pycocotools"`` or ``"faster_coco_eval"``.

    Returns:
      ``{name: value}`` for the names in ``COCO_STAT_NAMES`` (``ap``, ``ap50``,
      ``ap75``, …); ``-1`` where COCO has no ground truth for a size range.

    Example:
      >>> gt = coco_ground_truth(np.array([[32, 32]]), [np.array([[1., 2., 10., 12.]])],
      ...                        [np.array([0])], ["circle"])
      >>> dets = coco_detections([1], np.array([[[1., 2., 11., 14.]]]), np.array([[1.0]]),
      ...                        np.array([[0]]))
      >>> round(evaluate_bbox(gt, dets)["ap"], 6)
      1.0
    """
    return _summarize(ground_truth, detections, "bbox", COCO_STAT_NAMES, backend)


def _summarize(ground_truth: dict, detections: list[dict], iou_type: str,
               names: Sequence[str], backend: str, sigmas=None) -> dict[str, float]:
    """COCOeval ``evaluate → accumulate → summarize`` for ``iou_type`` (``"bbox"`` or
    ``"keypoints"``, with OKS ``sigmas``), its printout silenced; the stats by name
    (all 0 without detections)."""
    if not detections:
        return {name: 0.0 for name in names}
    coco_cls, eval_cls = _backend(backend)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = coco_cls()
        gt.dataset = json.loads(json.dumps(ground_truth))
        gt.createIndex()
        dt = gt.loadRes(json.loads(json.dumps(detections)))
        evaluator = eval_cls(gt, dt, iou_type)
        if sigmas is not None:
            evaluator.params.kpt_oks_sigmas = sigmas
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(v) for name, v in zip(names, evaluator.stats, strict=False)}


def write_json(obj, path: str | os.PathLike) -> None:
    """Write a COCO dict or results list as JSON."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f)


# ----------------------------------------------------------------------------- keypoints

#: Names of ``COCOeval.stats`` for keypoint evaluation, in order.
KEYPOINT_STAT_NAMES = ("ap", "ap50", "ap75", "ap_medium", "ap_large", "ar", "ar50", "ar75",
                       "ar_medium", "ar_large")


def coco_keypoint_ground_truth(sizes: np.ndarray, keypoints: Sequence[np.ndarray],
                               boxes_xywh: Sequence[np.ndarray], areas: Sequence[np.ndarray],
                               keypoint_names: Sequence[str], *,
                               skeleton: Sequence[Sequence[int]] = (),
                               category: str = "person",
                               image_ids: Sequence[int] | None = None) -> dict:
    """Keypoint ground truth (one category) as a COCO dataset dict.

    Args:
      sizes: ``[N, 2]`` image ``(height, width)``.
      keypoints: ``N`` arrays ``[T_n, K, 3]`` of ``(x, y, v)`` per person, ``v`` in
        ``{0, 1, 2}`` (unlabelled, labelled but occluded, visible).
      boxes_xywh: ``N`` arrays ``[T_n, 4]`` of person boxes ``[x, y, w, h]``.
      areas: ``N`` arrays ``[T_n]`` of person areas (segmentation areas in COCO; the
        OKS scale ``s²``).
      keypoint_names: the ``K`` keypoint names.
      skeleton: 1-based keypoint pairs (stored in the category, not used by the metric).
      category: the category name (id 1).
      image_ids: COCO image ids (default ``1 .. N``).

    Returns:
      ``{"images", "annotations", "categories"}``; annotations carry ``keypoints`` (a
      flat ``[x, y, v] · K`` list), ``num_keypoints`` (labelled count), ``bbox``, ``area``
      and ``iscrowd = 0``. Unlabelled keypoints are written as ``(0, 0, 0)`` as in COCO.

    Example:
      >>> gt = coco_keypoint_ground_truth(np.array([[32, 32]]), [np.array([[[4., 5., 2.]]])],
      ...                                 [np.array([[1., 1., 10., 10.]])], [np.array([80.])],
      ...                                 ["nose"])
      >>> gt["annotations"][0]["keypoints"], gt["annotations"][0]["num_keypoints"]
      ([4.0, 5.0, 2], 1)
    """
    sizes = np.asarray(sizes)
    if sizes.ndim != 2 or sizes.shape[1] != 2:
        raise ValueError(f"sizes must have shape [N, 2] (height, width), got {sizes.shape}")
    n, k = sizes.shape[0], len(keypoint_names)
    if not (len(keypoints) == len(boxes_xywh) == len(areas) == n):
        raise ValueError(f"keypoints, boxes_xywh and areas must hold one entry per image ({n}), "
                         f"got {len(keypoints)}, {len(boxes_xywh)} and {len(areas)}")
    ids = list(range(1, n + 1)) if image_ids is None else [int(i) for i in image_ids]
    images, annotations = [], []
    for j in range(n):
        h, w = (int(v) for v in sizes[j])
        images.append({"id": ids[j], "height": h, "width": w, "file_name": f"{ids[j]}.png"})
        kp = np.asarray(keypoints[j], dtype=np.float64)
        if kp.ndim != 3 or kp.shape[1:] != (k, 3):
            raise ValueError(f"keypoints of image {j} must have shape [T, K, 3] = [T, {k}, 3] "
                             f"(K = len(keypoint_names)), got {kp.shape}")
        bx = np.asarray(boxes_xywh[j], dtype=np.float64).reshape(-1, 4)
        ar = np.asarray(areas[j], dtype=np.float64).reshape(-1)
        if bx.shape[0] != kp.shape[0] or ar.shape[0] != kp.shape[0]:
            raise ValueError(f"image {j}: {kp.shape[0]} people but {bx.shape[0]} boxes and "
                             f"{ar.shape[0]} areas")
        if kp.size and not np.all(np.isin(kp[..., 2], (0, 1, 2))):
            raise ValueError(f"keypoints of image {j}: visibility must be 0, 1 or 2")
        if not (np.all(np.isfinite(kp)) and np.all(np.isfinite(bx)) and np.all(ar >= 0)):
            raise ValueError(f"image {j}: keypoints and boxes must be finite, areas >= 0")
        for person, box, area in zip(kp, bx, ar, strict=True):
            flat = []
            for x, y, v in person:
                flat += [float(x), float(y), int(v)] if v > 0 else [0.0, 0.0, 0]
            annotations.append({"id": len(annotations) + 1, "image_id": ids[j], "category_id": 1,
                                "keypoints": flat, "num_keypoints": int(np.sum(person[:, 2] > 0)),
                                "bbox": [float(v) for v in box], "area": float(area),
                                "iscrowd": 0})
    categories = [{"id": 1, "name": category, "supercategory": category,
                   "keypoints": list(keypoint_names),
                   "skeleton": [list(map(int, pair)) for pair in skeleton]}]
    return {"images": images, "annotations": annotations, "categories": categories}


def coco_keypoint_detections(image_ids: Sequence[int], keypoints: np.ndarray,
                             scores: np.ndarray) -> list[dict]:
    """Keypoint detections as a COCO results list (one person per row).

    Args:
      image_ids: ``D`` COCO image ids.
      keypoints: ``[D, K, 2]`` predicted ``(x, y)`` or ``[D, K, 3]`` with a per-keypoint
        score as third value (written as is; COCO's metric ignores it).
      scores: ``[D]`` instance scores (rank detections for AP).

    Returns:
      ``[{"image_id", "category_id": 1, "keypoints": [x, y, v] · K, "score"}, ...]``.

    Example:
      >>> dets = coco_keypoint_detections([1], np.array([[[4., 5.]]]), np.array([0.9]))
      >>> dets[0]["keypoints"], dets[0]["score"]
      ([4.0, 5.0, 1.0], 0.9)
    """
    kp = np.asarray(keypoints, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if kp.ndim != 3 or kp.shape[-1] not in (2, 3):
        raise ValueError(f"keypoints must have shape [D, K, 2] or [D, K, 3], got {kp.shape}")
    d = kp.shape[0]
    if scores.shape != (d,):
        raise ValueError(f"scores must have shape [D] = ({d}), got {scores.shape}")
    if len(image_ids) != d:
        raise ValueError(f"image_ids must have D = {d} entries, got {len(image_ids)}")
    if not (np.all(np.isfinite(kp)) and np.all(np.isfinite(scores))):
        raise ValueError("keypoints and scores must be finite")
    if kp.shape[-1] == 2:
        kp = np.concatenate([kp, np.ones((*kp.shape[:-1], 1))], axis=-1)
    return [{"image_id": int(image_ids[i]), "category_id": 1,
             "keypoints": [float(v) for v in kp[i].reshape(-1)], "score": float(scores[i])}
            for i in range(d)]


def evaluate_keypoints(ground_truth: dict, detections: list[dict], *, sigmas=None,
                       backend: str = "pycocotools") -> dict[str, float]:
    """COCO keypoint AP/AR (OKS-based) of ``detections`` against ``ground_truth``.

    ``AP = mean over OKS thresholds {0.50, 0.55, …, 0.95} of the 101-point interpolated
    precision–recall area``, at most 20 detections per image; ground truths without
    labelled keypoints are ignored.

    Args:
      ground_truth: a COCO dataset dict (:func:`coco_keypoint_ground_truth`).
      detections: a COCO results list (:func:`coco_keypoint_detections`); empty gives
        zeros.
      sigmas: ``[K]`` per-keypoint OKS constants (default COCO's 17).
      backend: ``"pycocotools"`` or ``"faster_coco_eval"``.

    Returns:
      ``{name: value}`` for the names in ``KEYPOINT_STAT_NAMES``; ``-1`` where COCO has
      no ground truth for an area range.

    Example:
      >>> gt = coco_keypoint_ground_truth(np.array([[32, 32]]), [np.array([[[4., 5., 2.]]])],
      ...                                 [np.array([[1., 1., 10., 10.]])], [np.array([80.])],
      ...                                 ["nose"])
      >>> dets = coco_keypoint_detections([1], np.array([[[4., 5.]]]), np.array([1.0]))
      >>> round(evaluate_keypoints(gt, dets, sigmas=[0.05])["ap"], 6)
      1.0
    """
    categories = ground_truth.get("categories") or [{}]
    k = len(categories[0].get("keypoints", ()))
    if sigmas is not None:
        sigmas = np.asarray(sigmas, dtype=np.float64)
        if sigmas.shape != (k,):
            raise ValueError(f"sigmas must have shape [K] = ({k}) (one per keypoint of the "
                             f"category), got shape {sigmas.shape}")
        if not np.all(np.isfinite(sigmas) & (sigmas > 0)):
            raise ValueError("sigmas must be finite and > 0")
    elif k != 17:
        raise ValueError(f"sigmas must be given for a skeleton of {k} keypoints (the default "
                         "is COCO's 17)")
    return _summarize(ground_truth, detections, "keypoints", KEYPOINT_STAT_NAMES, backend,
                      sigmas)


__all__ += ["KEYPOINT_STAT_NAMES", "coco_keypoint_detections", "coco_keypoint_ground_truth",
            "evaluate_keypoints"]
