"""OKS against pycocotools' own COCOeval.computeOks."""

import contextlib
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tests.tolerances import assert_close
from vision.pose.oks import COCO_SIGMAS, oks


def coco_compute_oks(pred, gt, areas, boxes, sigmas):
    """``COCOeval.computeOks`` on one image: ``pred [N, K, 2]`` (scores decreasing in N),
    ``gt [M, K, 3]``; returns pycocotools' ``[N, M]``."""
    k = gt.shape[1]
    anns = []
    for j in range(len(gt)):
        anns.append({"id": j + 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
                     "keypoints": gt[j].reshape(-1).tolist(), "area": float(areas[j]),
                     "bbox": [float(v) for v in boxes[j]],
                     "num_keypoints": int(np.sum(gt[j, :, 2] > 0))})
    dataset = {"images": [{"id": 1, "height": 100, "width": 100}], "annotations": anns,
               "categories": [{"id": 1, "name": "person", "keypoints": [str(i) for i in range(k)],
                               "skeleton": []}]}
    dets = [{"image_id": 1, "category_id": 1, "score": 1.0 - 0.01 * i,
             "keypoints": np.concatenate([pred[i], np.ones((k, 1))], -1).reshape(-1).tolist()}
            for i in range(len(pred))]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = dataset
        coco.createIndex()
        res = coco.loadRes(dets)
        ev = COCOeval(coco, res, "keypoints")
        ev.params.kpt_oks_sigmas = np.asarray(sigmas)
        ev.params.imgIds = [1]
        ev._prepare()
        return np.asarray(ev.computeOks(1, 1))


def _case(rng, n, m, k, scale=6.0):
    gt = np.zeros((m, k, 3))
    gt[..., :2] = rng.uniform(20, 80, (m, k, 2))
    gt[..., 2] = rng.choice([0, 1, 2], (m, k), p=[0.2, 0.3, 0.5])
    pred = gt[rng.integers(0, m, n), :, :2] + rng.normal(0, scale, (n, k, 2))
    areas = rng.uniform(200, 3000, m)
    boxes = np.concatenate([rng.uniform(10, 50, (m, 2)), rng.uniform(10, 40, (m, 2))], -1)
    return pred, gt, areas, boxes


def test_oks_equals_pycocotools_compute_oks_coco_sigmas():
    pred, gt, areas, boxes = _case(np.random.default_rng(0), 5, 4, 17)
    gt[3, :, 2] = 0                                # a person without labelled keypoints
    gt[3, :, :2] = 0
    pred[1, :5] = [[0, 0], [5, 5], [200, 200], [40, 200], [-50, 30]]  # outside the box
    ref = coco_compute_oks(pred, gt, areas, boxes, COCO_SIGMAS)
    got = oks(jnp.asarray(pred, jnp.float32), gt, areas, boxes=boxes)
    assert_close(got, ref, dict(rtol=1e-5, atol=1e-6))
    # without boxes, people with no labelled keypoints score 0 (documented)
    no_box = np.asarray(oks(jnp.asarray(pred, jnp.float32), gt, areas))
    assert_close(no_box[:, :3], ref[:, :3], dict(rtol=1e-5, atol=1e-6))
    assert np.all(no_box[:, 3] == 0)


def test_oks_custom_sigmas_and_jit(x64):
    rng = np.random.default_rng(1)
    pred, gt, areas, boxes = _case(rng, 3, 2, 5, scale=3.0)
    sigmas = np.array([0.05, 0.1, 0.02, 0.3, 0.07])
    ref = coco_compute_oks(pred, gt, areas, boxes, sigmas)
    got = jax.jit(lambda p: oks(p, gt, areas, sigmas, boxes=boxes))(jnp.asarray(pred))
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-10, atol=1e-12)


def test_perfect_prediction_scores_one():
    gt = np.concatenate([np.full((1, 17, 2), 30.0), np.full((1, 17, 1), 2.0)], -1)
    assert float(oks(jnp.full((1, 17, 2), 30.0), gt, np.array([50.0]))[0, 0]) == 1.0


def test_bad_input_names_the_argument():
    pred = jnp.zeros((2, 17, 2))
    gt = np.zeros((3, 17, 3))
    areas = np.ones(3)
    with pytest.raises(ValueError, match=r"sigmas must have shape \[K\] = \(17\)"):
        oks(pred, gt, areas, np.ones(5) * 0.1)
    with pytest.raises(ValueError, match=r"gt must have shape \[M, K, 3\] = \[M, 17, 3\]"):
        oks(pred, np.zeros((3, 16, 3)), areas)
    with pytest.raises(ValueError, match=r"areas must have shape \[M\] = \(3\)"):
        oks(pred, gt, np.ones(2))
    with pytest.raises(ValueError, match="pred must have shape"):
        oks(jnp.zeros((2, 17)), gt, areas)
    with pytest.raises(ValueError, match="sigmas must be finite and > 0"):
        oks(pred, gt, areas, np.zeros(17))
    with pytest.raises(ValueError, match="areas must be finite and >= 0"):
        oks(pred, gt, -areas)
    with pytest.raises(ValueError, match="boxes must have shape"):
        oks(pred, gt, areas, boxes=np.zeros((3, 3)))
    bad = jax.jit(lambda a: oks(pred, gt, a))(-jnp.ones(3))
    assert np.all(np.isnan(np.asarray(bad)))
