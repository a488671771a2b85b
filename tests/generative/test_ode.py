"""The adaptive Dormand–Prince solver against scipy.integrate.solve_ivp."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from generative.ode import odeint_rk45


def _lotka_volterra(t, y):
    return jnp.stack([1.5 * y[0] - y[0] * y[1], -3.0 * y[1] + y[0] * y[1]])


@pytest.mark.parametrize("rtol", [1e-4, 1e-7])
def test_matches_solve_ivp(rtol, x64):
    y0 = np.array([1.0, 1.0])
    y1, stats = jax.jit(lambda y: odeint_rk45(_lotka_volterra, y, 0.0, 10.0, rtol=rtol,
                                              atol=rtol * 1e-2))(jnp.asarray(y0))
    f = lambda t, y: np.array([1.5 * y[0] - y[0] * y[1], -3.0 * y[1] + y[0] * y[1]])
    ref = solve_ivp(f, (0.0, 10.0), y0, method="RK45", rtol=rtol, atol=rtol * 1e-2)
    exact = solve_ivp(f, (0.0, 10.0), y0, method="DOP853", rtol=1e-13, atol=1e-13).y[:, -1]
    err = np.abs(np.asarray(y1) - exact).max()
    ref_err = np.abs(ref.y[:, -1] - exact).max()
    assert bool(stats.success)
    assert err < 3 * ref_err + 1e-10  # same accuracy class as scipy's RK45
    assert 0.5 * ref.nfev < int(stats.nfe) < 2.0 * ref.nfev  # similar work
    assert int(stats.nfe) == 2 + 6 * int(stats.accepted + stats.rejected)


def test_backwards_and_pytree_state(x64):
    # dy/dt = -t y from t=2 to t=0.5: y = exp((4 - 0.25) / 2) y(2)
    f = lambda t, s: {"a": -t * s["a"], "b": jnp.zeros_like(s["b"]) + 1.0}
    out, stats = odeint_rk45(f, {"a": jnp.ones(3), "b": jnp.zeros(())}, 2.0, 0.5,
                             rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(out["a"], np.exp(1.875) * np.ones(3), rtol=1e-7)
    np.testing.assert_allclose(out["b"], -1.5, rtol=1e-9)
    assert bool(stats.success)


def test_linear_system_exact_solution(x64):
    A = jnp.asarray([[-0.5, 2.0], [-2.0, -0.5]])
    y1, _ = odeint_rk45(lambda t, y: A @ y, jnp.asarray([1.0, 0.0]), 0.0, 3.0, rtol=1e-10,
                        atol=1e-12)
    exact = jax.scipy.linalg.expm(3.0 * A) @ jnp.asarray([1.0, 0.0])
    np.testing.assert_allclose(y1, exact, rtol=1e-8, atol=1e-10)


def test_max_steps_reports_failure():
    _, stats = odeint_rk45(lambda t, y: -50.0 * y, jnp.ones(2), 0.0, 10.0, max_steps=3)
    assert not bool(stats.success)
    assert int(stats.accepted + stats.rejected) == 3


def test_bad_inputs():
    with pytest.raises(ValueError, match="rtol and atol must be > 0"):
        odeint_rk45(lambda t, y: y, jnp.ones(2), 0.0, 1.0, rtol=0.0)
    with pytest.raises(ValueError, match="floating"):
        odeint_rk45(lambda t, y: y, jnp.ones(2, jnp.int32), 0.0, 1.0)
    with pytest.raises(ValueError, match="shaped like y0"):
        odeint_rk45(lambda t, y: jnp.ones(3), jnp.ones(2), 0.0, 1.0)
