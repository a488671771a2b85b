"""rl.preference.losses: every registered loss against an independent numpy formula,
the shared family checks (extreme inputs, finite differences, degenerate batches,
reference-free mode), DPO's analytic gradient and fixed points, metrics, the
reward-model and KTO losses, and clear errors for bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common.registry import UnknownNameError
from rl.preference import (
    PREFERENCE_LOSSES,
    bradley_terry_loss,
    kto_kl_estimate,
    kto_loss,
    preference_loss,
    preference_metrics,
    register_preference_loss,
    update_reward_mean,
)
from tests.rl.preference.numpy_reference import (
    LABEL_SMOOTHING,
    OPTION_VARIANTS,
    REFERENCE,
    log_sigmoid,
    sigmoid,
)
from tests.tolerances import F32, F64, assert_close

ALL = PREFERENCE_LOSSES.names()
TRL_NAMES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair",
             "sppo_hard", "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft",
             "sigmoid_norm")


def fixed_inputs(dtype=np.float64):
    """Six pairs of sequence log-probs (all < 0, distinct margins) and lengths."""
    rng = np.random.default_rng(7)
    pc = -rng.uniform(2.0, 30.0, 6)
    pr = -rng.uniform(2.0, 30.0, 6)
    rc = -rng.uniform(2.0, 30.0, 6)
    rr = -rng.uniform(2.0, 30.0, 6)
    lc = rng.integers(2, 12, 6)
    lr = rng.integers(2, 12, 6)
    return (*tuple(x.astype(dtype) for x in (pc, pr, rc, rr)), lc, lr)


def call(name, pc, pr, rc, rr, lc, lr, *, beta=0.1, ls=None, **options):
    """``preference_loss`` by name; ``ls=None``: the loss's LABEL_SMOOTHING (0 mostly)."""
    ls = LABEL_SMOOTHING.get(name, 0.0) if ls is None else ls
    return preference_loss(pc, pr, rc, rr, loss_type=name, beta=beta, label_smoothing=ls,
                           chosen_lengths=lc, rejected_lengths=lr, **options)


def test_every_trl_loss_type_and_the_extra_losses_are_registered():
    assert set(TRL_NAMES) <= set(ALL)
    assert {"simpo", "cpo", "orpo", "kto_pair"} <= set(ALL)


@pytest.mark.parametrize("name", ALL)
def test_loss_matches_numpy_formula(name, x64):
    if name not in REFERENCE:
        pytest.fail(f"loss {name!r} is registered without a numpy reference in "
                    "tests/rl/preference/numpy_reference.py")
    pc, pr, rc, rr, lc, lr = fixed_inputs()
    jitted = jax.jit(lambda beta, *a: call(name, *a, beta=beta))  # beta traced
    for beta in (0.1, 0.7):
        want = REFERENCE[name](pc, pr, rc, rr, lc.astype(float), lr.astype(float), beta,
                               LABEL_SMOOTHING.get(name, 0.0))
        for got in (call(name, pc, pr, rc, rr, lc, lr, beta=beta),
                    jitted(beta, pc, pr, rc, rr, lc, lr)):
            assert got.shape == (6,) and got.dtype == jnp.float64
            assert_close(got, want, F64, err_msg=f"{name} beta={beta}")


@pytest.mark.parametrize("name", ALL)
def test_label_smoothing_and_options_match_numpy(name, x64):
    spec = PREFERENCE_LOSSES.get(name)
    pc, pr, rc, rr, lc, lr = fixed_inputs()
    lcf, lrf = lc.astype(float), lr.astype(float)
    if spec.label_smoothing is not None:
        got = call(name, pc, pr, rc, rr, lc, lr, beta=0.3, ls=0.2)
        assert_close(got, REFERENCE[name](pc, pr, rc, rr, lcf, lrf, 0.3, 0.2), F64)
    if name in OPTION_VARIANTS:
        opts = OPTION_VARIANTS[name]
        got = call(name, pc, pr, rc, rr, lc, lr, beta=0.3, **opts)
        ls = LABEL_SMOOTHING.get(name, 0.0)
        assert_close(got, REFERENCE[name](pc, pr, rc, rr, lcf, lrf, 0.3, ls, **opts), F64)
    assert set(spec.options) == set(OPTION_VARIANTS.get(name, {})), \
        "every option of a loss needs a non-default check in OPTION_VARIANTS"


def extreme_inputs():
    """Log-ratios of ±1e4 in every sign combination; all log-probs stay <= 0."""
    big = 1e4
    pc = np.array([-big, -0.5, -big, -0.5, -3.0, -big], np.float32)
    rc = np.array([-0.5, -big, -0.5, -big, -3.0, -big], np.float32)
    pr = np.array([-0.5, -big, -big, -0.5, -big, -0.5], np.float32)
    rr = np.array([-big, -0.5, -0.5, -big, -0.5, -big], np.float32)
    lengths = np.array([3, 5, 1, 8, 2, 4], np.int32)
    return pc, pr, rc, rr, lengths, lengths[::-1].copy()


@pytest.mark.parametrize("name", ALL)
def test_finite_losses_and_gradients_at_extreme_log_ratios(name):
    pc, pr, rc, rr, lc, lr = extreme_inputs()

    def total(beta, pc, pr, rc, rr):
        return jnp.sum(call(name, pc, pr, rc, rr, lc, lr, beta=beta))

    @jax.jit
    def check(betas):
        losses = jax.vmap(lambda b: call(name, pc, pr, rc, rr, lc, lr, beta=b))(betas)
        grads = jax.vmap(jax.grad(total, argnums=(1, 2, 3, 4)), in_axes=(0, None, None, None,
                                                                         None))(
            betas, pc, pr, rc, rr)
        return losses, grads

    losses, grads = check(jnp.array([0.1, 1.0, 10.0], jnp.float32))
    assert losses.dtype == jnp.float32 and losses.shape == (3, 6)
    assert np.all(np.isfinite(np.asarray(losses))), (name, losses)
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g))), (name, grads)


@pytest.mark.parametrize("name", [n for n in ALL if n != "kto_pair"])
def test_gradients_match_finite_differences(name, x64):
    """kto_pair stops the gradient through its batch KL estimate on purpose (tested below)."""
    pc, pr, rc, rr, lc, lr = fixed_inputs()
    args = (pc, pr, rc, rr)

    def total(*a):
        return jnp.sum(call(name, *a, lc, lr, beta=0.3))

    grads = np.stack(jax.grad(total, argnums=(0, 1, 2, 3))(*args))  # [4, 6]
    h = 1e-6
    x = np.stack(args)  # [4, 6]
    steps = h * np.eye(24).reshape(24, 4, 6)
    values = jax.jit(jax.vmap(lambda z: total(*z)))(jnp.asarray(np.concatenate(
        [x + steps, x - steps])))
    fd = (np.asarray(values[:24]) - np.asarray(values[24:])).reshape(4, 6) / (2 * h)
    np.testing.assert_allclose(grads, fd, rtol=1e-5, atol=1e-7, err_msg=name)


def test_kto_pair_gradient_holds_the_kl_estimates_fixed(x64):
    pc, pr, rc, rr, lc, lr = fixed_inputs()
    beta = 0.3
    grads = jax.grad(lambda a, b: jnp.sum(call("kto_pair", a, b, rc, rr, lc, lr, beta=beta)),
                     argnums=(0, 1))(pc, pr)
    z_w = max(np.mean(pc - rc), 0.0)
    z_l = max(np.mean(pr - rr), 0.0)
    s_w = sigmoid(beta * ((pc - rc) - z_l))
    s_l = sigmoid(beta * (z_w - (pr - rr)))
    assert_close(grads[0], -0.5 * beta * s_w * (1 - s_w), F64)
    assert_close(grads[1], 0.5 * beta * s_l * (1 - s_l), F64)


@pytest.mark.parametrize("name", ALL)
def test_degenerate_batches(name):
    pc, pr, rc, rr, lc, lr = extreme_inputs()
    one = jax.jit(lambda *a: call(name, *a))(pc[:1], pr[:1], rc[:1], rr[:1], lc[:1], lr[:1])
    assert one.shape == (1,) and np.isfinite(float(one[0]))
    empty = jax.eval_shape(lambda *a: call(name, *a), pc[:0], pr[:0], rc[:0], rr[:0], lc[:0],
                           lr[:0])
    assert empty.shape == (0,)


@pytest.mark.parametrize("name", ALL)
def test_reference_free_mode_uses_a_zero_reference(name):
    pc, pr, _rc, _rr, lc, lr = fixed_inputs(np.float32)
    zeros = np.zeros_like(pc)
    got = preference_loss(pc, pr, loss_type=name, reference_free=True, chosen_lengths=lc,
                          rejected_lengths=lr, label_smoothing=LABEL_SMOOTHING.get(name, 0.0))
    want = call(name, pc, pr, zeros, zeros, lc, lr)
    assert_close(got, want, F32)


@pytest.mark.parametrize("name", ALL)
def test_length_requirements_are_enforced(name):
    spec = PREFERENCE_LOSSES.get(name)
    pc, pr, rc, rr, _, _ = fixed_inputs(np.float32)
    ls = LABEL_SMOOTHING.get(name, 0.0)
    if spec.lengths_needed(spec.options):
        with pytest.raises(ValueError, match="chosen_lengths is required"):
            preference_loss(pc, pr, rc, rr, loss_type=name, label_smoothing=ls)
    else:
        assert preference_loss(pc, pr, rc, rr, loss_type=name, label_smoothing=ls).shape == (6,)


def test_sigmoid_at_the_reference_is_log_two_with_zero_accuracy():
    pc = jnp.array([-3.0, -7.5, -1.0, -12.0])
    pr = jnp.array([-4.0, -2.0, -9.0, -12.0])
    losses = preference_loss(pc, pr, pc, pr, loss_type="sigmoid", beta=0.37)
    assert_close(losses, np.full(4, np.log(2.0)), F32)
    metrics = preference_metrics(pc, pr, pc, pr, beta=0.37)
    assert float(metrics["rewards/accuracies"]) == 0.0
    assert float(metrics["rewards/margins"]) == 0.0
    assert float(metrics["rewards/chosen"]) == 0.0


def test_sigmoid_gradient_matches_the_analytic_form(x64):
    pc, pr, rc, rr, _, _ = fixed_inputs()
    beta, ls = 0.4, 0.1
    grads = jax.grad(lambda *a: jnp.sum(preference_loss(*a, beta=beta, label_smoothing=ls)),
                     argnums=(0, 1, 2, 3))(pc, pr, rc, rr)
    z = beta * ((pc - pr) - (rc - rr))
    # d/dz [-(1-ε) log σ(z) - ε log σ(-z)] = -(1-ε) σ(-z) + ε σ(z)
    dz = -(1 - ls) * sigmoid(-z) + ls * sigmoid(z)
    for g, sign in zip(grads, (1, -1, -1, 1), strict=True):
        assert_close(g, sign * beta * dz, F64)


def test_ipo_gradient_matches_the_analytic_form(x64):
    pc, pr, rc, rr, lc, lr = fixed_inputs()
    beta = 0.25
    grads = jax.grad(lambda a, b: jnp.sum(call("ipo", a, b, rc, rr, lc, lr, beta=beta)),
                     argnums=(0, 1))(pc, pr)
    d = (pc - rc) / lc - (pr - rr) / lr - 1 / (2 * beta)
    assert_close(grads[0], 2 * d / lc, F64)
    assert_close(grads[1], -2 * d / lr, F64)


def test_weighted_combination_is_the_weighted_sum(x64):
    pc, pr, rc, rr, lc, lr = fixed_inputs()
    mixed = preference_loss(pc, pr, rc, rr, loss_type=("sigmoid", "sft", "ipo"),
                            loss_weights=(1.0, 0.2, 0.05), chosen_lengths=lc,
                            rejected_lengths=lr, beta=0.2, ipo_normalize=False)
    want = (call("sigmoid", pc, pr, rc, rr, lc, lr, beta=0.2)
            + 0.2 * call("sft", pc, pr, rc, rr, lc, lr, beta=0.2)
            + 0.05 * call("ipo", pc, pr, rc, rr, lc, lr, beta=0.2, ipo_normalize=False))
    assert_close(mixed, want, F64)


def test_sft_reads_only_the_chosen_log_probs(x64):
    pc, _, _, _, lc, _ = fixed_inputs()
    assert_close(preference_loss(pc, loss_type="sft"), -pc, F64)
    assert_close(preference_loss(pc, loss_type="sft", chosen_lengths=lc),
                 np.full(6, -pc.sum() / lc.sum()), F64)


def test_traced_beta_under_vmap_matches_each_beta():
    pc, pr, rc, rr, _lc, _lr = fixed_inputs(np.float32)
    betas = jnp.array([0.1, 0.5, 2.0])
    swept = jax.vmap(lambda b: preference_loss(pc, pr, rc, rr, beta=b))(betas)
    for i, b in enumerate([0.1, 0.5, 2.0]):
        assert_close(swept[i], preference_loss(pc, pr, rc, rr, beta=b), F32)


def test_metrics_match_trl_definitions(x64):
    pc, pr, rc, rr, _, _ = fixed_inputs()
    beta = 0.2
    m = preference_metrics(pc, pr, rc, rr, beta=beta)
    chosen, rejected = beta * (pc - rc), beta * (pr - rr)
    assert_close(m["rewards/chosen"], chosen.mean(), F64)
    assert_close(m["rewards/rejected"], rejected.mean(), F64)
    assert_close(m["rewards/accuracies"], np.mean(chosen > rejected), F64)
    assert_close(m["rewards/margins"], (chosen - rejected).mean(), F64)
    assert_close(m["logps/chosen"], pc.mean(), F64)
    assert_close(m["logps/rejected"], pr.mean(), F64)
    free = preference_metrics(pc, pr, beta=beta)
    assert_close(free["rewards/chosen"], beta * pc.mean(), F64)


def test_bco_pair_with_a_running_reward_mean(x64):
    pc, pr, rc, rr, lc, lr = fixed_inputs()
    beta = 0.2
    mean, count = 0.0, 0.0
    seen = []
    for shift in (0.0, 1.5, -2.0):
        rewards = np.concatenate([beta * (pc + shift - rc), beta * (pr - rr)])
        seen.extend(rewards)
        mean, count = update_reward_mean(mean, count, rewards)
        assert_close(mean, np.mean(seen), F64)
        assert float(count) == len(seen)
    got = call("bco_pair", pc, pr, rc, rr, lc, lr, beta=beta, bco_delta=mean)
    assert_close(got, REFERENCE["bco_pair"](pc, pr, rc, rr, lc, lr, beta, 0.0,
                                             bco_delta=float(mean)), F64)


def test_bradley_terry_loss_with_margin_and_centering(x64):
    rng = np.random.default_rng(3)
    rw, rl, m = rng.normal(size=5), rng.normal(size=5), rng.uniform(0, 1, 5)
    assert_close(bradley_terry_loss(rw, rl), -log_sigmoid(rw - rl), F64)
    assert_close(bradley_terry_loss(rw, rl, margin=m), -log_sigmoid(rw - rl - m), F64)
    got = bradley_terry_loss(rw, rl, margin=m, center_rewards_coefficient=0.01)
    assert_close(got, -log_sigmoid(rw - rl - m) + 0.01 * (rw + rl) ** 2, F64)
    assert np.isfinite(float(bradley_terry_loss(jnp.array([-1e4]), jnp.array([1e4]))[0]))
    with pytest.raises(ValueError, match="rewards_rejected must have shape"):
        bradley_terry_loss(rw, rl[:3])
    with pytest.raises(ValueError, match="margin must have shape"):
        bradley_terry_loss(rw, rl, margin=m[:2])
    with pytest.raises(ValueError, match="center_rewards_coefficient"):
        bradley_terry_loss(rw, rl, center_rewards_coefficient=-1.0)


def test_unpaired_kto_loss_and_kl_estimate(x64):
    rng = np.random.default_rng(5)
    logps, ref = -rng.uniform(1, 20, 8), -rng.uniform(1, 20, 8)
    desirable = np.array([True, False] * 4)
    kl_p, kl_r = -rng.uniform(1, 20, 8), -rng.uniform(1, 20, 8)
    z0 = kto_kl_estimate(kl_p, kl_r)
    assert_close(z0, max(np.mean(kl_p - kl_r), 0.0), F64)
    got = kto_loss(logps, ref, desirable, kl=z0, beta=0.3, desirable_weight=1.3,
                   undesirable_weight=0.7)
    rho = logps - ref
    want = np.where(desirable, 1.3 * (1 - sigmoid(0.3 * (rho - float(z0)))),
                    0.7 * (1 - sigmoid(0.3 * (float(z0) - rho))))
    assert_close(got, want, F64)
    with pytest.raises(ValueError, match="desirable must be a boolean"):
        kto_loss(logps, ref, desirable.astype(np.float64), kl=0.0)
    with pytest.raises(ValueError, match="ref_logps must have shape"):
        kto_loss(logps, ref[:3], desirable, kl=0.0)


def test_registering_a_loss_makes_it_available():
    name = "test_only_scaled_sigmoid"

    @register_preference_loss(name, paper="test")
    def scaled(x, *, beta, label_smoothing):
        return 2.0 * jax.nn.softplus(-beta * x.logits)

    try:
        pc, pr, rc, rr, _, _ = fixed_inputs(np.float32)
        got = preference_loss(pc, pr, rc, rr, loss_type=name)
        assert_close(got, 2.0 * preference_loss(pc, pr, rc, rr), F32)
    finally:
        PREFERENCE_LOSSES._entries.pop(name)


# ----------------------------------------------------------------------------- bad input


def test_unknown_loss_type_lists_the_valid_names():
    pc, pr, rc, rr, _, _ = fixed_inputs(np.float32)
    with pytest.raises(UnknownNameError, match="valid names: .*sigmoid") as err:
        preference_loss(pc, pr, rc, rr, loss_type="dpo")
    assert "ipo" in str(err.value) and "'dpo'" in str(err.value)


def test_chosen_and_rejected_batches_of_different_sizes():
    pc, pr, rc, rr, _, _ = fixed_inputs(np.float32)
    with pytest.raises(ValueError, match="policy_rejected_logps must have shape"):
        preference_loss(pc, pr[:4], rc, rr)
    with pytest.raises(ValueError, match="ref_rejected_logps must have shape"):
        preference_loss(pc, pr, rc, rr[:5])
    with pytest.raises(ValueError, match="rejected_lengths must have shape"):
        preference_loss(pc, pr, rc, rr, loss_type="ipo", chosen_lengths=np.ones(6),
                        rejected_lengths=np.ones(3))
    with pytest.raises(ValueError, match=r"policy_chosen_logps must have shape \[B\]"):
        preference_loss(pc[None], pr, rc, rr)


@pytest.mark.parametrize("name, value, pattern", [
    ("sigmoid", 0.6, r"\[0.0, 0.5\]"),
    ("sigmoid", -0.1, r"\[0.0, 0.5\]"),
    ("robust", 0.5, r"\[0.0, 0.5\)"),
    ("exo_pair", 1.0, r"\(0.0, 1.0\)"),
    ("exo_pair", 0.0, r"label_smoothing must be in \(0.0, 1.0\) for loss_type 'exo_pair'"),
    ("hinge", 0.1, "not used by loss_type 'hinge'"),
    ("ipo", 0.2, "not used"),
])
def test_label_smoothing_outside_the_allowed_range(name, value, pattern):
    pc, pr, rc, rr, lc, lr = fixed_inputs(np.float32)
    with pytest.raises(ValueError, match=pattern):
        call(name, pc, pr, rc, rr, lc, lr, ls=value)


def test_other_bad_inputs():
    pc, pr, rc, rr, lc, _lr = fixed_inputs(np.float32)
    with pytest.raises(ValueError, match="beta must be finite and > 0"):
        preference_loss(pc, pr, rc, rr, beta=0.0)
    with pytest.raises(ValueError, match="ref_chosen_logps is required"):
        preference_loss(pc, pr)
    with pytest.raises(ValueError, match="policy_rejected_logps is required"):
        preference_loss(pc, None, rc, rr)
    with pytest.raises(ValueError, match="unknown option.*discopop_tau"):
        preference_loss(pc, pr, rc, rr, discopop_tau=0.1)
    with pytest.raises(ValueError, match="discopop_tau must be finite and > 0"):
        preference_loss(pc, pr, rc, rr, loss_type="discopop", discopop_tau=0.0)
    with pytest.raises(ValueError, match="loss_weights must have one weight"):
        preference_loss(pc, pr, rc, rr, loss_type=("sigmoid", "hinge"), loss_weights=(1.0,))
    with pytest.raises(ValueError, match="floating-point"):
        preference_loss(np.arange(6), pr, rc, rr)
    with pytest.raises(ValueError, match="rejected_lengths is required"):
        preference_loss(pc, pr, rc, rr, loss_type="sigmoid_norm", chosen_lengths=lc)


def test_infinite_beta_negative_kto_weights_and_positive_orpo_logps_are_refused():
    pc, pr, rc, rr, lc, lr = fixed_inputs(np.float32)
    with pytest.raises(ValueError, match="beta must be finite and > 0, got inf"):
        preference_loss(pc, pr, rc, rr, beta=float("inf"))
    with pytest.raises(ValueError, match="desirable_weight must be finite and >= 0"):
        call("kto_pair", pc, pr, rc, rr, lc, lr, desirable_weight=-1.0)
    with pytest.raises(ValueError, match="undesirable_weight must be finite and >= 0"):
        kto_loss(pc, rc, np.array([True, False] * 3), kl=0.0, undesirable_weight=-0.5)
    with pytest.raises(ValueError, match="beta must be finite and > 0"):
        kto_loss(pc, rc, np.array([True, False] * 3), kl=0.0, beta=float("inf"))
    with pytest.raises(ValueError, match=r"policy_chosen_logps must be <= 0 \(log-prob"):
        call("orpo", -pc, pr, rc, rr, lc, lr)
    positive = pr.copy()
    positive[2] = 0.5
    with pytest.raises(ValueError, match=r"policy_rejected_logps must be <= 0.*'orpo'"):
        call("orpo", pc, positive, rc, rr, lc, lr)
    with pytest.raises(ValueError, match="chosen_lengths must be finite token counts >= 0"):
        call("sft", pc, pr, rc, rr, -lc, lr)


def test_traced_bad_values_give_nan_losses():
    pc, pr, rc, rr, lc, lr = fixed_inputs(np.float32)
    desirable = np.array([True, False] * 3)

    @jax.jit
    def losses(beta, ls, weight, logps):
        return (preference_loss(pc, pr, rc, rr, beta=beta),
                call("exo_pair", pc, pr, rc, rr, lc, lr, ls=ls),
                call("kto_pair", pc, pr, rc, rr, lc, lr, desirable_weight=weight),
                kto_loss(pc, rc, desirable, kl=0.0, undesirable_weight=weight),
                call("orpo", logps, pr, rc, rr, lc, lr))

    good = losses(0.1, 0.01, 1.0, pc)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in good)
    for bad in (losses(float("inf"), 0.01, 1.0, pc), losses(0.0, 0.01, 1.0, pc)):
        assert np.all(np.isnan(np.asarray(bad[0])))
    bad = losses(0.1, 0.0, -1.0, -pc)  # exo ε = 0, negative KTO weights, log-probs > 0
    assert all(np.all(np.isnan(np.asarray(b))) for b in bad[1:])
    swept = jax.vmap(lambda b: preference_loss(pc, pr, rc, rr, beta=b))(jnp.array([0.1, -1.0]))
    assert np.all(np.isfinite(np.asarray(swept[0]))) and np.all(np.isnan(np.asarray(swept[1])))


def test_token_mean_nll_counts_only_real_tokens(x64):
    """TRL 1.x divides the summed log-probs by the real completion tokens: an empty
    completion (log-prob 0, length 0) adds nothing; it used to count as one token."""
    pc = np.array([-3.0, 0.0, -1.2])
    pr = np.array([-2.0, -4.0, -1.0])
    lengths = np.array([2, 0, 1])
    want = 4.2 / 3  # not 4.2 / 4
    assert_close(preference_loss(pc, loss_type="sft", chosen_lengths=lengths),
                 np.full(3, want), F64)
    cpo = preference_loss(pc, pr, loss_type="cpo", chosen_lengths=lengths,
                          rejected_lengths=lengths)
    assert_close(cpo, REFERENCE["cpo"](pc, pr, pc, pr, lengths, lengths, 0.1, 0.0), F64)
    assert_close(cpo - preference_loss(pc, pr, loss_type="cpo", cpo_alpha=0.0), want, F64)
    empty = preference_loss(np.zeros(2), loss_type="sft", chosen_lengths=np.zeros(2, int))
    assert_close(empty, np.zeros(2), F64)
