"""common.nn.moe: routers against a numpy port of the reference gate, dispatch variants
against a per-expert loop (values and gradients), capacity drops counted by a slot-by-slot
loop, the bias update, auxiliary losses against their formulas, expert parallelism on 8
simulated devices, and bad input."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common.nn.moe import (
    ROUTERS,
    MoE,
    MoEConfig,
    capacity_dispatch,
    dropless_dispatch,
    expert_capacity,
    expert_parallel_dispatch,
    grouped_matmul,
    load_balancing_loss,
    load_metrics,
    loop_dispatch,
    noaux_tc_route,
    router_z_loss,
    sequence_balance_loss,
    softmax_topk_route,
    tokens_per_expert,
    update_router_bias,
)
from tests.tolerances import F32, F32_LOOSE, assert_close

# ----------------------------------------------------------------------------- references


def np_sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def reference_gate(logits, bias, top_k, n_group, topk_group, norm_topk_prob, scale):
    """numpy port of DeepSeek-V3's MoEGate (topk_method="noaux_tc"), token by token."""
    T, E = logits.shape
    scores = np_sigmoid(logits.astype(np.float64))
    weights, indices = np.zeros((T, top_k)), np.zeros((T, top_k), int)
    size = E // n_group
    for t in range(T):
        choice = scores[t] + bias
        groups = choice.reshape(n_group, size)
        group_score = np.array([np.sort(g)[::-1][:2].sum() for g in groups])
        kept = np.argsort(-group_score)[:topk_group]
        masked = np.full(E, -np.inf)
        for g in kept:
            masked[g * size:(g + 1) * size] = choice[g * size:(g + 1) * size]
        idx = np.argsort(-masked)[:top_k]
        w = scores[t, idx]
        if top_k > 1 and norm_topk_prob:
            w = w / (w.sum() + 1e-20)
        weights[t], indices[t] = w * scale, idx
    return weights, indices


def np_swiglu(x, wg, wu, wd):
    g = x @ wg
    return ((g / (1 + np.exp(-g))) * (x @ wu)) @ wd


def np_moe(x, weights, indices, wg, wu, wd, keep=None):
    """Per-expert numpy loop; copies with keep=False contribute nothing."""
    x, weights = np.asarray(x, np.float64), np.asarray(weights, np.float64)
    y = np.zeros_like(x)
    for e in range(wg.shape[0]):
        for t, j in zip(*np.nonzero(np.asarray(indices) == e), strict=True):
            if keep is None or keep[t, j]:
                y[t] += weights[t, j] * np_swiglu(x[t], *(np.asarray(w, np.float64)[e]
                                                          for w in (wg, wu, wd)))
    return y


def jax_loop_reference(x, weights, indices, wg, wu, wd):
    """A plain Python loop over experts in jax (for gradients)."""
    y = jnp.zeros_like(x)
    for e in range(wg.shape[0]):
        gate = jnp.sum(jnp.where(indices == e, weights, 0.0), axis=1)
        y = y + gate[:, None] * ((jax.nn.silu(x @ wg[e]) * (x @ wu[e])) @ wd[e])
    return y


def np_capacity_keep(indices, E, capacity):
    """Slot-by-slot: first choices of all tokens in order, then second choices, ..."""
    T, k = indices.shape
    count, keep = np.zeros(E, int), np.zeros((T, k), bool)
    for j in range(k):
        for t in range(T):
            e = indices[t, j]
            if count[e] < capacity:
                count[e] += 1
                keep[t, j] = True
    return keep


def problem(T=12, D=6, E=8, F=5, k=2, seed=0, skew=0.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(T, D)).astype(np.float32)
    logits = rng.normal(size=(T, E)) + skew * np.arange(E)[None, :]
    indices = np.argsort(-logits, axis=1)[:, :k].astype(np.int32)
    weights = rng.uniform(0.1, 1.0, size=(T, k)).astype(np.float32)
    wg, wu = (rng.normal(size=(E, D, F)).astype(np.float32) / np.sqrt(D) for _ in range(2))
    wd = rng.normal(size=(E, F, D)).astype(np.float32) / np.sqrt(F)
    return x, weights, indices, wg, wu, wd


# ----------------------------------------------------------------------------- routers


@pytest.mark.parametrize("T,E,k,n_group,topk_group,norm,scale", [
    (7, 8, 2, 1, 1, True, 1.0),
    (9, 16, 3, 4, 2, True, 2.446),
    (5, 64, 6, 8, 3, False, 1.0),
    (6, 12, 1, 3, 1, True, 1.5),
])
def test_noaux_tc_matches_reference_gate(T, E, k, n_group, topk_group, norm, scale):
    rng = np.random.default_rng(T * E)
    logits = rng.normal(size=(T, E)).astype(np.float32)
    bias = (0.3 * rng.normal(size=E)).astype(np.float32)
    w_ref, i_ref = reference_gate(logits, bias.astype(np.float64), k, n_group, topk_group,
                                  norm, scale)
    route = jax.jit(lambda z, b: noaux_tc_route(
        z, b, top_k=k, n_group=n_group, topk_group=topk_group, norm_topk_prob=norm,
        routed_scaling_factor=scale))
    w, i = route(logits, bias)
    np.testing.assert_array_equal(np.sort(i, axis=1), np.sort(i_ref, axis=1))
    order, order_ref = np.argsort(i, axis=1), np.argsort(i_ref, axis=1)
    assert_close(np.take_along_axis(np.asarray(w), order, 1),
                 np.take_along_axis(w_ref, order_ref, 1))


def test_noaux_tc_bias_steers_selection_not_weights():
    logits = jnp.zeros((1, 4))
    w, i = noaux_tc_route(logits, jnp.array([0.0, 1.0, 0.0, 2.0]), top_k=2,
                          norm_topk_prob=False, routed_scaling_factor=3.0)
    assert sorted(i[0].tolist()) == [1, 3]
    assert_close(w, np.full((1, 2), 1.5))  # 3 · σ(0): the uncorrected score


def test_softmax_topk_matches_numpy():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(10, 6)).astype(np.float32)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    idx = np.argsort(-p, axis=1)[:, :3]
    w_ref = np.take_along_axis(p, idx, 1)
    w, i = softmax_topk_route(logits, top_k=3, norm_topk_prob=False)
    np.testing.assert_array_equal(i, idx)
    assert_close(w, w_ref)
    w, _ = softmax_topk_route(logits, top_k=3)
    assert_close(w, w_ref / w_ref.sum(1, keepdims=True))


@pytest.mark.parametrize("name", ROUTERS.names())
def test_router_suite(name):
    """Shared suite: every registered router."""
    E, k, T = 8, 2, 12
    cfg = MoEConfig(d_model=4, num_experts=E, top_k=k, expert_dim=4, router=name,
                    aux_loss_coef=0.01, z_loss_coef=0.001, seq_aux_loss_coef=0.01)
    router = ROUTERS.get(name)
    logits = jax.random.normal(jax.random.key(0), (T, E))
    out = router(logits, jnp.zeros(E), cfg, 4)  # eager
    assert out.weights.shape == (T, k) and out.indices.shape == (T, k)
    assert out.weights.dtype == jnp.float32 and out.indices.dtype == jnp.int32
    assert np.all(np.asarray(out.weights) >= 0)
    idx = np.asarray(out.indices)
    assert idx.min() >= 0 and idx.max() < E
    assert all(len(set(row)) == k for row in idx.tolist())
    assert out.aux_loss.shape == () and np.isfinite(out.aux_loss)
    jitted = jax.jit(lambda z: router(z, jnp.zeros(E), cfg, 4))(logits)
    np.testing.assert_array_equal(jitted.indices, out.indices)
    assert_close(jitted.weights, out.weights)
    grad = jax.jit(jax.grad(lambda z: jnp.sum(router(z, jnp.zeros(E), cfg, 4).weights ** 2)
                            + router(z, jnp.zeros(E), cfg, 4).aux_loss))(logits)
    assert np.all(np.isfinite(grad)) and np.any(grad != 0)
    with pytest.raises(ValueError, match="bias"):
        router(logits, jnp.zeros(E + 1), cfg, 4)
    with pytest.raises(ValueError, match="logits"):
        router(logits[0], jnp.zeros(E), cfg, 4)


# ----------------------------------------------------------------------------- losses


def test_aux_losses_match_formulas():
    rng = np.random.default_rng(2)
    T, E, k, S = 12, 6, 2, 4
    logits = rng.normal(size=(T, E)).astype(np.float32)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    idx = rng.permuted(np.tile(np.arange(E), (T, 1)), axis=1)[:, :k]
    counts = np.array([(idx == i).sum() for i in range(E)])
    assert_close(tokens_per_expert(idx, E), counts)
    f = counts / (T * k)
    assert_close(load_balancing_loss(p, idx), E * np.sum(f * p.mean(0)))
    lse = np.log(np.exp(logits.astype(np.float64)).sum(1))
    assert_close(router_z_loss(logits), np.mean(lse**2))
    s = np_sigmoid(logits.astype(np.float64))
    total = 0.0
    for b in range(T // S):
        rows = slice(b * S, (b + 1) * S)
        f_b = np.array([(idx[rows] == i).sum() for i in range(E)]) * E / (k * S)
        P_b = (s[rows] / s[rows].sum(1, keepdims=True)).mean(0)
        total += np.sum(f_b * P_b)
    assert_close(sequence_balance_loss(s, idx, S), total / (T // S))
    with pytest.raises(ValueError, match="seq_len"):
        sequence_balance_loss(s, idx, 5)


def test_load_metrics_values():
    m = load_metrics(jnp.array([4.0, 2.0, 2.0, 0.0]))
    assert_close(m["max_violation"], 1.0)
    q = np.array([0.5, 0.25, 0.25])
    assert_close(m["entropy"], -np.sum(q * np.log(q)) / np.log(4))
    assert_close(load_metrics(jnp.ones(5))["entropy"], 1.0)


def test_bias_update_direction_and_balancing():
    bias = update_router_bias(jnp.zeros(4), jnp.array([9.0, 1.0, 4.0, 2.0]), 0.01)
    assert_close(bias, [-0.01, 0.01, 0.0, 0.01])
    with pytest.raises(ValueError, match="load"):
        update_router_bias(jnp.zeros(4), jnp.zeros(3), 0.01)
    # fixed skewed logits: the bias alone evens the load out
    E, k = 8, 2
    logits = jax.random.normal(jax.random.key(3), (256, E)) + jnp.linspace(0, 2, E)[None]

    @jax.jit
    def step(bias, _):
        _, idx = noaux_tc_route(logits, bias, top_k=k)
        load = tokens_per_expert(idx, E)
        return update_router_bias(bias, load, 0.02), load_metrics(load)["max_violation"]

    bias, vio = jax.lax.scan(step, jnp.zeros(E), None, length=200)
    assert float(vio[-20:].mean()) < 0.25 * float(vio[0])
    assert float(bias[-1]) < float(bias[0])  # the favoured expert was pushed down


# ----------------------------------------------------------------------------- dispatch


@pytest.mark.parametrize("method", ["ragged", "blocked"])
def test_grouped_matmul_matches_per_group_products(method):
    rng = np.random.default_rng(6)
    sizes = np.array([3, 0, 9, 1, 0, 4])  # empty groups; 3 trailing rows in no group
    xs = rng.normal(size=(20, 5)).astype(np.float32)
    w = rng.normal(size=(6, 5, 7)).astype(np.float32)
    ref = np.zeros((20, 7))
    start = 0
    for g, n in enumerate(sizes):
        ref[start:start + n] = xs[start:start + n].astype(np.float64) @ w[g]
        start += n
    fn = jax.jit(lambda a, b: grouped_matmul(a, b, jnp.asarray(sizes), method=method,
                                             block_size=4))
    assert_close(fn(xs, w), ref, F32_LOOSE)
    grad = jax.jit(jax.grad(lambda a, b: jnp.sum(fn(a, b) ** 2), argnums=1))(xs, w)
    start = 0
    for g, n in enumerate(sizes):  # d/dW_g Σ (X_g W_g)² = 2 X_gᵀ X_g W_g
        rows = xs[start:start + n].astype(np.float64)
        assert_close(grad[g], 2 * rows.T @ rows @ w[g], F32_LOOSE)
        start += n
    with pytest.raises(ValueError, match="group_sizes"):
        grouped_matmul(xs, w, jnp.asarray(sizes[:-1]), method=method)
    with pytest.raises(ValueError, match="method"):
        grouped_matmul(xs, w, jnp.asarray(sizes), method="dense")


def test_dispatch_values_match_per_expert_loop():
    x, w, idx, wg, wu, wd = problem()
    ref = np_moe(x, w, idx, wg, wu, wd)
    for method in ("ragged", "blocked"):
        out = jax.jit(lambda *a, m=method: dropless_dispatch(*a, method=m))(x, w, idx, wg, wu, wd)
        assert_close(out, ref, F32_LOOSE)
    assert_close(loop_dispatch(x, w, idx, wg, wu, wd), ref, F32_LOOSE)
    y, dropped = capacity_dispatch(x, w, idx, wg, wu, wd, capacity=x.shape[0])
    assert int(dropped) == 0
    assert_close(y, ref, F32_LOOSE)


def test_dispatch_gradients_match_loop():
    x, w, idx, wg, wu, wd = problem(T=10, E=4, seed=4)

    def grads(fn):
        return jax.jit(jax.grad(lambda *a: jnp.sum(jnp.sin(fn(a[0], a[1], idx, *a[2:]))),
                                argnums=(0, 1, 2, 3, 4)))(x, w, wg, wu, wd)

    ref = grads(jax_loop_reference)
    for fn in (functools.partial(dropless_dispatch, method="ragged"),
               functools.partial(dropless_dispatch, method="blocked", block_size=4),
               loop_dispatch, lambda *a: capacity_dispatch(*a, capacity=10)[0]):
        for g, r in zip(grads(fn), ref, strict=True):
            assert_close(g, r, F32_LOOSE)


def test_capacity_drops_counted_exactly():
    x, w, idx, wg, wu, wd = problem(T=16, E=4, k=2, seed=5, skew=1.0)
    for capacity in (2, 5):
        keep = np_capacity_keep(idx, 4, capacity)
        y, dropped = capacity_dispatch(x, w, idx, wg, wu, wd, capacity=capacity)
        assert int(dropped) == int((~keep).sum()) > 0
        assert_close(y, np_moe(x, w, idx, wg, wu, wd, keep=keep), F32_LOOSE)
    assert expert_capacity(16, 4, 2, 1.25) == 10


def test_dispatch_bad_input():
    x, w, idx, wg, wu, wd = problem()
    with pytest.raises(ValueError, match="w_down"):
        dropless_dispatch(x, w, idx, wg, wu, wd[:, :-1])
    with pytest.raises(ValueError, match="weights"):
        capacity_dispatch(x, w[:, :1], idx, wg, wu, wd, capacity=4)
    with pytest.raises(ValueError, match="indices"):
        loop_dispatch(x, w, idx.astype(np.float32), wg, wu, wd)
    with pytest.raises(ValueError, match="capacity"):
        capacity_dispatch(x, w, idx, wg, wu, wd, capacity=0)
    with pytest.raises(ValueError, match="mesh"):
        expert_parallel_dispatch(x, w, idx, wg, wu, wd)


# ----------------------------------------------------------------------------- routing errors


@pytest.mark.parametrize("kwargs,match", [
    (dict(top_k=9), "top_k"),
    (dict(n_group=3), "n_group"),
    (dict(n_group=2, topk_group=3), "topk_group"),
    (dict(top_k=5, n_group=4, topk_group=1), "top_k"),
])
def test_routing_bad_sizes(kwargs, match):
    args = dict(top_k=2, n_group=1, topk_group=1) | kwargs
    with pytest.raises(ValueError, match=match):
        noaux_tc_route(jnp.zeros((3, 8)), jnp.zeros(8), **args)
    with pytest.raises(ValueError, match=match):
        MoEConfig(d_model=4, num_experts=8, expert_dim=4, **args)


def test_bias_of_wrong_length_and_bad_config():
    with pytest.raises(ValueError, match="bias"):
        noaux_tc_route(jnp.zeros((3, 8)), jnp.zeros(7), top_k=2)
    bad = jnp.zeros(8).at[3].set(jnp.nan)
    with pytest.raises(ValueError, match="bias must be finite"):
        noaux_tc_route(jnp.zeros((3, 8)), bad, top_k=2)
    w, _ = jax.jit(lambda b: noaux_tc_route(jnp.zeros((3, 8)), b, top_k=2))(bad)
    assert np.all(np.isnan(w))  # traced: poisoned, nothing plausible comes out
    with pytest.raises(KeyError, match="router"):
        MoEConfig(d_model=4, num_experts=8, top_k=2, expert_dim=4, router="nope")
    with pytest.raises(ValueError, match="dispatch"):
        MoEConfig(d_model=4, num_experts=8, top_k=2, expert_dim=4, dispatch="nope")
    with pytest.raises(ValueError, match="capacity_factor"):
        MoEConfig(d_model=4, num_experts=8, top_k=2, expert_dim=4, capacity_factor=0.0)


# ----------------------------------------------------------------------------- layer


def _layer(**kwargs):
    cfg = MoEConfig(d_model=8, num_experts=8, top_k=2, expert_dim=6, num_shared_experts=1,
                    n_group=4, topk_group=2, routed_scaling_factor=1.5)
    return MoE(cfg.__class__(**{**cfg.__dict__, **kwargs}), rngs=nnx.Rngs(0))


def test_layer_is_routed_plus_shared_and_reports_load():
    layer = _layer()
    x = jax.random.normal(jax.random.key(1), (2, 4, 8))
    y, aux = nnx.jit(lambda m, v: m(v))(layer, x)
    xt = np.asarray(x).reshape(-1, 8)
    logits = xt @ np.asarray(layer.router_kernel[...])
    w_ref, i_ref = reference_gate(logits, np.zeros(8), 2, 4, 2, True, 1.5)
    wg, wu, wd = (np.asarray(p[...]) for p in (layer.w_gate, layer.w_up, layer.w_down))
    shared = np_swiglu(xt, *(np.asarray(m.kernel[...]) for m in (
        layer.shared.gate_proj, layer.shared.up_proj, layer.shared.down_proj)))
    assert_close(y.reshape(-1, 8), np_moe(xt, w_ref, i_ref, wg, wu, wd) + shared, F32_LOOSE)
    assert_close(aux.tokens_per_expert, [(i_ref == e).sum() for e in range(8)])
    assert int(aux.dropped) == 0


def test_layer_router_runs_in_float32_under_bfloat16():
    layer = _layer(dtype=jnp.bfloat16)
    x = jax.random.normal(jax.random.key(2), (6, 8))
    y, _ = nnx.jit(lambda m, v: m(v))(layer, x)
    assert y.dtype == jnp.bfloat16
    routed = jax.make_jaxpr(lambda v: layer.route(v.astype(jnp.bfloat16)))(x)
    assert "f32[6,8]" in str(routed)  # the router's logits are float32
    with pytest.raises(ValueError, match="x must have shape"):
        layer(jnp.ones((2, 7)))
    with pytest.raises(ValueError, match="config"):
        MoE("moe", rngs=nnx.Rngs(0))


def test_layer_dispatch_variants_agree():
    x = jax.random.normal(jax.random.key(3), (2, 6, 8))
    call = nnx.jit(lambda m, v: m(v)[0])
    outs = {d: call(_layer(dispatch=d, capacity_factor=4.0), x)
            for d in ("dropless", "capacity")}
    assert_close(outs["capacity"], outs["dropless"], F32)


# ----------------------------------------------------------------------------- expert parallel


def test_expert_parallel_equals_single_device():
    from jax.sharding import Mesh

    # 8 devices as 4 expert shards (2 of the 8 experts each) × 2 replicas; the shapes of
    # _layer, so initialisation is already compiled
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("expert", "data"))
    single = _layer(aux_loss_coef=0.01)
    sharded = _layer(aux_loss_coef=0.01, dispatch="expert_parallel")
    x = jax.random.normal(jax.random.key(4), (8, 4, 8))

    def loss(model, x):
        y, aux = model(x, mesh=mesh)
        return jnp.sum(jnp.sin(y)) + aux.aux_loss, y

    (l1, y1), g1 = nnx.jit(nnx.value_and_grad(loss, has_aux=True, argnums=(0, 1)))(single, x)
    (l2, y2), g2 = nnx.jit(nnx.value_and_grad(loss, has_aux=True, argnums=(0, 1)))(sharded, x)
    assert_close(y2, y1, F32_LOOSE)
    assert_close(l2, l1, F32_LOOSE)
    for a, b in zip(jax.tree.leaves(g2), jax.tree.leaves(g1), strict=True):
        assert_close(a, b, dict(rtol=1e-4, atol=1e-4))


@pytest.mark.slow
def test_expert_parallel_tight_buffer_counts_drops():
    from jax.sharding import Mesh

    mesh = Mesh(np.array(jax.devices()[:8]), ("expert",))
    x, w, idx, wg, wu, wd = problem(T=16, E=8, k=2, seed=7, skew=1.5)
    y, dropped = expert_parallel_dispatch(x, w, idx, wg, wu, wd, mesh=mesh,
                                          capacity_factor=0.5)
    # per source device (2 tokens, 4 copies) the buffer to each device holds 1 copy
    keep = np.zeros(idx.shape, bool)
    for p in range(8):
        used = np.zeros(8, int)
        rows = [(t, j) for t in range(2 * p, 2 * p + 2) for j in range(2)]
        for t, j in sorted(rows, key=lambda tj: (idx[tj], tj[0] * 2 + tj[1])):
            if used[idx[t, j]] < 1:
                used[idx[t, j]] += 1
                keep[t, j] = True
    assert int(dropped) == int((~keep).sum()) > 0
    assert_close(y, np_moe(x, w, idx, wg, wu, wd, keep=keep), F32_LOOSE)
