"""Each loss against its direct formula, and sliced score matching against theory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from generative.losses import (
    ddpm_loss,
    denoising_score_matching_loss,
    sde_loss,
    sliced_score_matching_loss,
    smld_loss,
)
from generative.sampling import geometric_sigmas
from generative.sde import VESDE, VPSDE, make_score_fn, subVPSDE
from tests.tolerances import F64, assert_close


def _score(x, t):
    """An arbitrary (non-optimal) smooth time-dependent score."""
    return jnp.tanh(x) * (1.0 + t.reshape((-1,) + (1,) * (x.ndim - 1))) - 0.3 * x


def _data(shape=(6, 2, 3)):
    return jnp.asarray(np.random.default_rng(0).normal(size=shape))


@pytest.mark.parametrize("sde", [VPSDE(), subVPSDE(), VESDE()], ids=["vp", "subvp", "ve"])
@pytest.mark.parametrize("reduce_mean", [True, False])
@pytest.mark.parametrize("weighting", [False, True])
def test_sde_loss_direct_formula(sde, reduce_mean, weighting, x64):
    x = _data()
    key = jax.random.key(3)
    loss = sde_loss(_score, sde, x, key, eps=1e-5, reduce_mean=reduce_mean,
                    likelihood_weighting=weighting)
    t_key, z_key = jax.random.split(key)
    t = np.asarray(jax.random.uniform(t_key, (6,), jnp.float64, 1e-5, 1.0))
    z = np.asarray(jax.random.normal(z_key, x.shape, jnp.float64))
    xn = np.asarray(x)
    out = []
    for b in range(6):
        tb = jnp.asarray(t[b:b + 1])
        m, s = (np.asarray(v)[0] for v in sde.marginal_prob(jnp.ones((1, 1)), tb))
        xt = m[0] * xn[b] + s * z[b]
        score = np.asarray(_score(jnp.asarray(xt[None]), jnp.asarray(t[b:b + 1])))[0]
        if weighting:
            g2 = float(sde.sde(jnp.ones((1, 1)), jnp.asarray(t[b:b + 1]))[1][0]) ** 2
            sq = (score + z[b] / s) ** 2
            red = sq.mean() if reduce_mean else 0.5 * sq.sum()
            out.append(g2 * red)
        else:
            sq = (score * s + z[b]) ** 2
            out.append(sq.mean() if reduce_mean else 0.5 * sq.sum())
    assert_close(loss, np.mean(out), F64)
    assert (t >= 1e-5).all() and (t <= 1.0).all()


def test_smld_loss_direct_formula(x64):
    x = _data()
    sigmas = np.asarray(geometric_sigmas(10.0, 0.1, 5), np.float64)
    score = lambda y, s: -y / (1.0 + s.reshape(-1, 1, 1) ** 2)
    key = jax.random.key(4)
    loss = smld_loss(score, sigmas, x, key)
    i_key, n_key = jax.random.split(key)
    idx = np.asarray(jax.random.randint(i_key, (6,), 0, 5))
    sig = sigmas[idx]
    noise = np.asarray(jax.random.normal(n_key, x.shape, jnp.float64)) * sig[:, None, None]
    xt = np.asarray(x) + noise
    pred = -xt / (1.0 + sig[:, None, None] ** 2)
    per = 0.5 * ((pred + noise / sig[:, None, None] ** 2) ** 2).reshape(6, -1).sum(-1) * sig**2
    assert_close(loss, per.mean(), F64)


def test_ddpm_loss_direct_formula(x64):
    sde = VPSDE(N=100)
    x = _data()
    eps_fn = lambda y, t: 0.5 * y + t.reshape(-1, 1, 1)
    key = jax.random.key(5)
    loss = ddpm_loss(eps_fn, sde, x, key)
    i_key, z_key = jax.random.split(key)
    idx = np.asarray(jax.random.randint(i_key, (6,), 0, 100))
    z = np.asarray(jax.random.normal(z_key, x.shape, jnp.float64))
    abar = np.cumprod(1 - np.linspace(0.1 / 100, 20 / 100, 100))[idx][:, None, None]
    xt = np.sqrt(abar) * np.asarray(x) + np.sqrt(1 - abar) * z
    pred = 0.5 * xt + (idx / 99.0)[:, None, None]
    assert_close(loss, ((pred - z) ** 2).reshape(6, -1).mean(-1).mean(), F64)


def test_dsm_loss_direct_formula(x64):
    x = _data((5, 4))
    key = jax.random.key(6)
    loss = denoising_score_matching_loss(lambda y: -2.0 * y, x, key, 0.3)
    z = np.asarray(jax.random.normal(key, x.shape, jnp.float64))
    xt = np.asarray(x) + 0.3 * z
    assert_close(loss, (0.5 * ((-2.0 * xt + z / 0.3) ** 2).sum(-1)).mean(), F64)


def test_dsm_is_minimised_by_the_true_score():
    """For x ~ N(0, I), the σ-smoothed score is −x / (1 + σ²)."""
    x = jax.random.normal(jax.random.key(0), (20000, 2))
    losses = [denoising_score_matching_loss(lambda y, c=c: -c * y, x, jax.random.key(1), 0.5)
              for c in (0.6, 1 / 1.25, 1.0)]
    assert losses[1] < losses[0] and losses[1] < losses[2]


@pytest.mark.parametrize("projection", ["rademacher", "gaussian"])
@pytest.mark.parametrize("vr", [False, True])
def test_sliced_score_matching_linear_model_theory(projection, vr, x64):
    """s(x) = A x + b: E[vᵀAv + ½(vᵀs)²] = tr A + ½ E‖s‖², with E‖s‖² in closed form."""
    rng = np.random.default_rng(7)
    A = rng.normal(size=(3, 3))
    b = rng.normal(size=3)
    mu = np.array([0.5, -1.0, 2.0])
    L = rng.normal(size=(3, 3)) * 0.5
    cov = L @ L.T + 0.2 * np.eye(3)
    x = jnp.asarray(rng.multivariate_normal(mu, cov, size=4000))
    score = lambda y: y @ jnp.asarray(A).T + jnp.asarray(b)[None]
    loss = sliced_score_matching_loss(score, x, jax.random.key(8), n_projections=8,
                                      projection=projection, variance_reduction=vr)
    m = A @ mu + b
    theory = np.trace(A) + 0.5 * (np.trace(A @ cov @ A.T) + m @ m)
    # empirical version of the same expectation over the drawn x (removes data noise)
    s = np.asarray(score(x))
    empirical = np.trace(A) + 0.5 * np.mean(np.sum(s**2, -1))
    assert abs(float(loss) - empirical) < 0.05 * abs(empirical) + 0.05
    assert abs(empirical - theory) < 0.1 * abs(theory)


def test_sliced_score_matching_fixed_projection_by_hand(x64):
    rng = np.random.default_rng(9)
    A = rng.normal(size=(2, 2))
    x = jnp.asarray(rng.normal(size=(3, 2)))
    key = jax.random.key(10)
    loss = sliced_score_matching_loss(lambda y: y @ jnp.asarray(A).T, x, key)
    v = np.asarray(jax.random.rademacher(key, (1, 3, 2), jnp.float64))[0]
    s = np.asarray(x) @ A.T
    per = np.einsum("bi,ij,bj->b", v, A, v) + 0.5 * np.sum(v * s, -1) ** 2
    assert_close(loss, per.mean(), F64)


def test_variance_reduction_lowers_variance():
    rng = np.random.default_rng(11)
    A = jnp.asarray(rng.normal(size=(4, 4)))
    x = jax.random.normal(jax.random.key(0), (64, 4)) + 3.0
    score = lambda y: y @ A.T
    draws = {vr: np.array([float(sliced_score_matching_loss(
        score, x, jax.random.key(k), variance_reduction=vr)) for k in range(40)])
        for vr in (False, True)}
    assert draws[True].std() < 0.5 * draws[False].std()


def test_sharded_batch_matches_single_device():
    """The SDE loss gradient with the batch sharded over 8 devices equals one device."""
    devices = jax.devices()
    if len(devices) < 8:
        pytest.skip("needs 8 (simulated) devices")
    mesh = jax.make_mesh((8,), ("data",), devices=devices[:8],
                         axis_types=(jax.sharding.AxisType.Auto,))
    x = jax.random.normal(jax.random.key(0), (64, 3))
    w = jnp.eye(3) * 0.5

    def loss(w, x):
        return sde_loss(lambda y, t: -(y @ w) * (1.0 + t[:, None]), VPSDE(), x,
                        jax.random.key(1))

    grad = jax.jit(jax.grad(loss))
    single = grad(w, x)
    sharded = grad(w, jax.device_put(x, NamedSharding(mesh, PartitionSpec("data"))))
    assert_close(sharded, single, dict(rtol=1e-5, atol=1e-6))


def test_bad_inputs():
    x = jnp.ones((4, 2))
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"score_fn must return an array of shape \[B, \.\.\.\]"):
        sde_loss(lambda y, t: y[:, :1], VPSDE(), x, key)
    with pytest.raises(ValueError, match="needs a VPSDE"):
        ddpm_loss(lambda y, t: y, VESDE(), x, key)
    with pytest.raises(ValueError, match="subVPSDE has none"):
        ddpm_loss(lambda y, t: y, subVPSDE(), x, key)  # no DDPM chain: EM discretisation
    with pytest.raises(ValueError, match="sigmas must be finite and > 0"):
        smld_loss(lambda y, s: y, jnp.asarray([1.0, 0.0]), x, key)
    with pytest.raises(ValueError, match="projection must be"):
        sliced_score_matching_loss(lambda y: y, x, key, projection="sphere")
    with pytest.raises(ValueError, match="eps must be in"):
        sde_loss(lambda y, t: y, VPSDE(), x, key, eps=1.5)
    with pytest.raises(ValueError, match="floating"):
        sde_loss(lambda y, t: y, VPSDE(), jnp.ones((4, 2), jnp.int32), key)
    with pytest.raises(ValueError, match="sigma must be finite and > 0"):
        denoising_score_matching_loss(lambda y: y, x, key, -1.0)


SCALAR = (r"score_fn must return an array of shape \[B, \.\.\.\] = \(4, 2\) \(x's shape\), "
          r"got shape \(\)")


def test_scalar_scores_are_named_errors():
    x, key = jnp.ones((4, 2)), jax.random.key(0)
    with pytest.raises(ValueError, match=SCALAR):
        sde_loss(lambda y, t: jnp.sum(y), VPSDE(), x, key)
    with pytest.raises(ValueError, match=SCALAR):
        smld_loss(lambda y, s: jnp.sum(y), jnp.array([1.0, 0.5]), x, key)
    with pytest.raises(ValueError, match=SCALAR):
        sliced_score_matching_loss(lambda y: jnp.sum(y), x, key)
    with pytest.raises(ValueError, match=SCALAR):
        denoising_score_matching_loss(lambda y: jnp.sum(y), x, key, 0.1)


@pytest.mark.parametrize("sde", [VPSDE(), subVPSDE(), VESDE()], ids=["vp", "subvp", "ve"])
def test_sde_loss_never_draws_t_zero(sde):
    """σ(0) = 0 for VP/sub-VP: a make_score_fn network gave a NaN loss whenever t = 0
    was drawn (eps = 0 was allowed); eps is now checked > 0."""
    score_fn = make_score_fn(sde, lambda y, t: jnp.tanh(y))
    x = jnp.ones((4, 2))
    with pytest.raises(ValueError, match="eps must be > 0"):
        sde_loss(score_fn, sde, x, jax.random.key(0), eps=0.0)
    with pytest.raises(ValueError, match="eps must be > 0"):
        sde_loss(score_fn, sde, x, jax.random.key(0), eps=0)
    losses = jax.jit(jax.vmap(lambda k: sde_loss(score_fn, sde, x, k, eps=1e-5,
                                                 likelihood_weighting=True)))(
        jax.random.split(jax.random.key(1), 64))
    assert np.all(np.isfinite(np.asarray(losses)))


def test_make_score_fn_refuses_or_poisons_a_vanishing_std():
    score_fn = make_score_fn(VPSDE(), lambda y, t: y)
    x = jnp.ones((3, 2))
    with pytest.raises(ValueError, match=r"t: the score of make_score_fn is undefined"):
        score_fn(x, jnp.array([0.5, 0.0, 0.2]))
    out = np.asarray(jax.jit(score_fn)(x, jnp.array([0.5, 0.0, 0.2])))
    assert np.all(np.isnan(out[1])) and np.all(np.isfinite(out[[0, 2]]))
    ve = make_score_fn(VESDE(), lambda y, t: y)(x, jnp.zeros(3))  # σ(0) = σ_min > 0
    assert np.all(np.isfinite(np.asarray(ve)))
