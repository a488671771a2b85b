"""rl.value_learning: per-transition TD targets (single, vmapped over [B] and [T, B])
against closed forms and numpy loops, the geometry of soft updates, and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl.value_learning import soft_update, td_target, validate_tau
from tests.tolerances import BITWISE, F64, assert_close

GAMMA = 0.9


def numpy_td_targets(rewards, discounts, next_values, gamma):
    """``y = r + γ d v'`` written as a loop over every transition."""
    out = np.zeros_like(rewards)
    for index in np.ndindex(rewards.shape):
        out[index] = rewards[index] + gamma * discounts[index] * next_values[index]
    return out


def _transitions(key, shape):
    k1, k2, k3 = jax.random.split(key, 3)
    r = np.asarray(jax.random.normal(k1, shape))
    d = np.asarray(jax.random.bernoulli(k2, 0.7, shape), np.float32)
    v = np.asarray(jax.random.normal(k3, shape))
    return r, d, v


def test_single_transition_closed_form():
    one = lambda r, d, v: float(td_target(jnp.float32(r), jnp.float32(d), jnp.float32(v), GAMMA))
    assert one(1.0, 1.0, 5.0) == pytest.approx(1.0 + 0.9 * 5.0)  # bootstraps
    assert one(1.0, 0.0, 5.0) == pytest.approx(1.0)  # terminal: no bootstrap
    assert float(td_target(jnp.float32(2.0), jnp.float32(1.0), jnp.float32(3.0), 0.0)) == 2.0
    assert td_target(jnp.float32(1.0), jnp.float32(1.0), jnp.float32(2.0), GAMMA).shape == ()


def test_batch_and_sequence_via_vmap_match_numpy_loops():
    per_batch = jax.vmap(td_target, in_axes=(0, 0, 0, None))  # [B]
    per_sequence = jax.jit(jax.vmap(per_batch, in_axes=(0, 0, 0, None)))  # [T, B]
    r, d, v = _transitions(jax.random.key(0), (7,))
    assert_close(per_batch(r, d, v, GAMMA), numpy_td_targets(r, d, v, GAMMA))
    # equal-shaped batches without vmap give the same (the DDPG learner's use)
    assert_close(td_target(jnp.asarray(r), jnp.asarray(d), jnp.asarray(v), GAMMA),
                 per_batch(r, d, v, GAMMA), BITWISE)
    r, d, v = _transitions(jax.random.key(1), (5, 3))
    out = per_sequence(r, d, v, GAMMA)
    assert out.shape == (5, 3)
    assert_close(out, numpy_td_targets(r, d, v, GAMMA))
    # 0 transitions
    empty = np.zeros((0,), np.float32)
    assert per_batch(empty, empty, empty, GAMMA).shape == (0,)


def test_soft_update_converges_geometrically(x64):
    tau = 0.05
    online = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.array([0.25])}
    target0 = {"w": jnp.array([[-1.0, 4.0], [2.0, 0.0]]), "b": jnp.array([-3.0])}
    update = jax.jit(soft_update, static_argnums=2)
    target = target0
    for n in range(1, 41):
        target = update(target, online, tau)
        for name in online:  # θ'_n − θ = (1 − τ)^n (θ'_0 − θ)
            assert_close(target[name] - online[name],
                         (1 - tau) ** n * (target0[name] - online[name]), F64)
    assert_close(update(target0, online, 1.0)["w"], online["w"], BITWISE)  # τ = 1 copies
    # a traced τ (e.g. a schedule) is accepted and gives the same step
    traced = jax.jit(soft_update)(target0, online, jnp.asarray(tau))
    assert_close(traced["b"], (1 - tau) * target0["b"] + tau * online["b"], F64)


@pytest.mark.parametrize("tau", [0.0, -0.1, 1.5, float("nan")])
def test_bad_tau(tau):
    with pytest.raises(ValueError, match=r"tau must be in \(0, 1\]"):
        soft_update({"w": jnp.zeros(2)}, {"w": jnp.ones(2)}, tau)
    with pytest.raises(ValueError, match=r"tau must be in \(0, 1\]"):
        validate_tau(tau)


def test_bad_input():
    z = jnp.zeros(3)
    with pytest.raises(ValueError, match=r"discount must have the shape of reward \(3\)"):
        td_target(z, jnp.zeros((3, 1)), z, GAMMA)
    with pytest.raises(ValueError, match=r"next_value must have the shape of reward"):
        td_target(z, z, jnp.zeros(2), GAMMA)
    with pytest.raises(ValueError, match="reward must be floating point"):
        td_target(jnp.zeros(3, jnp.int32), z, z, GAMMA)
    with pytest.raises(ValueError, match=r"gamma must lie in \[0, 1\]"):
        td_target(z, z, z, 1.5)
    with pytest.raises(ValueError, match=r"gamma must have shape \[\] \(a scalar\)"):
        td_target(z, z, z, jnp.full(3, 0.9))
    with pytest.raises(ValueError, match=r"tau must have shape \[\]"):
        soft_update({"w": z}, {"w": z}, jnp.full(2, 0.5))
    with pytest.raises(ValueError, match="same pytree structure"):
        soft_update({"w": z}, {"v": z}, 0.5)
    with pytest.raises(ValueError, match=r"target leaf \['w'\] must have the shape of online"):
        soft_update({"w": jnp.zeros(2)}, {"w": z}, 0.5)
