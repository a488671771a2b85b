"""DETR's matching cost and set criterion against a direct numpy re-derivation of the
reference formulas (float64, scipy for the matching), with 0, 1 and many targets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec
from scipy.optimize import linear_sum_assignment as scipy_lsa

from common.sharding import make_mesh
from tests.tolerances import F32_LOOSE, F64, assert_close
from vision.detr import (
    CriterionConfig,
    check_targets,
    hungarian_match,
    matcher_cost,
    set_criterion,
)

# ----------------------------------------------------------------------------- numpy reference


def np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_xyxy(b):
    return np.concatenate([b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2], -1)


def np_giou_matrix(a, b):
    """Pairwise GIoU, written out with broadcasting (positive-area boxes)."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lo = np.maximum(a[:, None, :2], b[None, :, :2])  # [N, M, 2]
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    iw, ih = np.moveaxis(np.clip(hi - lo, 0, None), -1, 0)
    inter = iw * ih
    union = area_a[:, None] + area_b[None, :] - inter
    cw = np.maximum(a[:, None, 2], b[None, :, 2]) - np.minimum(a[:, None, 0], b[None, :, 0])
    ch = np.maximum(a[:, None, 3], b[None, :, 3]) - np.minimum(a[:, None, 1], b[None, :, 1])
    enclosing = cw * ch
    return inter / union - (enclosing - union) / enclosing


def np_matcher_cost(logits, boxes, labels, tboxes, wc=1.0, wb=5.0, wg=2.0):
    """DETR HungarianMatcher.forward for one image."""
    prob = np_softmax(logits)
    cost_class = -prob[:, labels]
    cost_bbox = np.abs(boxes[:, None, :] - tboxes[None, :, :]).sum(-1)  # cdist p=1
    cost_giou = -np_giou_matrix(np_xyxy(boxes), np_xyxy(tboxes))
    return wb * cost_bbox + wc * cost_class + wg * cost_giou


def np_criterion(logits_l, boxes_l, targets, eos_coef=0.1, weights=(1.0, 5.0, 2.0)):
    """DETR SetCriterion (labels, boxes, cardinality) with aux outputs, in float64.

    ``targets``: list of (labels [T_b], boxes [T_b, 4]) per image.
    """
    L, B, Q, C1 = logits_l.shape
    num_boxes = max(sum(len(t[0]) for t in targets), 1)
    out = {}
    total = 0.0
    for layer in range(L):
        logits, boxes = logits_l[layer], boxes_l[layer]
        indices = []
        for b, (lab, tb) in enumerate(targets):
            if len(lab) == 0:
                indices.append((np.zeros(0, int), np.zeros(0, int)))
                continue
            indices.append(scipy_lsa(np_matcher_cost(logits[b], boxes[b], lab, tb)))
        target_classes = np.full((B, Q), C1 - 1)
        for b, (src, tgt) in enumerate(indices):
            target_classes[b, src] = targets[b][0][tgt]
        w = np.ones(C1)
        w[-1] = eos_coef
        logp = np.log(np_softmax(logits))
        nll = -np.take_along_axis(logp, target_classes[..., None], -1)[..., 0]
        wt = w[target_classes]
        loss_ce = (wt * nll).sum() / wt.sum()
        src_boxes = np.concatenate([boxes[b, s] for b, (s, _) in enumerate(indices)]).reshape(-1, 4)
        tgt_boxes = np.concatenate([targets[b][1][t] for b, (_, t) in enumerate(indices)]
                                   ).reshape(-1, 4)
        loss_bbox = np.abs(src_boxes - tgt_boxes).sum() / num_boxes
        if len(src_boxes):
            giou = np.diag(np_giou_matrix(np_xyxy(src_boxes), np_xyxy(tgt_boxes)))
        else:
            giou = np.zeros(0)
        loss_giou = (1 - giou).sum() / num_boxes
        suffix = "" if layer == L - 1 else f"_{layer}"
        out["loss_ce" + suffix] = loss_ce
        out["loss_bbox" + suffix] = loss_bbox
        out["loss_giou" + suffix] = loss_giou
        total += weights[0] * loss_ce + weights[1] * loss_bbox + weights[2] * loss_giou
        if layer == L - 1:
            card = (logits.argmax(-1) != C1 - 1).sum(1)
            out["cardinality_error"] = np.abs(card - np.array([len(t[0]) for t in targets])
                                              ).mean()
            correct = [logits[b, s].argmax(-1) == targets[b][0][t]
                       for b, (s, t) in enumerate(indices)]
            correct = np.concatenate(correct) if correct else np.zeros(0)
            out["class_error"] = 100.0 - (100.0 * correct.mean() if correct.size else 0.0)
    return total, out


def _random_case(seed, B=3, Q=7, C=4, L=3, counts=(0, 1, 5)):
    rng = np.random.default_rng(seed)
    T = max(max(counts), 1)
    logits = rng.normal(size=(L, B, Q, C + 1)) * 2
    boxes = np.concatenate([rng.uniform(0.2, 0.8, (L, B, Q, 2)),
                            rng.uniform(0.05, 0.4, (L, B, Q, 2))], -1)
    labels = np.zeros((B, T), np.int32)
    tboxes = np.zeros((B, T, 4))
    mask = np.zeros((B, T), bool)
    targets = []
    for b, n in enumerate(counts):
        lab = rng.integers(0, C, n)
        tb = np.concatenate([rng.uniform(0.25, 0.75, (n, 2)), rng.uniform(0.05, 0.4, (n, 2))], -1)
        labels[b, :n], tboxes[b, :n], mask[b, :n] = lab, tb, True
        targets.append((lab, tb))
    return logits, boxes, labels, tboxes, mask, targets


# ----------------------------------------------------------------------------- tests

# One jitted criterion for the whole module: same shapes and config compile once.
criterion = jax.jit(set_criterion, static_argnums=(5,))


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("num_targets", [0, 1, 6])
def test_matcher_cost_matches_numpy(num_targets):
    logits, boxes, _, _, _, _ = _random_case(0)
    rng = np.random.default_rng(num_targets)
    lab = rng.integers(0, 4, num_targets)
    tb = np.concatenate([rng.uniform(0.3, 0.7, (num_targets, 2)),
                         rng.uniform(0.1, 0.5, (num_targets, 2))], -1)
    got = matcher_cost(jnp.asarray(logits[0, 0]), jnp.asarray(boxes[0, 0]), jnp.asarray(lab),
                       jnp.asarray(tb))
    assert got.shape == (7, num_targets)
    if num_targets:
        assert_close(got, np_matcher_cost(logits[0, 0], boxes[0, 0], lab, tb), F64)
    weighted = matcher_cost(jnp.asarray(logits[0, 0]), jnp.asarray(boxes[0, 0]),
                            jnp.asarray(lab), jnp.asarray(tb), cost_class=2.0, cost_bbox=0.5,
                            cost_giou=0.0)
    if num_targets:
        assert_close(weighted, np_matcher_cost(logits[0, 0], boxes[0, 0], lab, tb, 2.0, 0.5, 0.0),
                     F64)


@pytest.mark.usefixtures("x64")
def test_set_criterion_matches_numpy_with_aux_and_0_1_many_targets():
    logits, boxes, labels, tboxes, mask, targets = _random_case(1)
    expected_total, expected = np_criterion(logits, boxes, targets)
    total, metrics = criterion(*(jnp.asarray(x) for x in (logits, boxes, labels, tboxes, mask)))
    assert_close(total, expected_total, F64)
    for key, value in expected.items():
        assert_close(metrics[key], value, F64, err_msg=key)
    assert set(metrics) == set(expected)


@pytest.mark.usefixtures("x64")
def test_set_criterion_eos_coef_no_aux_and_all_empty():
    logits, boxes, labels, tboxes, mask, targets = _random_case(2, counts=(2, 5, 1))
    cfg = CriterionConfig(eos_coef=0.3, aux_loss=False, weight_ce=2.0)
    expected_total, _ = np_criterion(logits[-1:], boxes[-1:], targets, eos_coef=0.3,
                                     weights=(2.0, 5.0, 2.0))
    total, metrics = criterion(*(jnp.asarray(x) for x in (logits, boxes, labels, tboxes, mask)),
                               cfg)
    assert_close(total, expected_total, F64)
    assert "loss_ce_0" not in metrics
    # No target anywhere: boxes contribute 0, N clamps to 1, every query is "no object".
    empty = np.zeros_like(mask)
    total, metrics = criterion(*(jnp.asarray(x) for x in (logits, boxes, labels, tboxes, empty)))
    ce_expected = np_criterion(logits, boxes, [(np.zeros(0, int), np.zeros((0, 4)))] * 3)[1]
    assert_close(metrics["loss_ce"], ce_expected["loss_ce"], F64)
    assert float(metrics["loss_bbox"]) == 0.0 and float(metrics["loss_giou"]) == 0.0


def test_criterion_gradients_finite_and_matchers_agree():
    logits, boxes, labels, tboxes, mask, _ = _random_case(3)
    args = [jnp.asarray(x, jnp.float32) for x in (logits, boxes)]
    rest = (jnp.asarray(labels), jnp.asarray(tboxes, jnp.float32), jnp.asarray(mask))
    loss = lambda lg, bx, m: set_criterion(lg, bx, *rest, CriterionConfig(matcher=m))[0]
    grads = jax.jit(jax.grad(lambda lg, bx: loss(lg, bx, "jv"), argnums=(0, 1)))(*args)
    assert all(np.all(np.isfinite(g)) for g in grads)
    values = {m: float(jax.jit(lambda lg, bx, m=m: loss(lg, bx, m))(*args))
              for m in ("jv", "scipy")}
    assert_close(values["jv"], values["scipy"], F32_LOOSE)


def test_hungarian_match_pads_and_respects_mask():
    logits, boxes, labels, tboxes, mask, targets = _random_case(4, counts=(0, 1, 5))
    q4t, t4q = hungarian_match(*(jnp.asarray(x, jnp.float32) if x.dtype.kind == "f" else
                                 jnp.asarray(x) for x in (logits[-1], boxes[-1], labels, tboxes,
                                                         mask)))
    assert q4t.shape == (3, 5) and t4q.shape == (3, 7)
    assert np.all(np.asarray(q4t)[~mask] == -1)
    assert np.all(np.asarray(t4q)[0] == -1)
    for b, (lab, tb) in enumerate(targets):
        if len(lab):
            src, tgt = scipy_lsa(np_matcher_cost(logits[-1, b], boxes[-1, b], lab, tb))
            np.testing.assert_array_equal(np.asarray(q4t)[b, tgt], src)


def test_sharded_batch_equals_single_device():
    logits, boxes, labels, tboxes, mask, _ = _random_case(5, B=8, counts=(0, 1, 2, 3, 4, 5, 6, 2))
    arrays = [jnp.asarray(x, jnp.float32) if x.dtype.kind == "f" else jnp.asarray(x)
              for x in (logits, boxes, labels, tboxes, mask)]
    fn = jax.jit(lambda *a: set_criterion(*a)[0])
    single = fn(*arrays)
    mesh = make_mesh(data=8)
    spec = [PartitionSpec(None, "data"), PartitionSpec(None, "data"), PartitionSpec("data"),
            PartitionSpec("data"), PartitionSpec("data")]
    sharded = [jax.device_put(a, NamedSharding(mesh, s)) for a, s in zip(arrays, spec,
                                                                          strict=True)]
    assert_close(fn(*sharded), single, F32_LOOSE)


def test_shard_map_axis_name_normalises_like_detr():
    """Per-device losses with ``axis_name``: the box count is the device mean, as in DETR."""
    logits, boxes, labels, tboxes, mask, targets = _random_case(6, B=8, L=1,
                                                               counts=(1, 2, 3, 4, 0, 1, 2, 5))
    mesh = make_mesh(data=8)
    arrays = [jnp.asarray(x, jnp.float32) if x.dtype.kind == "f" else jnp.asarray(x)
              for x in (logits, boxes, labels, tboxes, mask)]
    specs = (PartitionSpec(None, "data"), PartitionSpec(None, "data"), PartitionSpec("data"),
             PartitionSpec("data"), PartitionSpec("data"))

    def per_device(*a):
        return set_criterion(*a, axis_name="data")[1]["loss_bbox"][None]

    per = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=specs,
                                out_specs=PartitionSpec("data")))(*arrays)
    n_global = sum(len(t[0]) for t in targets)
    for d in range(8):
        lab, tb = targets[d]
        if not len(lab):
            assert float(per[d]) == 0.0
            continue
        src, tgt = scipy_lsa(np_matcher_cost(logits[0, d], boxes[0, d], lab, tb))
        expected = np.abs(boxes[0, d, src] - tb[tgt]).sum() / max(n_global / 8, 1)
        assert_close(per[d], expected, F32_LOOSE)


def test_bad_inputs_raise_clear_errors():
    logits, boxes, labels, tboxes, mask, _ = _random_case(7)
    args = [jnp.asarray(x) for x in (logits, boxes, labels, tboxes, mask)]
    with pytest.raises(ValueError, match=r"target labels must be class ids in \[0, num_classes\)"):
        set_criterion(args[0], args[1], args[2].at[2, 0].set(4), *args[3:])
    with pytest.raises(ValueError, match=r"tgt_labels must be class ids in \[0, num_classes\)"):
        matcher_cost(args[0][0, 0], args[1][0, 0], jnp.array([5]), jnp.full((1, 4), 0.3))
    with pytest.raises(ValueError, match=r"tgt_boxes \(cx, cy, w, h\) has a negative width"):
        matcher_cost(args[0][0, 0], args[1][0, 0], jnp.array([1]),
                     jnp.array([[0.9, 0.5, -0.5, 0.2]]))
    with pytest.raises(ValueError, match=r"target boxes contains NaN"):
        set_criterion(args[0], args[1], args[2], args[3].at[1, 0, 0].set(jnp.nan), args[4])
    with pytest.raises(ValueError, match=r"target boxes .* negative width"):
        set_criterion(args[0], args[1], args[2], args[3].at[2, 0, 2].set(-0.1), args[4])
    with pytest.raises(ValueError, match=r"pred_boxes must have shape \[L, B, Q, 4\]"):
        set_criterion(args[0], args[1][..., :3], *args[2:])
    with pytest.raises(ValueError, match=r"target mask must be boolean"):
        set_criterion(*args[:4], args[4].astype(jnp.int32))
    with pytest.raises(ValueError, match=r"tgt_labels must be integer"):
        matcher_cost(args[0][0, 0], args[1][0, 0], jnp.array([1.0]), jnp.full((1, 4), 0.3))
    with pytest.raises(KeyError, match="unknown matcher"):
        set_criterion(*args, CriterionConfig(matcher="nope"))


@pytest.mark.usefixtures("x64")
def test_target_boxes_past_the_image_border_accepted_eagerly_and_jitted():
    """Corners outside [0, 1] (a box partly outside the image): accepted in both modes,
    with the reference formulas' costs and loss on the unclipped box."""
    logits, boxes, labels, tboxes, mask, targets = _random_case(8, counts=(2, 1, 5))
    tboxes[0, 0] = [0.9, 0.1, 0.5, 0.4]  # x1 = 1.15, y0 = -0.1
    tboxes[2, 1] = [-0.05, 0.5, 0.3, 1.2]  # x0 = -0.2, y in [-0.1, 1.1]
    targets = [(lab, tboxes[b, :len(lab)]) for b, (lab, _) in enumerate(targets)]
    check_targets(labels, tboxes, mask, 4)  # eager checks accept them
    cost_args = (logits[-1, 0], boxes[-1, 0], labels[0, :2], tboxes[0, :2])
    expected = np_matcher_cost(*cost_args)
    assert_close(matcher_cost(*cost_args), expected, F64)
    assert_close(jax.jit(matcher_cost)(*cost_args), expected, F64)
    expected_total, _ = np_criterion(logits, boxes, targets)
    total, _ = criterion(*(jnp.asarray(x) for x in (logits, boxes, labels, tboxes, mask)))
    assert_close(total, expected_total, F64)


def test_invalid_real_targets_poison_under_jit_padded_ones_do_not():
    logits, boxes, labels, tboxes, mask, targets = _random_case(9, counts=(2, 1, 3))
    arrays = [jnp.asarray(x, jnp.float32) if x.dtype.kind == "f" else jnp.asarray(x)
              for x in (logits, boxes, labels, tboxes, mask)]
    lg, bx, lab, tb, m = arrays
    # Padded slots may hold anything: an inverted box, NaN, a bad class id.
    tb = tb.at[1, 2].set(jnp.array([0.5, 0.5, -0.2, jnp.nan]))
    lab = lab.at[1, 2].set(-1)
    total, metrics = criterion(lg, bx, lab, tb, m)
    assert np.isfinite(float(total))
    match = jax.jit(hungarian_match)
    for bad in (tb.at[1, 0, 2].set(-0.1), tb.at[1, 0, 1].set(jnp.nan)):  # real target of image 1
        total, metrics = criterion(lg, bx, lab, bad, m)
        assert np.isnan(float(total)) and all(np.isnan(float(v)) for v in metrics.values())
        q4t, t4q = match(lg[-1], bx[-1], lab, bad, m)
        assert np.all(np.asarray(q4t[1]) == -1) and np.all(np.asarray(t4q[1]) == -1)
        src, tgt = scipy_lsa(np_matcher_cost(logits[-1, 2], boxes[-1, 2], *targets[2]))
        np.testing.assert_array_equal(np.asarray(q4t)[2, tgt], src)  # other images unharmed
        cost = np.asarray(jax.jit(matcher_cost)(lg[-1, 1], bx[-1, 1], lab[1, :1], bad[1, :1]))
        assert np.all(np.isnan(cost))
    total, _ = criterion(lg, bx, lab.at[0, 1].set(4), tb, m)  # class id C = 4: not a target
    assert np.isnan(float(total))
    cost = np.asarray(jax.jit(matcher_cost)(lg[-1, 0], bx[-1, 0].at[3, 3].set(-0.1),
                                            lab[0, :2], tb[0, :2]))
    assert np.all(np.isnan(cost[3])) and np.all(np.isfinite(np.delete(cost, 3, axis=0)))
