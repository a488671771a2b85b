"""Normalising flows on 2-D points: RealNVP as in RLE, and a registry of flow types.

A flow is an invertible map ``x = g(z)`` from a base density ``N(0, I₂)`` to the data,
with the density given by the change of variables

    log p(x) = log N(f(x); 0, I) + log |det ∂f(x)/∂x|,     f = g⁻¹.

RealNVP (Dinh et al. 2017) builds ``g`` from affine *couplings* with alternating binary
masks ``m``: with ``x_m = m ⊙ x``,

    f (data → latent):   z = x_m + (1 − m) ⊙ (x − t(x_m)) ⊙ exp(−s(x_m)),
                         log |det| = −Σ (1 − m) ⊙ s(x_m),
    g (latent → data):   x = z_m + (1 − m) ⊙ (z ⊙ exp(s(z_m)) + t(z_m)),

where ``s`` and ``t`` are small MLPs (2 → 64 → 64 → 2, LeakyReLU; ``s`` ends in tanh so
every scale lies in ``[e⁻¹, e]``). As in RLE's official code, six couplings use the masks
``[0, 1], [1, 0]`` three times, ``g`` applies them in order and ``f`` in reverse, and the
linear layers start from Xavier-uniform weights with gain 0.01, so the initial flow is
close to the identity and ``log p`` close to the standard normal.

Every flow type is registered in :data:`FLOWS` (``FLOWS.get(name)(config, rngs=...)``)
and exposes

* ``inverse(x [..., 2]) -> (z [..., 2], log_det [...])``: ``f`` and ``log |det ∂f/∂x|``;
* ``forward(z [..., 2]) -> x [..., 2]``: ``g``;
* ``log_prob(x [..., 2]) -> [...]``;
* ``sample(key, shape) -> [*shape, 2]``.

A new type (Glow-style, spline) registers a class with the same methods and gets the
family's shared tests (``tests/vision/pose/test_flows.py`` is parametrised over
``FLOWS.names()``).

Paper: Dinh, Sohl-Dickstein & Bengio 2017, "Density estimation using Real NVP";
Li et al. 2021, "Human Pose Regression with Residual Log-likelihood Estimation".
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from common.checks import check_fields, check_float_dtype, shape_of, shape_str
from common.registry import Registry

__all__ = ["FLOWS", "FlowConfig", "NormalFlow", "RealNVP", "make_flow", "standard_normal_log_prob"]

#: Flow types by name: ``FLOWS.get(name)(config, rngs=nnx.Rngs(0))``.
FLOWS: Registry[type] = Registry("flow")

_LOG_2PI = math.log(2.0 * math.pi)


@dataclasses.dataclass(frozen=True)
class FlowConfig:
    """Architecture of a flow.

    Attributes:
      name: registered flow type (see ``FLOWS.names()``).
      hidden: width of the coupling MLPs' two hidden layers.
      num_pairs: number of ``([0, 1], [1, 0])`` mask pairs (couplings = 2 · num_pairs).
      init_gain: gain of the Xavier-uniform initialisation of the coupling layers.
    """

    name: str = "realnvp"
    hidden: int = 64
    num_pairs: int = 3
    init_gain: float = 0.01

    def validate(self) -> None:
        FLOWS.get(self.name)
        check_fields(self, positive_ints=("hidden", "num_pairs"), positive=("init_gain",))


def _check_points(x, name: str) -> None:
    if jnp.ndim(x) < 1 or shape_of(x)[-1] != 2:
        raise ValueError(f"{name} must have shape [..., 2], got shape {shape_str(shape_of(x))}")
    check_float_dtype(x, name)


def standard_normal_log_prob(z: jax.Array) -> jax.Array:
    """``log N(z; 0, I₂) = −|z|²/2 − log 2π`` for ``z [..., 2]``, shape ``[...]``."""
    return -0.5 * jnp.sum(z * z, axis=-1) - _LOG_2PI


class _Flow(nnx.Module):
    """Shared ``log_prob`` and ``sample`` of a flow. A subclass defines
    ``inverse(x [..., 2]) -> (z [..., 2], log|det ∂z/∂x| [...])`` (data to latent) and
    ``forward(z [..., 2]) -> x [..., 2]`` (latent to data); defining a subclass without
    both raises ``TypeError`` at once."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        missing = [m for m in ("inverse", "forward") if not callable(getattr(cls, m, None))]
        if missing:
            raise TypeError(f"flow {cls.__name__} must define {' and '.join(missing)}")

    def log_prob(self, x: jax.Array) -> jax.Array:
        """``log p(x) = log N(f(x)) + log |det ∂f/∂x|`` for ``x [..., 2]``, shape ``[...]``."""
        _check_points(x, "x")
        z, log_det = self.inverse(x)
        return standard_normal_log_prob(z) + log_det

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.log_prob(x)

    def sample(self, key: jax.Array, shape: tuple[int, ...] = ()) -> jax.Array:
        """``x = g(z)``, ``z ~ N(0, I₂)``: samples of shape ``[*shape, 2]``."""
        return self.forward(jax.random.normal(key, (*tuple(shape), 2)))


@FLOWS.register("normal")
class NormalFlow(_Flow):
    """The identity flow: ``log p = log N(x; 0, I₂)`` (no parameters).

    With it, RLE's residual term is a fixed Gaussian: an ablation of the learned flow.

    Example:
      >>> float(NormalFlow(FlowConfig("normal")).log_prob(jnp.zeros(2)))  # −log 2π
      -1.8378770...
    """

    def __init__(self, config: FlowConfig | None = None, *, rngs: nnx.Rngs | None = None):
        del config, rngs

    def inverse(self, x):
        _check_points(x, "x")
        return x, jnp.zeros(jnp.shape(x)[:-1], x.dtype)

    def forward(self, z):
        _check_points(z, "z")
        return z


class _CouplingNet(nnx.Module):
    """``2 → h → h → 2`` MLP with LeakyReLU (slope 0.01), optionally ending in tanh."""

    def __init__(self, hidden: int, gain: float, final_tanh: bool, rngs: nnx.Rngs):
        init = nnx.initializers.variance_scaling(gain * gain, "fan_avg", "uniform")
        self.l1 = nnx.Linear(2, hidden, kernel_init=init, rngs=rngs)
        self.l2 = nnx.Linear(hidden, hidden, kernel_init=init, rngs=rngs)
        self.l3 = nnx.Linear(hidden, 2, kernel_init=init, rngs=rngs)
        self.final_tanh = final_tanh

    def __call__(self, x):
        h = jax.nn.leaky_relu(self.l1(x), 0.01)
        h = jax.nn.leaky_relu(self.l2(h), 0.01)
        out = self.l3(h)
        return jnp.tanh(out) if self.final_tanh else out


@FLOWS.register("realnvp")
class RealNVP(_Flow):
    """RealNVP on 2-D points, as RLE's official flow (see the module docstring).

    Args:
      config: a :class:`FlowConfig` (hidden width, mask pairs, initial gain).
      rngs: ``nnx.Rngs`` (stream ``params``).

    Call: ``flow(x [..., 2]) -> log p(x) [...]`` (same as ``log_prob``).

    Example:
      >>> flow = RealNVP(FlowConfig(), rngs=nnx.Rngs(0))
      >>> z, log_det = flow.inverse(jnp.ones((5, 2)))
      >>> flow.forward(z).shape, log_det.shape
      ((5, 2), (5,))

    Paper: Dinh et al. 2017; Li et al. 2021 (RLE), official ``RealNVP``.
    """

    def __init__(self, config: FlowConfig | None = None, *, rngs: nnx.Rngs):
        config = config or FlowConfig()
        config.validate()
        masks = [[0.0, 1.0], [1.0, 0.0]] * config.num_pairs
        self.masks = nnx.data(tuple(tuple(m) for m in masks))
        self.s = nnx.List([_CouplingNet(config.hidden, config.init_gain, True, rngs)
                           for _ in masks])
        self.t = nnx.List([_CouplingNet(config.hidden, config.init_gain, False, rngs)
                           for _ in masks])

    def _mask(self, i, like):
        """Mask ``i`` shaped ``[1, …, 1, 2]`` to broadcast against ``like [..., 2]``."""
        return jnp.reshape(jnp.asarray(self.masks[i], like.dtype), (1,) * (like.ndim - 1) + (2,))

    def inverse(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``z = f(x)`` and ``log |det ∂f/∂x|`` for ``x [..., 2]``."""
        _check_points(x, "x")
        z = x
        log_det = jnp.zeros(jnp.shape(x)[:-1], x.dtype)
        for i in reversed(range(len(self.masks))):
            m = self._mask(i, x)
            z_m = m * z
            s = self.s[i](z_m) * (1 - m)
            t = self.t[i](z_m) * (1 - m)
            z = z_m + (1 - m) * (z - t) * jnp.exp(-s)
            log_det = log_det - jnp.sum(s, axis=-1)
        return z, log_det

    def forward(self, z: jax.Array) -> jax.Array:
        """``x = g(z)`` for ``z [..., 2]``."""
        _check_points(z, "z")
        x = z
        for i in range(len(self.masks)):
            m = self._mask(i, z)
            x_m = m * x
            s = self.s[i](x_m) * (1 - m)
            t = self.t[i](x_m) * (1 - m)
            x = x_m + (1 - m) * (x * jnp.exp(s) + t)
        return x


def make_flow(config: FlowConfig, *, rngs: nnx.Rngs) -> nnx.Module:
    """The flow named by ``config.name`` (see :data:`FLOWS`).

    Example:
      >>> make_flow(FlowConfig("realnvp"), rngs=nnx.Rngs(0)).log_prob(jnp.zeros((3, 2))).shape
      (3,)
    """
    config.validate()
    return FLOWS.get(config.name)(config, rngs=rngs)
