"""The optimizer builder against optax chains composed by hand, closed-form
schedules, and its error messages."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from common.optim import (
    OPTIMIZERS,
    OptimConfig,
    build_optimizer,
    build_schedule,
    decay_mask,
    group_labels,
)
from common.registry import UnknownNameError
from tests.tolerances import F32, assert_close


def _params():
    keys = jax.random.split(jax.random.key(0), 4)
    return {
        "backbone": {"dense": {"kernel": jax.random.normal(keys[0], (4, 3)),
                               "bias": jax.random.normal(keys[1], (3,))}},
        "head": {"kernel": jax.random.normal(keys[2], (3, 2)),
                 "norm": {"scale": jnp.ones((2,))}},
        "embed": jax.random.normal(keys[3], (5, 4)),
    }


def _grads(step):
    params = _params()
    return jax.tree.map(lambda p: jnp.sin(p * (step + 1.0)) + 0.3 * step, params)


def _run(tx, steps=6):
    params = _params()
    state = tx.init(params)
    for t in range(steps):
        updates, state = tx.update(_grads(t), state, params)
        params = optax.apply_updates(params, updates)
    return params


def _assert_trees_close(a, b, tol=F32):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert_close(x, y, tol)


def _hand_mask(params):
    """Decay only matrices not named like norms, written independently of the builder."""
    return {
        "backbone": {"dense": {"kernel": True, "bias": False}},
        "head": {"kernel": True, "norm": {"scale": False}},
        "embed": True,
    }


def test_decay_mask_excludes_biases_and_norms():
    assert decay_mask(_params()) == _hand_mask(_params())


@pytest.mark.parametrize(
    "config, reference",
    [
        (OptimConfig(name="sgd", learning_rate=0.1), lambda: optax.sgd(0.1)),
        (OptimConfig(name="momentum", learning_rate=0.1, kwargs={"momentum": 0.8}),
         lambda: optax.sgd(0.1, momentum=0.8)),
        (OptimConfig(name="nesterov", learning_rate=0.1),
         lambda: optax.sgd(0.1, momentum=0.9, nesterov=True)),
        (OptimConfig(name="adam", learning_rate=1e-2, kwargs={"b1": 0.8}),
         lambda: optax.adam(1e-2, b1=0.8)),
        (OptimConfig(name="rmsprop", learning_rate=1e-2), lambda: optax.rmsprop(1e-2)),
        (OptimConfig(name="adamw", learning_rate=1e-2, weight_decay=0.1),
         lambda: optax.adamw(1e-2, weight_decay=0.1, mask=_hand_mask)),
        (OptimConfig(name="lamb", learning_rate=1e-2, weight_decay=0.1),
         lambda: optax.lamb(1e-2, weight_decay=0.1, mask=_hand_mask)),
        (OptimConfig(name="lion", learning_rate=1e-3, weight_decay=0.1),
         lambda: optax.lion(1e-3, weight_decay=0.1, mask=_hand_mask)),
        (OptimConfig(name="adafactor", learning_rate=1e-2), lambda: optax.adafactor(1e-2)),
        # Adam with decoupled decay through the generic path equals optax.adamw.
        (OptimConfig(name="adam", learning_rate=1e-2, weight_decay=0.1),
         lambda: optax.adamw(1e-2, weight_decay=0.1, mask=_hand_mask)),
        (OptimConfig(name="adamw", learning_rate=1e-2, clip_norm=0.5),
         lambda: optax.chain(optax.clip_by_global_norm(0.5), optax.adamw(1e-2, weight_decay=0.0))),
    ],
    ids=lambda v: v.name if isinstance(v, OptimConfig) else "",
)
def test_builder_equals_hand_composed_chain(config, reference):
    _assert_trees_close(_run(build_optimizer(config)), _run(reference()))


def test_sgd_weight_decay_is_decoupled_and_masked():
    """One SGD step with decay: p ← p − lr (g + λ p) on decayed leaves, p − lr g elsewhere."""
    lr, wd = 0.1, 0.5
    params, grads = _params(), _grads(0)
    tx = build_optimizer(name="sgd", learning_rate=lr, weight_decay=wd)
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    mask = _hand_mask(params)
    expected = jax.tree.map(lambda p, g, m: p - lr * (g + (wd * p if m else 0.0)),
                            params, grads, mask)
    _assert_trees_close(new, expected)


def test_warmup_cosine_schedule_closed_form():
    peak, warmup, total, end = 1.0, 10, 110, 0.1
    schedule = build_schedule(OptimConfig(learning_rate=peak, schedule="cosine",
                                          warmup_steps=warmup, total_steps=total,
                                          end_factor=end))
    for t in [0, 5, 10, 30, 60, 110, 200]:
        if t < warmup:
            expected = peak * t / warmup
        else:
            progress = min(t - warmup, total - warmup) / (total - warmup)
            expected = peak * ((1 - end) * 0.5 * (1 + np.cos(np.pi * progress)) + end)
        assert_close(schedule(t), expected, dict(rtol=1e-6, atol=1e-7))


def test_linear_and_step_schedules_closed_form():
    linear = build_schedule(OptimConfig(learning_rate=2.0, schedule="linear", warmup_steps=4,
                                        total_steps=24, end_factor=0.5))
    for t, expected in [(0, 0.0), (2, 1.0), (4, 2.0), (14, 1.5), (24, 1.0), (50, 1.0)]:
        assert_close(linear(t), expected, dict(rtol=1e-6, atol=1e-7))
    step = build_schedule(OptimConfig(learning_rate=1.0, schedule="step", step_every=10,
                                      step_factor=0.5))
    for t, expected in [(0, 1.0), (9, 1.0), (10, 0.5), (25, 0.25)]:
        assert_close(step(t), expected, dict(rtol=1e-6, atol=1e-7))


def test_schedule_drives_the_update():
    """With SGD the update is exactly −lr(t)·g, so the schedule is visible in it."""
    config = OptimConfig(name="sgd", learning_rate=1.0, schedule="linear", warmup_steps=2,
                         total_steps=6)
    tx = build_optimizer(config)
    schedule = build_schedule(config)
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    for t in range(6):
        updates, state = tx.update({"w": jnp.ones(3)}, state, params)
        assert_close(updates["w"], -schedule(t) * np.ones(3))


def test_group_learning_rates_by_path():
    params = _params()
    labels = group_labels(params, [("^backbone/", 0.1), ("head", 2.0)])
    assert labels["backbone"]["dense"]["kernel"] == "group0"
    assert labels["head"]["norm"]["scale"] == "group1"
    assert labels["embed"] == "rest"
    grouped = build_optimizer(name="adam", learning_rate=1e-2,
                              group_lr=(("^backbone/", 0.1), ("head", 2.0)))
    plain = build_optimizer(name="adam", learning_rate=1e-2)
    g_updates, _ = grouped.update(_grads(0), grouped.init(params), params)
    p_updates, _ = plain.update(_grads(0), plain.init(params), params)
    assert_close(g_updates["backbone"]["dense"]["kernel"],
                 0.1 * p_updates["backbone"]["dense"]["kernel"])
    assert_close(g_updates["head"]["kernel"], 2.0 * p_updates["head"]["kernel"])
    assert_close(g_updates["embed"], p_updates["embed"])


def test_clipping_bounds_the_global_norm():
    tx = build_optimizer(name="sgd", learning_rate=1.0, clip_norm=0.25)
    grads = jax.tree.map(lambda g: 100.0 * g, _grads(1))
    updates, _ = tx.update(grads, tx.init(_params()), _params())
    assert_close(optax.tree_utils.tree_norm(updates), 0.25)


def test_gradient_accumulation_equals_mean_gradient_step():
    """k micro-steps with accumulate_steps=k equal one step on the mean gradient."""
    k = 3
    params = _params()
    micro = [_grads(t) for t in range(k)]
    acc = build_optimizer(name="adam", learning_rate=1e-2, accumulate_steps=k)
    state = acc.init(params)
    p_acc = params
    for i, g in enumerate(micro):
        updates, state = acc.update(g, state, p_acc)
        p_acc = optax.apply_updates(p_acc, updates)
        if i < k - 1:  # nothing moves until the k-th micro-batch
            _assert_trees_close(p_acc, params, dict(rtol=0, atol=0))
    mean = jax.tree.map(lambda *gs: sum(gs) / k, *micro)
    single = optax.adam(1e-2)
    updates, _ = single.update(mean, single.init(params), params)
    _assert_trees_close(p_acc, optax.apply_updates(params, updates))


def test_every_registered_optimizer_builds_and_descends():
    """Each optimizer lowers a convex quadratic within 50 steps (the shared family test)."""
    target = jnp.array([1.0, -2.0, 0.5, 3.0])

    def loss(p):
        return jnp.sum((p["w"] - target) ** 2)

    for name in OPTIMIZERS.names():
        tx = build_optimizer(name=name, learning_rate=0.05)
        params = {"w": jnp.zeros((4,))}
        state = tx.init(params)
        for _ in range(50):
            updates, state = tx.update(jax.grad(loss)(params), state, params)
            params = optax.apply_updates(params, updates)
        assert float(loss(params)) < float(loss({"w": jnp.zeros(4)})), name
        assert np.all(np.isfinite(params["w"])), name


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(UnknownNameError, match="unknown optimizer 'adamm'.*adamw"):
        build_optimizer(name="adamm")
    with pytest.raises(UnknownNameError, match="unknown schedule 'cosin'.*cosine"):
        build_optimizer(schedule="cosin")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"clip_norm": 0.0}, "clip_norm"),
        ({"accumulate_steps": 0}, "accumulate_steps"),
        ({"schedule": "cosine"}, "total_steps"),
        ({"schedule": "cosine", "warmup_steps": 10, "total_steps": 10}, "exceed warmup_steps"),
        ({"group_lr": (("(", 0.1),)}, "not a valid regex"),
        ({"warmup_steps": -1}, "warmup_steps"),
    ],
)
def test_bad_values_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_optimizer(**overrides)
