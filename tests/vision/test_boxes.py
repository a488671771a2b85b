"""vision.boxes against an independent float64 numpy formula, degenerate boxes, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.tolerances import F32, F64, assert_close
from vision.boxes import (
    box_area,
    box_cxcywh_to_xyxy,
    box_iou,
    box_xyxy_to_cxcywh,
    check_boxes,
    elementwise_box_iou,
    elementwise_generalized_box_iou,
    generalized_box_iou,
    giou_loss,
    valid_boxes,
)


def _numpy_giou(a, b):
    """Rezatofighi et al. 2019, Algorithm 1, one pair at a time (python floats)."""
    ax0, ay0, ax1, ay1 = (float(v) for v in a)
    bx0, by0, bx1, by1 = (float(v) for v in b)
    area_a = (ax1 - ax0) * (ay1 - ay0)
    area_b = (bx1 - bx0) * (by1 - by0)
    iw = max(0.0, min(ax1, bx1) - max(ax0, bx0))
    ih = max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = iw * ih
    union = area_a + area_b - inter
    enclosing = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    iou = inter / union if union > 0 else 0.0
    penalty = (enclosing - union) / enclosing if enclosing > 0 else 0.0
    return iou, iou - penalty


def _random_xyxy(rng, n):
    lo = rng.uniform(0, 0.7, size=(n, 2))
    return np.concatenate([lo, lo + rng.uniform(0.01, 0.3, size=(n, 2))], axis=1)


def test_conversions_round_trip_and_area():
    rng = np.random.default_rng(0)
    xyxy = _random_xyxy(rng, 7).astype(np.float32)
    cxcywh = box_xyxy_to_cxcywh(xyxy)
    assert_close(cxcywh[:, 2:], xyxy[:, 2:] - xyxy[:, :2])
    assert_close(cxcywh[:, :2], (xyxy[:, :2] + xyxy[:, 2:]) / 2)
    assert_close(box_cxcywh_to_xyxy(cxcywh), xyxy)
    assert_close(box_area(xyxy), (xyxy[:, 2] - xyxy[:, 0]) * (xyxy[:, 3] - xyxy[:, 1]))


@pytest.mark.usefixtures("x64")
def test_pairwise_iou_and_giou_match_numpy_formula():
    rng = np.random.default_rng(1)
    a = _random_xyxy(rng, 6)
    b = _random_xyxy(rng, 9)
    b[0] = a[0]  # identical pair
    b[1] = [a[1, 2], a[1, 1], a[1, 2] + 0.1, a[1, 3]]  # touching edge
    expected = np.array([[_numpy_giou(x, y) for y in b] for x in a])  # [6, 9, 2]
    iou, union = box_iou(jnp.asarray(a), jnp.asarray(b))
    giou = generalized_box_iou(jnp.asarray(a), jnp.asarray(b))
    assert iou.shape == giou.shape == union.shape == (6, 9)
    assert_close(iou, expected[..., 0], F64)
    assert_close(giou, expected[..., 1], F64)
    assert_close(giou[0, 0], 1.0, F64)
    assert_close(iou[1, 1], 0.0, F64)
    jitted = jax.jit(generalized_box_iou)(jnp.asarray(a), jnp.asarray(b))
    assert_close(jitted, giou, F64)
    pairs = elementwise_generalized_box_iou(jnp.asarray(a), jnp.asarray(b[:6]))
    assert_close(pairs, np.diag(expected[:, :6, 1]), F64)
    assert_close(elementwise_box_iou(jnp.asarray(a), jnp.asarray(b[:6])),
                 np.diag(expected[:, :6, 0]), F64)
    assert_close(giou_loss(jnp.asarray(a), jnp.asarray(b[:6])), 1 - np.diag(expected[:, :6, 1]),
                 F64)


def test_disjoint_boxes_known_value():
    a = jnp.array([[0.0, 0.0, 1.0, 1.0]])
    b = jnp.array([[2.0, 0.0, 3.0, 1.0]])
    assert_close(generalized_box_iou(a, b), [[0.0 - 1.0 / 3.0]])


DEGENERATE = [
    ("zero-area vs box", [0.2, 0.2, 0.2, 0.5], [0.1, 0.1, 0.4, 0.4]),
    ("two identical points", [0.3, 0.3, 0.3, 0.3], [0.3, 0.3, 0.3, 0.3]),
    ("identical boxes", [0.1, 0.2, 0.5, 0.6], [0.1, 0.2, 0.5, 0.6]),
    ("disjoint", [0.0, 0.0, 0.1, 0.1], [0.5, 0.5, 0.9, 0.9]),
    ("touching", [0.0, 0.0, 0.5, 0.5], [0.5, 0.0, 1.0, 0.5]),
    ("zero-width lines on a line", [0.2, 0.0, 0.2, 1.0], [0.2, 0.0, 0.2, 1.0]),
]


@pytest.mark.parametrize("name,a,b", DEGENERATE, ids=[d[0] for d in DEGENERATE])
def test_degenerate_boxes_finite_values_and_gradients(name, a, b):
    a, b = jnp.array([a]), jnp.array([b])
    value = generalized_box_iou(a, b)
    assert np.all(np.isfinite(value)), name
    assert -1.0 <= float(value[0, 0]) <= 1.0
    expected_iou, expected_giou = _numpy_giou(a[0], b[0])
    assert_close(value, [[expected_giou]], F32)
    assert_close(box_iou(a, b)[0], [[expected_iou]], F32)
    grads = jax.grad(lambda x, y: jnp.sum(giou_loss(x, y)) + jnp.sum(generalized_box_iou(x, y)),
                     argnums=(0, 1))(a, b)
    for g in grads:
        assert np.all(np.isfinite(g)), name
    cx = box_xyxy_to_cxcywh(a)
    g_cx = jax.grad(lambda c: jnp.sum(giou_loss(box_cxcywh_to_xyxy(c), b)))(cx)
    assert np.all(np.isfinite(g_cx)), name


def test_empty_sets():
    out = generalized_box_iou(jnp.zeros((0, 4)), jnp.ones((3, 4)))
    assert out.shape == (0, 3)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"boxes1 .*x1 < x0"):
        generalized_box_iou(jnp.array([[0.5, 0.0, 0.2, 1.0]]), jnp.array([[0.0, 0.0, 1.0, 1.0]]))
    with pytest.raises(ValueError, match=r"boxes2 .*NaN"):
        box_iou(jnp.array([[0.0, 0.0, 1.0, 1.0]]), jnp.array([[0.0, jnp.nan, 1.0, 1.0]]))
    with pytest.raises(ValueError, match=r"boxes1 must have shape \[N, 4\]"):
        generalized_box_iou(jnp.zeros((3, 5)), jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"boxes1 and boxes2 must have the same shape"):
        giou_loss(jnp.zeros((3, 4)), jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match="floating point"):
        box_area(jnp.zeros((2, 4), jnp.int32))
    with pytest.raises(ValueError, match=r"tgt .*corners in \[0, 1\]"):
        check_boxes(jnp.array([[0.9, 0.5, 0.4, 0.2]]), "tgt", fmt="cxcywh", normalized=True)
    with pytest.raises(ValueError, match="negative width"):
        check_boxes(jnp.array([[0.5, 0.5, -0.1, 0.2]]), "tgt", fmt="cxcywh")
    check_boxes(jnp.array([[0.5, 0.5, 0.2, 0.2]]), fmt="cxcywh", normalized=True)


def test_invalid_boxes_refused_eagerly_and_poisoned_when_traced():
    good = [0.0, 0.0, 1.0, 1.0]
    inverted = [0.5, 0.0, 0.2, 1.0]  # x1 < x0
    a = jnp.array([good, inverted, [0.0, jnp.nan, 1.0, 1.0]])
    b = jnp.array([good, [0.2, 0.6, 0.4, 0.5]])  # y1 < y0
    assert valid_boxes(a).tolist() == [True, False, False]
    assert not bool(valid_boxes(jnp.array([0.5, 0.5, 0.0, -0.1]), "cxcywh"))
    ok = np.array([[True, False], [False, False], [False, False]])
    giou = np.asarray(jax.jit(generalized_box_iou)(a, b))
    iou, union = (np.asarray(x) for x in jax.jit(box_iou)(a, b))
    for value in (giou, iou, union):
        assert np.all(np.isnan(value[~ok])) and np.all(np.isfinite(value[ok]))
    assert giou[0, 0] == 1.0 and iou[0, 0] == 1.0
    # An inverted box used to score a GIoU of 1 with itself under jit.
    same = jax.jit(generalized_box_iou)(a[1:2], a[1:2])
    assert np.isnan(float(same[0, 0]))
    pairs = jax.jit(jax.vmap(elementwise_generalized_box_iou))(a[:2], a[:2])
    assert pairs[0] == 1.0 and np.isnan(float(pairs[1]))
    assert np.isnan(float(jax.jit(giou_loss)(a[1], a[1])))
    assert np.isnan(float(jax.jit(elementwise_box_iou)(a[0], a[1])))
    area = jax.jit(box_area)(a)
    assert float(area[0]) == 1.0 and np.all(np.isnan(np.asarray(area[1:])))
    cxcywh = jnp.array([[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, -0.1, 0.2]])
    xyxy = np.asarray(jax.jit(box_cxcywh_to_xyxy)(cxcywh))
    assert_close(xyxy[0], [0.4, 0.4, 0.6, 0.6])
    assert np.all(np.isnan(xyxy[1]))
    back = np.asarray(jax.jit(box_xyxy_to_cxcywh)(a[:2]))
    assert_close(back[0], [0.5, 0.5, 1.0, 1.0])
    assert np.all(np.isnan(back[1]))
    # Eagerly the same inputs raise, naming the argument.
    with pytest.raises(ValueError, match=r"boxes .*x1 < x0 or y1 < y0 at index \(1,\)"):
        box_area(a[:2])
    with pytest.raises(ValueError, match=r"boxes \(cx, cy, w, h\) has a negative width"):
        box_cxcywh_to_xyxy(cxcywh)
    with pytest.raises(ValueError, match=r"boxes .*x1 < x0"):
        box_xyxy_to_cxcywh(a[:2])
    with pytest.raises(ValueError, match=r"boxes2 .*y1 < y0"):
        box_iou(a[:1], b)
    with pytest.raises(ValueError, match="fmt must be 'xyxy' or 'cxcywh', got 'xywh'"):
        valid_boxes(a, "xywh")
