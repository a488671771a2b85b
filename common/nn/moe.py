"""Mixture-of-experts layers: routers, dropless and capacity dispatch, expert parallelism.

A MoE feed-forward layer sends each token ``x_t`` to ``k`` of ``E`` experts chosen by a
router and adds their outputs, weighted by the router's gates, to always-on shared
experts::

    y_t = Σ_{j<k} g_{t,j} · FFN_{e_{t,j}}(x_t) + Σ_s FFN^shared_s(x_t)

Pieces, each a pure function the :class:`MoE` layer composes:

* **routers** in the registry ``ROUTERS`` (``route(logits, bias, config, seq_len)``):
  ``softmax_topk`` (Switch / Mixtral: softmax, top-k, optional renormalisation, the
  load-balancing auxiliary loss and the router z-loss) and ``noaux_tc`` (DeepSeek-V3 /
  Moonlight: sigmoid scores, selection on scores plus a per-expert bias, group-limited;
  the pure :func:`noaux_tc_route`), both with DeepSeek-V3's optional sequence-wise
  balance loss;
* the **aux-loss-free bias update** :func:`update_router_bias`
  (``b_i ← b_i + γ·sign(mean load − load_i)``, applied after each step, outside the
  gradient);
* **dispatch**: :func:`dropless_dispatch` (sort the token copies by expert, one grouped
  matmul, :func:`grouped_matmul`: ``jax.lax.ragged_dot`` on GPU/TPU, a block-padded
  equivalent on CPU, where XLA computes ``ragged_dot`` as a masked product over every
  expert), :func:`capacity_dispatch` (one-hot dispatch and combine einsums with a
  capacity factor, dropped copies counted) and :func:`loop_dispatch` (every expert on
  every token, the plain reference);
* **expert parallelism** :func:`expert_parallel_dispatch`: experts sharded over a mesh
  axis (``"expert"``), token copies exchanged with ``all_to_all`` inside
  ``jax.shard_map``;
* **load statistics** :func:`load_metrics` (tokens per expert, max violation, entropy).

Bad values follow ``common.checks``: a non-finite router ``bias`` raises when concrete
and turns every gate into NaN when traced; NaN ``weights`` or inputs propagate NaN into
the output (nothing plausible comes out); static errors (shapes,
``top_k > E``, group sizes) raise ``ValueError`` naming the argument at trace time.

Papers: Shazeer et al. 2017 (sparsely-gated MoE); Lepikhin et al. 2020 (GShard: capacity,
expert parallelism with all-to-all); Fedus et al. 2021 (Switch: load-balancing loss);
Zoph et al. 2022 (ST-MoE: router z-loss); Gale et al. 2022 (MegaBlocks: dropless grouped
matmul); Wang et al. 2024 ("Auxiliary-Loss-Free Load Balancing Strategy for
Mixture-of-Experts"); DeepSeek-AI 2024 (DeepSeek-V3 technical report, section 2.1.2);
Moonshot AI 2025 (Moonlight, Kimi-VL).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec as P

from common.checks import check_fields, check_int, poison, shape_of, shape_str, value_ok
from common.nn.mlp import GatedMLP, get_activation
from common.registry import Registry

__all__ = [
    "DISPATCHES",
    "GROUPED_MATMULS",
    "ROUTERS",
    "MoE",
    "MoEAux",
    "MoEConfig",
    "RouterBias",
    "RouterOutput",
    "capacity_dispatch",
    "default_block_size",
    "dropless_dispatch",
    "expert_capacity",
    "expert_parallel_dispatch",
    "grouped_matmul",
    "load_balancing_loss",
    "load_metrics",
    "loop_dispatch",
    "noaux_tc_route",
    "router_z_loss",
    "sequence_balance_loss",
    "softmax_topk_route",
    "tokens_per_expert",
    "update_router_bias",
]

DISPATCHES = ("dropless", "capacity", "loop", "expert_parallel")
GROUPED_MATMULS = ("auto", "ragged", "blocked")


# ----------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class MoEConfig:
    """Everything that shapes a :class:`MoE` layer, in one frozen object.

    Attributes:
      d_model: token width ``D``.
      num_experts: routed experts ``E``.
      top_k: experts per token ``k`` (``1 <= k <= E``).
      expert_dim: hidden size ``F`` of each routed SwiGLU expert.
      num_shared_experts: always-on experts; they form one SwiGLU of hidden size
        ``num_shared_experts · expert_dim`` (DeepSeek's layout). 0 for none.
      router: a name in ``ROUTERS`` (``"noaux_tc"`` or ``"softmax_topk"``).
      n_group: expert groups for group-limited routing (``E`` divisible by it).
      topk_group: groups kept per token (``<= n_group``).
      norm_topk_prob: renormalise the ``k`` selected gates to sum to one.
      routed_scaling_factor: multiplies the routed gates (``noaux_tc``).
      aux_loss_coef: weight of the load-balancing loss (Switch), 0 for none.
      z_loss_coef: weight of the router z-loss, 0 for none.
      seq_aux_loss_coef: weight ``α`` of DeepSeek-V3's sequence-wise balance loss.
      bias_update_rate: ``γ`` of the aux-loss-free bias update (0 turns it off; the
        update itself is applied by the training step, :func:`update_router_bias`).
      dispatch: ``"dropless"`` (sorted, one grouped matmul), ``"capacity"``, ``"loop"``
        (reference) or ``"expert_parallel"`` (needs a mesh with ``expert_axis``, see
        :func:`expert_parallel_dispatch`).
      capacity_factor: expert capacity ``C = ceil(factor · T · k / E)`` of the
        capacity dispatch.
      grouped_matmul: the dropless and expert-parallel grouped matmul: ``"auto"``
        (blocked on CPU, ``ragged_dot`` elsewhere), ``"ragged"`` or ``"blocked"``.
      expert_axis: mesh axis name the experts are sharded over.
      activation: gate activation of the experts (``"silu"``: SwiGLU).
      dtype: computation dtype of the experts (the router always runs in float32).
      param_dtype: parameter dtype.

    Example:
      >>> cfg = MoEConfig(d_model=16, num_experts=8, top_k=2, expert_dim=8,
      ...                 num_shared_experts=1, n_group=4, topk_group=2)
      >>> y, aux = MoE(cfg, rngs=nnx.Rngs(0))(jnp.ones((2, 5, 16)))
      >>> y.shape, aux.tokens_per_expert.shape
      ((2, 5, 16), (8,))
    """

    d_model: int
    num_experts: int
    top_k: int
    expert_dim: int
    num_shared_experts: int = 0
    router: str = "noaux_tc"
    n_group: int = 1
    topk_group: int = 1
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.0
    aux_loss_coef: float = 0.0
    z_loss_coef: float = 0.0
    seq_aux_loss_coef: float = 0.0
    bias_update_rate: float = 1e-3
    dispatch: str = "dropless"
    capacity_factor: float = 1.25
    grouped_matmul: str = "auto"
    expert_axis: str = "expert"
    activation: str | Callable = "silu"
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        check_fields(self, positive_ints=("d_model", "num_experts", "top_k", "expert_dim",
                                          "n_group", "topk_group"),
                     nonnegative_ints=("num_shared_experts",),
                     positive=("routed_scaling_factor", "capacity_factor"),
                     nonnegative=("aux_loss_coef", "z_loss_coef", "seq_aux_loss_coef",
                                  "bias_update_rate"))
        check_routing(self.num_experts, self.top_k, self.n_group, self.topk_group)
        ROUTERS.get(self.router)
        if self.dispatch not in DISPATCHES:
            raise ValueError(f"dispatch must be one of {DISPATCHES}, got {self.dispatch!r}")
        if self.grouped_matmul not in GROUPED_MATMULS:
            raise ValueError(f"grouped_matmul must be one of {GROUPED_MATMULS}, got "
                             f"{self.grouped_matmul!r}")
        get_activation(self.activation)

    @property
    def active_expert_params(self) -> int:
        """Parameters a token uses in this layer: router, ``k`` routed and the shared
        experts (``3·D·F`` each)."""
        per_expert = 3 * self.d_model * self.expert_dim
        return (self.d_model * self.num_experts
                + (self.top_k + self.num_shared_experts) * per_expert)

    @property
    def total_params(self) -> int:
        """All parameters of the layer (router, ``E`` routed and the shared experts)."""
        per_expert = 3 * self.d_model * self.expert_dim
        return (self.d_model * self.num_experts
                + (self.num_experts + self.num_shared_experts) * per_expert)


def check_routing(num_experts: int, top_k: int, n_group: int, topk_group: int) -> None:
    """Raise ``ValueError`` naming the argument unless the routing sizes fit together:
    ``1 <= top_k <= E``, ``E % n_group == 0``, ``1 <= topk_group <= n_group`` and
    ``top_k <= topk_group · E / n_group`` (enough experts in the kept groups)."""
    check_int(num_experts, "num_experts")
    check_int(top_k, "top_k")
    check_int(n_group, "n_group")
    check_int(topk_group, "topk_group")
    if top_k > num_experts:
        raise ValueError(f"top_k={top_k} must be <= the number of experts E={num_experts}")
    if num_experts % n_group:
        raise ValueError(f"the number of experts E={num_experts} must be divisible by "
                         f"n_group={n_group}")
    if topk_group > n_group:
        raise ValueError(f"topk_group={topk_group} must be <= n_group={n_group}")
    if top_k > topk_group * (num_experts // n_group):
        raise ValueError(f"top_k={top_k} must be <= topk_group · E / n_group = "
                         f"{topk_group * (num_experts // n_group)} (experts in the kept groups)")


def _check_logits(logits, bias=None) -> tuple[int, int]:
    if jnp.ndim(logits) != 2:
        raise ValueError(f"logits must have shape [T, E], got shape "
                         f"{shape_str(shape_of(logits))}")
    T, E = logits.shape
    if bias is not None and shape_of(bias) != (E,):
        raise ValueError(f"bias must have shape [E] = ({E}), got shape "
                         f"{shape_str(shape_of(bias))}")
    return T, E


# ----------------------------------------------------------------------------- routers


class RouterOutput(NamedTuple):
    """What a router returns.

    Attributes:
      weights: ``[T, k]`` gates of the selected experts (float32).
      indices: ``[T, k]`` int32 selected experts (distinct per token).
      aux_loss: scalar, the configured auxiliary losses weighted by their coefficients.
      losses: ``{name: scalar}`` the unweighted auxiliary losses (``load_balance``,
        ``z_loss``, ``seq_balance``), for logging.
    """

    weights: jax.Array
    indices: jax.Array
    aux_loss: jax.Array
    losses: dict


ROUTERS: Registry[Callable[..., RouterOutput]] = Registry("MoE router")


def tokens_per_expert(indices: jax.Array, num_experts: int) -> jax.Array:
    """Number of token copies routed to each expert.

    ``n_i = Σ_{t,j} 1[e_{t,j} = i]``.

    Args:
      indices: ``[T, k]`` (or any shape) expert ids in ``[0, E)``.
      num_experts: ``E``.

    Returns:
      ``[E]`` float32 counts (sum ``T·k``).

    Example:
      >>> tokens_per_expert(jnp.array([[0, 1], [0, 2]]), 4).tolist()
      [2.0, 1.0, 1.0, 0.0]
    """
    one_hot = jax.nn.one_hot(jnp.reshape(indices, (-1,)), num_experts, dtype=jnp.float32)
    return jnp.sum(one_hot, axis=0)


def load_balancing_loss(probs: jax.Array, indices: jax.Array) -> jax.Array:
    """Switch / Mixtral load-balancing loss, 1 at perfect balance.

    ``L = E · Σ_i f_i · P_i`` with ``f_i = n_i / (T·k)`` the fraction of token copies
    routed to expert ``i`` and ``P_i = (1/T) Σ_t p_{t,i}`` its mean router probability.

    Args:
      probs: ``[T, E]`` router probabilities (rows sum to one).
      indices: ``[T, k]`` selected experts.

    Returns:
      Scalar float32.

    Example:
      >>> load_balancing_loss(jnp.full((4, 2), 0.5), jnp.array([[0], [1], [0], [1]]))
      Array(1., dtype=float32)

    Paper: Fedus et al. 2021, "Switch Transformers", eq. (4).
    """
    E = probs.shape[1]
    f = tokens_per_expert(indices, E) / max(indices.size, 1)
    P_mean = jnp.mean(probs.astype(jnp.float32), axis=0)
    return E * jnp.sum(f * P_mean)


def router_z_loss(logits: jax.Array) -> jax.Array:
    """Router z-loss: mean squared log-partition of the router logits.

    ``L_z = (1/T) Σ_t (log Σ_i exp z_{t,i})²``.

    Args:
      logits: ``[T, E]``.

    Returns:
      Scalar float32.

    Example:
      >>> router_z_loss(jnp.zeros((3, 4)))  # (log 4)²
      Array(1.921812, dtype=float32)

    Paper: Zoph et al. 2022, "ST-MoE", eq. (5).
    """
    lse = jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)
    return jnp.mean(lse**2)


def sequence_balance_loss(scores: jax.Array, indices: jax.Array, seq_len: int) -> jax.Array:
    """DeepSeek-V3's sequence-wise balance loss, averaged over sequences (unweighted).

    Per sequence of ``S`` tokens: ``f_i = E/(k·S) Σ_t 1[i ∈ topk(t)]``,
    ``s'_{t,i} = s_{t,i} / Σ_j s_{t,j}``, ``P_i = (1/S) Σ_t s'_{t,i}``,
    ``L = Σ_i f_i P_i`` (1 at perfect balance; the config's ``α`` multiplies it).

    Args:
      scores: ``[T, E]`` non-negative affinity scores (sigmoid or softmax), ``T = B·S``
        tokens laid out sequence after sequence.
      indices: ``[T, k]`` selected experts.
      seq_len: ``S`` (``T`` divisible by it).

    Returns:
      Scalar float32.

    Example:
      >>> sequence_balance_loss(jnp.full((4, 2), 0.5), jnp.array([[0], [1], [0], [1]]), 2)
      Array(1., dtype=float32)

    Paper: DeepSeek-AI 2024, "DeepSeek-V3 Technical Report", eqs. (17)–(20).
    """
    T, E = scores.shape
    k = indices.shape[1]
    check_int(seq_len, "seq_len")
    if T % seq_len:
        raise ValueError(f"seq_len={seq_len} must divide the number of tokens T={T}")
    B = T // seq_len
    s = scores.astype(jnp.float32)
    s = s / jnp.sum(s, axis=-1, keepdims=True)
    P_mean = jnp.mean(s.reshape(B, seq_len, E), axis=1)  # [B, E]
    one_hot = jax.nn.one_hot(indices.reshape(B, seq_len * k), E, dtype=jnp.float32)
    f = jnp.sum(one_hot, axis=1) * (E / (k * seq_len))  # [B, E]
    return jnp.mean(jnp.sum(f * P_mean, axis=-1))


def _aux(config, scores, probs, logits, indices, seq_len) -> tuple[jax.Array, dict]:
    """Weighted sum of the configured auxiliary losses and the unweighted parts."""
    losses, total = {}, jnp.zeros((), jnp.float32)
    if config.aux_loss_coef > 0:
        losses["load_balance"] = load_balancing_loss(probs, indices)
        total = total + config.aux_loss_coef * losses["load_balance"]
    if config.z_loss_coef > 0:
        losses["z_loss"] = router_z_loss(logits)
        total = total + config.z_loss_coef * losses["z_loss"]
    if config.seq_aux_loss_coef > 0:
        losses["seq_balance"] = sequence_balance_loss(scores, indices, seq_len)
        total = total + config.seq_aux_loss_coef * losses["seq_balance"]
    return total, losses


def softmax_topk_route(logits: jax.Array, *, top_k: int, norm_topk_prob: bool = True
                       ) -> tuple[jax.Array, jax.Array]:
    """Softmax router: the ``k`` most probable experts and their (renormalised) gates.

    ``p_t = softmax(z_t)``, ``e_{t,·} = topk(p_t, k)``, ``g_{t,j} = p_{t,e_{t,j}}``,
    divided by ``Σ_j g_{t,j}`` when ``norm_topk_prob`` (Mixtral).

    Args:
      logits: ``[T, E]`` router logits.
      top_k: ``k``.
      norm_topk_prob: renormalise the selected gates.

    Returns:
      ``(weights [T, k] float32, indices [T, k] int32)``, gates in decreasing order.

    Example:
      >>> w, i = softmax_topk_route(jnp.array([[0.0, 1.0, 2.0]]), top_k=2)
      >>> i.tolist()
      [[2, 1]]

    Paper: Shazeer et al. 2017; Fedus et al. 2021; Jiang et al. 2024 (Mixtral).
    """
    _, E = _check_logits(logits)
    check_routing(E, top_k, 1, 1)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    weights, indices = jax.lax.top_k(probs, top_k)
    if norm_topk_prob:
        weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    return weights, indices.astype(jnp.int32)


def noaux_tc_route(logits: jax.Array, bias: jax.Array, *, top_k: int, n_group: int = 1,
                   topk_group: int = 1, norm_topk_prob: bool = True,
                   routed_scaling_factor: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """DeepSeek-V3 / Moonlight gate: sigmoid scores, bias-corrected group-limited top-k.

    ``s_t = σ(z_t)``; corrected ``c_t = s_t + b``; each of the ``n_group`` groups of
    ``E / n_group`` experts is scored by the sum of its two largest ``c``; the
    ``topk_group`` best groups are kept and the others masked (``-∞``); the ``k``
    experts of largest masked ``c`` are chosen; gates are gathered from the
    *uncorrected* ``s``, ``g_{t,j} = s_{t,e_{t,j}}``, divided by ``Σ_j g_{t,j} + 1e-20``
    when ``norm_topk_prob`` and ``k > 1`` (as the reference gate), then multiplied by
    ``routed_scaling_factor``. The bias steers selection only; it gets no gradient
    (``jax.lax.stop_gradient``) and never enters the gates. A non-finite ``bias`` raises
    when concrete and makes every weight NaN when traced (``common.checks`` policy).

    Args:
      logits: ``[T, E]`` router logits (computed in float32).
      bias: ``[E]`` expert score correction ``b`` (``e_score_correction_bias``).
      top_k: ``k``.
      n_group: number of expert groups (``E % n_group == 0``; 1: no group limit).
      topk_group: groups kept per token (``<= n_group``).
      norm_topk_prob: renormalise the selected gates.
      routed_scaling_factor: gate multiplier.

    Returns:
      ``(weights [T, k] float32, indices [T, k] int32)`` in decreasing corrected score.

    Example:
      >>> w, i = noaux_tc_route(jnp.zeros((1, 4)), jnp.array([0.0, 1.0, 0.0, 2.0]),
      ...                       top_k=2, norm_topk_prob=True)
      >>> i.tolist(), w.tolist()
      ([[3, 1]], [[0.5, 0.5]])

    Paper: DeepSeek-AI 2024, "DeepSeek-V3 Technical Report", eqs. (12)–(16) and the
    released ``MoEGate`` (``topk_method="noaux_tc"``); Moonshot AI 2025 (Moonlight).
    """
    T, E = _check_logits(logits, bias)
    check_routing(E, top_k, n_group, topk_group)
    bias_ok = value_ok(bias, "bias", jnp.isfinite, "finite")
    scores = jax.nn.sigmoid(logits.astype(jnp.float32))  # [T, E]
    corrected = scores + jax.lax.stop_gradient(jnp.asarray(bias, jnp.float32))[None, :]
    if n_group > 1:
        group_size = E // n_group
        grouped = corrected.reshape(T, n_group, group_size)
        top2, _ = jax.lax.top_k(grouped, min(2, group_size))
        group_scores = jnp.sum(top2, axis=-1)  # [T, n_group]
        _, group_idx = jax.lax.top_k(group_scores, topk_group)
        group_mask = jnp.sum(jax.nn.one_hot(group_idx, n_group, dtype=jnp.bool_), axis=1) > 0
        expert_mask = jnp.repeat(group_mask, group_size, axis=1)  # [T, E]
        choice = jnp.where(expert_mask, corrected, -jnp.inf)
    else:
        choice = corrected
    _, indices = jax.lax.top_k(jax.lax.stop_gradient(choice), top_k)
    weights = jnp.take_along_axis(scores, indices, axis=1)
    if norm_topk_prob and top_k > 1:
        weights = weights / (jnp.sum(weights, axis=-1, keepdims=True) + 1e-20)
    return poison(weights * routed_scaling_factor, bias_ok), indices.astype(jnp.int32)


@ROUTERS.register("softmax_topk")
def softmax_topk_router(logits: jax.Array, bias: jax.Array, config: MoEConfig,
                        seq_len: int) -> RouterOutput:
    """``softmax_topk`` registry entry (``bias`` is checked but unused).

    Args:
      logits: ``[T, E]``; bias: ``[E]``; config: a :class:`MoEConfig`; seq_len: tokens
        per sequence (for the sequence-wise loss).

    Returns:
      :class:`RouterOutput`; aux losses: load balance, z-loss, sequence-wise balance.
    """
    _check_logits(logits, bias)
    weights, indices = softmax_topk_route(logits, top_k=config.top_k,
                                          norm_topk_prob=config.norm_topk_prob)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    aux, losses = _aux(config, probs, probs, logits, indices, seq_len)
    return RouterOutput(weights, indices, aux, losses)


@ROUTERS.register("noaux_tc")
def noaux_tc_router(logits: jax.Array, bias: jax.Array, config: MoEConfig,
                    seq_len: int) -> RouterOutput:
    """``noaux_tc`` registry entry: :func:`noaux_tc_route` with the config's sizes.

    The load-balancing loss uses the normalised sigmoid scores as probabilities.

    Args:
      logits: ``[T, E]``; bias: ``[E]``; config: a :class:`MoEConfig`; seq_len: tokens
        per sequence.

    Returns:
      :class:`RouterOutput`.
    """
    weights, indices = noaux_tc_route(
        logits, bias, top_k=config.top_k, n_group=config.n_group,
        topk_group=config.topk_group, norm_topk_prob=config.norm_topk_prob,
        routed_scaling_factor=config.routed_scaling_factor)
    scores = jax.nn.sigmoid(logits.astype(jnp.float32))
    probs = scores / jnp.sum(scores, axis=-1, keepdims=True)
    aux, losses = _aux(config, scores, probs, logits, indices, seq_len)
    return RouterOutput(weights, indices, aux, losses)


def update_router_bias(bias: jax.Array, load: jax.Array, rate: float) -> jax.Array:
    """Aux-loss-free balancing: push each expert's bias towards the mean load.

    ``b_i ← b_i + γ · sign(mean_j n_j − n_i)``: an overloaded expert's bias falls, an
    underloaded one's rises. Applied after each training step, outside the gradient.

    Args:
      bias: ``[E]`` current bias.
      load: ``[E]`` tokens per expert in the step (:func:`tokens_per_expert`).
      rate: ``γ >= 0``.

    Returns:
      ``[E]`` updated bias (same dtype).

    Example:
      >>> update_router_bias(jnp.zeros(3), jnp.array([5.0, 1.0, 3.0]), 0.1).tolist()
      [-0.1, 0.1, 0.0]

    Paper: Wang et al. 2024, "Auxiliary-Loss-Free Load Balancing Strategy for
    Mixture-of-Experts", algorithm 1; DeepSeek-V3 report, section 2.1.2.
    """
    if shape_of(load) != shape_of(bias) or jnp.ndim(bias) != 1:
        raise ValueError(f"load must have the shape [E] of bias {shape_str(shape_of(bias))}, "
                         f"got shape {shape_str(shape_of(load))}")
    load = jax.lax.stop_gradient(jnp.asarray(load, jnp.float32))
    step = rate * jnp.sign(jnp.mean(load) - load)
    return (bias + step).astype(jnp.asarray(bias).dtype)


def load_metrics(load: jax.Array) -> dict[str, jax.Array]:
    """Balance of a load vector: max violation and normalised entropy.

    ``MaxVio = max_i n_i / mean_j n_j − 1`` (0 when balanced); ``H = −Σ_i q_i log q_i /
    log E`` with ``q = n / Σ n`` (1 when balanced, 0 when one expert takes all).

    Args:
      load: ``[E]`` tokens per expert.

    Returns:
      ``{"max_violation": scalar, "entropy": scalar}``.

    Example:
      >>> load_metrics(jnp.array([2.0, 2.0]))["max_violation"]
      Array(0., dtype=float32)

    Paper: Wang et al. 2024 (MaxVio).
    """
    load = jnp.asarray(load, jnp.float32)
    E = load.shape[-1]
    mean = jnp.mean(load, axis=-1)
    max_violation = jnp.max(load, axis=-1) / jnp.maximum(mean, 1e-9) - 1.0
    q = load / jnp.maximum(jnp.sum(load, axis=-1, keepdims=True), 1e-9)
    entropy = -jnp.sum(jnp.where(q > 0, q * jnp.log(jnp.where(q > 0, q, 1.0)), 0.0), axis=-1)
    return {"max_violation": max_violation,
            "entropy": entropy / math.log(E) if E > 1 else jnp.ones_like(entropy)}


# ----------------------------------------------------------------------------- dispatch


def _check_dispatch(x, weights, indices, w_gate, w_up, w_down) -> tuple[int, int, int, int]:
    if jnp.ndim(x) != 2:
        raise ValueError(f"x must have shape [T, D], got shape {shape_str(shape_of(x))}")
    T, D = x.shape
    if jnp.ndim(indices) != 2 or indices.shape[0] != T:
        raise ValueError(f"indices must have shape [T, k] with T = {T}, got shape "
                         f"{shape_str(shape_of(indices))}")
    if not jnp.issubdtype(indices.dtype, jnp.integer):
        raise ValueError(f"indices must be integer expert ids, got dtype {indices.dtype}")
    k = indices.shape[1]
    if shape_of(weights) != (T, k):
        raise ValueError(f"weights must have shape [T, k] = ({T}, {k}), got shape "
                         f"{shape_str(shape_of(weights))}")
    if jnp.ndim(w_gate) != 3 or w_gate.shape[1] != D:
        raise ValueError(f"w_gate must have shape [E, D, F] with D = {D}, got shape "
                         f"{shape_str(shape_of(w_gate))}")
    E, _, F = w_gate.shape
    if shape_of(w_up) != (E, D, F):
        raise ValueError(f"w_up must have shape [E, D, F] = ({E}, {D}, {F}), got shape "
                         f"{shape_str(shape_of(w_up))}")
    if shape_of(w_down) != (E, F, D):
        raise ValueError(f"w_down must have shape [E, F, D] = ({E}, {F}, {D}), got shape "
                         f"{shape_str(shape_of(w_down))}")
    return T, D, E, k


def _resolve_method(method: str) -> str:
    if method not in GROUPED_MATMULS:
        raise ValueError(f"method must be one of {GROUPED_MATMULS}, got {method!r}")
    if method == "auto":
        # XLA:CPU lowers ragged_dot to a masked dense product over every group (E× the
        # work); GPU and TPU have grouped-GEMM kernels for it
        return "blocked" if jax.default_backend() == "cpu" else "ragged"
    return method


def default_block_size(num_rows: int, num_groups: int) -> int:
    """Rows per block of the blocked grouped matmul: the power of two nearest below
    ``M / (2·G)`` (padding is then at most about half of ``M``), clipped to [8, 128].

    Example:
      >>> default_block_size(4096 * 6, 64)
      128
    """
    target = max(1, num_rows // (2 * num_groups))
    return min(128, max(8, 1 << (target.bit_length() - 1)))


def _block_layout(group_sizes: jax.Array, num_rows: int, block_size: int):
    """Where each sorted row goes when every group is padded to whole blocks.

    Returns ``(pos [M], valid [M], block_group [nb], nb)``: the padded slot of each row
    (``nb·block_size`` for rows past ``Σ group_sizes``), and the group of each block.
    """
    G = group_sizes.shape[0]
    nb = -(-num_rows // block_size) + G  # Σ_g ceil(n_g / bs) <= ceil(M / bs) + G
    blocks = (group_sizes + block_size - 1) // block_size
    block_end = jnp.cumsum(blocks)
    group_end = jnp.cumsum(group_sizes)
    row = jnp.arange(num_rows)
    group = jnp.searchsorted(group_end, row, side="right")  # G for rows past the groups
    valid = group < G
    g = jnp.minimum(group, G - 1)
    start_row = group_end[g] - group_sizes[g]
    start_block = block_end[g] - blocks[g]
    pos = jnp.where(valid, start_block * block_size + row - start_row, nb * block_size)
    block_group = jnp.minimum(jnp.searchsorted(block_end, jnp.arange(nb), side="right"), G - 1)
    return pos, valid, block_group, nb


def _blocked_apply(xs, group_sizes, block_size, fn, out_features):
    """``fn(x_block [bs, D], group) -> [bs, out]`` over the block-padded rows, one
    ``lax.map`` step per block, then back to the sorted rows (0 past the groups)."""
    M, D = xs.shape
    bs = block_size or default_block_size(M, group_sizes.shape[0])
    pos, valid, block_group, nb = _block_layout(group_sizes, M, bs)
    padded = jnp.zeros((nb * bs, D), xs.dtype).at[pos].set(xs, mode="drop",
                                                           unique_indices=True)
    out = jax.lax.map(lambda blk: fn(blk[0], blk[1]), (padded.reshape(nb, bs, D), block_group))
    y = jnp.take(out.reshape(nb * bs, out_features), jnp.minimum(pos, nb * bs - 1), axis=0)
    return jnp.where(valid[:, None], y, jnp.zeros((), y.dtype))


def grouped_matmul(xs: jax.Array, w: jax.Array, group_sizes: jax.Array, *,
                   method: str = "auto", block_size: int | None = None) -> jax.Array:
    """Grouped matmul: consecutive row groups of ``xs`` times their own matrix.

    ``y_i = x_i W_{g(i)}`` where row ``i`` is in group ``g(i)`` (rows ``[Σ_{h<g} n_h,
    Σ_{h<=g} n_h)``); rows past ``Σ_g n_g`` give 0. Methods: ``"ragged"`` is
    ``jax.lax.ragged_dot`` (grouped-GEMM kernels on GPU/TPU; XLA:CPU computes it as a
    masked product over every group, ``G×`` the work); ``"blocked"`` pads every group
    to whole blocks of ``block_size`` rows and multiplies block by block under
    ``lax.map`` (``M + G·bs`` rows of work at most, dense-speed matmuls on a CPU);
    ``"auto"`` picks ``"blocked"`` on CPU and ``"ragged"`` elsewhere.

    Args:
      xs: ``[M, D]`` rows sorted by group.
      w: ``[G, D, F]`` one matrix per group.
      group_sizes: ``[G]`` int rows per group (``Σ <= M``).
      method: ``"auto"``, ``"ragged"`` or ``"blocked"``.
      block_size: rows per block (``None``: :func:`default_block_size`).

    Returns:
      ``[M, F]``.

    Example:
      >>> grouped_matmul(jnp.ones((5, 2)), jnp.ones((3, 2, 4)), jnp.array([2, 0, 3])).shape
      (5, 4)

    Paper: Gale et al. 2022, "MegaBlocks" (block-padded grouped matmul).
    """
    if jnp.ndim(xs) != 2 or jnp.ndim(w) != 3 or w.shape[1] != xs.shape[1]:
        raise ValueError(f"xs must have shape [M, D] and w [G, D, F] with the same D, got "
                         f"{shape_str(shape_of(xs))} and {shape_str(shape_of(w))}")
    if shape_of(group_sizes) != (w.shape[0],):
        raise ValueError(f"group_sizes must have shape [G] = ({w.shape[0]}), got shape "
                         f"{shape_str(shape_of(group_sizes))}")
    if block_size is not None:
        check_int(block_size, "block_size")
    group_sizes = jnp.asarray(group_sizes, jnp.int32)
    if _resolve_method(method) == "ragged":
        return jax.lax.ragged_dot(xs, w, group_sizes)
    return _blocked_apply(xs, group_sizes, block_size, lambda x, g: x @ w[g], w.shape[2])


def _grouped_swiglu(xs, w_gate, w_up, w_down, group_sizes, activation, method="auto",
                    block_size=None):
    """Rows of ``xs [M, D]`` sorted by expert through their expert's SwiGLU (rows past
    ``Σ group_sizes`` come out 0): three ``ragged_dot`` s, or one blocked pass."""
    if _resolve_method(method) == "ragged":
        h = activation(jax.lax.ragged_dot(xs, w_gate, group_sizes)) * jax.lax.ragged_dot(
            xs, w_up, group_sizes)
        return jax.lax.ragged_dot(h, w_down, group_sizes)

    def expert(x, g):
        return (activation(x @ w_gate[g]) * (x @ w_up[g])) @ w_down[g]

    return _blocked_apply(xs, group_sizes, block_size, expert, w_down.shape[2])


def dropless_dispatch(x: jax.Array, weights: jax.Array, indices: jax.Array, w_gate: jax.Array,
                      w_up: jax.Array, w_down: jax.Array, *, activation="silu",
                      method: str = "auto", block_size: int | None = None) -> jax.Array:
    """Dropless MoE: sort the ``T·k`` token copies by expert, one grouped matmul each.

    ``y_t = Σ_j g_{t,j} · W^{down}_{e}(act(W^{gate}_{e} x_t) ⊙ W^{up}_{e} x_t)``,
    ``e = e_{t,j}``; the copies are ordered by expert (stable argsort) so that
    one grouped matmul (``jax.lax.ragged_dot``, or its block-padded CPU equivalent, see
    :func:`grouped_matmul`) multiplies each contiguous group by its expert's weights,
    then un-permuted and combined. No token is dropped, whatever the load.

    Args:
      x: ``[T, D]`` tokens.
      weights: ``[T, k]`` gates.
      indices: ``[T, k]`` int expert ids in ``[0, E)``.
      w_gate: ``[E, D, F]``; w_up: ``[E, D, F]``; w_down: ``[E, F, D]`` expert weights.
      activation: gate activation (name or callable; ``"silu"``: SwiGLU).
      method: the grouped matmul, ``"auto"``, ``"ragged"`` (``jax.lax.ragged_dot``) or
        ``"blocked"`` (see :func:`grouped_matmul`).
      block_size: rows per block of the blocked method.

    Returns:
      ``[T, D]`` in the dtype of ``x``.

    Example:
      >>> y = dropless_dispatch(x, w, i, wg, wu, wd)  # x [T, D] -> y [T, D]

    Paper: Gale et al. 2022, "MegaBlocks: Efficient Sparse Training with
    Mixture-of-Experts" (dropless, grouped matmul).
    """
    T, D, E, k = _check_dispatch(x, weights, indices, w_gate, w_up, w_down)
    act = get_activation(activation)
    flat = indices.reshape(-1)  # [T·k]
    order = jnp.argsort(flat, stable=True)
    group_sizes = jnp.bincount(flat, length=E).astype(jnp.int32)
    if _resolve_method(method) == "blocked":
        return _dropless_blocked(x, weights, order, group_sizes, w_gate, w_up, w_down, act,
                                 block_size or default_block_size(T * k, E))
    xs = jnp.take(x, order // k, axis=0)  # [T·k, D] sorted by expert
    ys = _grouped_swiglu(xs, w_gate, w_up, w_down, group_sizes, act, method,
                         block_size)  # [T·k, D]
    y = jnp.zeros_like(ys).at[order].set(ys, unique_indices=True).reshape(T, k, D)
    return jnp.einsum("tk,tkd->td", weights.astype(y.dtype), y).astype(x.dtype)


def _dropless_blocked(x, weights, order, group_sizes, w_gate, w_up, w_down, act, bs):
    """Blocked dropless dispatch without ``[T·k, D]`` intermediates: the padded slots
    gather their tokens straight from ``x`` and scatter-add their gated outputs back."""
    T, D = x.shape
    k = weights.shape[1]
    M = T * k
    pos, _, block_group, nb = _block_layout(group_sizes, M, bs)
    slots = nb * bs
    # sorted copy i sits in slot pos[i]; an empty slot points past the copies (M)
    copy = jnp.full((slots,), M, jnp.int32).at[pos].set(order.astype(jnp.int32), mode="drop",
                                                         unique_indices=True)
    token = copy // k  # T for an empty slot
    gate = jnp.take(weights.reshape(-1).astype(x.dtype), copy, mode="fill", fill_value=0)
    padded = jnp.take(x, token, axis=0, mode="fill", fill_value=0).reshape(nb, bs, D)

    def expert(blk):
        xb, wg, wu, wd = blk
        return (act(xb @ wg) * (xb @ wu)) @ wd

    # gathering each block's weights up front makes their gradient one segment sum
    # (a scan step indexing the [E, D, F] weights would update the whole gradient)
    blocks = (padded, w_gate[block_group], w_up[block_group], w_down[block_group])
    out = jax.lax.map(expert, blocks).reshape(slots, D)  # [nb·bs, D]
    return jnp.zeros_like(x).at[token].add(out * gate[:, None], mode="drop")


def expert_capacity(num_tokens: int, num_experts: int, top_k: int,
                    capacity_factor: float) -> int:
    """Slots per expert: ``C = ceil(capacity_factor · T · k / E)`` (at least 1).

    Example:
      >>> expert_capacity(64, 8, 2, 1.0)
      16
    """
    return max(1, math.ceil(capacity_factor * num_tokens * top_k / num_experts))


def capacity_dispatch(x: jax.Array, weights: jax.Array, indices: jax.Array, w_gate: jax.Array,
                      w_up: jax.Array, w_down: jax.Array, *, capacity: int,
                      activation="silu") -> tuple[jax.Array, jax.Array]:
    """Capacity-limited MoE with one-hot dispatch and combine einsums (GShard / Switch).

    Copies claim slots in priority order *choice-major*: every token's first choice
    (in token order), then every token's second, and so on; copy ``(t, j)`` takes slot
    ``c = #{earlier copies to e_{t,j}}`` and is dropped (contributes 0) when
    ``c >= C``. With ``D[t, e, c]`` the dispatch one-hot and ``G = g ⊙ D``:
    ``X_e = Σ_t D[t,e,·] x_t`` (``[E, C, D]``), ``Y_e = FFN_e(X_e)``,
    ``y_t = Σ_{e,c} G[t,e,c] Y_e[c]``.

    Args:
      x: ``[T, D]``; weights: ``[T, k]``; indices: ``[T, k]``; w_gate, w_up, w_down:
        expert weights as in :func:`dropless_dispatch`.
      capacity: ``C >= 1`` slots per expert (see :func:`expert_capacity`).
      activation: gate activation.

    Returns:
      ``(y [T, D], dropped)``: the output and the number of dropped copies (int32).

    Example:
      >>> y, dropped = capacity_dispatch(x, w, i, wg, wu, wd, capacity=4)

    Paper: Lepikhin et al. 2020, "GShard", algorithm 2; Fedus et al. 2021, section 2.2.
    """
    T, _, E, k = _check_dispatch(x, weights, indices, w_gate, w_up, w_down)
    check_int(capacity, "capacity")
    act = get_activation(activation)
    expert_1h = jax.nn.one_hot(indices.T, E, dtype=jnp.int32)  # [k, T, E] choice-major
    position = jnp.cumsum(expert_1h.reshape(k * T, E), axis=0).reshape(k, T, E) - 1
    position = jnp.sum(position * expert_1h, axis=-1)  # [k, T] slot of each copy
    keep = position < capacity
    dropped = jnp.sum(~keep).astype(jnp.int32)
    slot_1h = jax.nn.one_hot(jnp.where(keep, position, capacity), capacity,
                             dtype=x.dtype)  # [k, T, C]; a dropped copy has no slot
    dispatch = jnp.einsum("kte,ktc->tec", expert_1h.astype(x.dtype), slot_1h)  # [T, E, C]
    combine = jnp.einsum("kt,kte,ktc->tec", weights.T.astype(x.dtype),
                         expert_1h.astype(x.dtype), slot_1h)
    xe = jnp.einsum("tec,td->ecd", dispatch, x)  # [E, C, D]
    h = act(jnp.einsum("ecd,edf->ecf", xe, w_gate)) * jnp.einsum("ecd,edf->ecf", xe, w_up)
    ye = jnp.einsum("ecf,efd->ecd", h, w_down)
    return jnp.einsum("tec,ecd->td", combine, ye).astype(x.dtype), dropped


def loop_dispatch(x: jax.Array, weights: jax.Array, indices: jax.Array, w_gate: jax.Array,
                  w_up: jax.Array, w_down: jax.Array, *, activation="silu") -> jax.Array:
    """Reference MoE: every expert on every token, masked by its gate (``E×`` the work).

    ``y_t = Σ_e (Σ_j g_{t,j} 1[e_{t,j} = e]) · FFN_e(x_t)``, one expert at a time
    under ``lax.scan``.

    Args:
      as :func:`dropless_dispatch`.

    Returns:
      ``[T, D]``.

    Example:
      >>> y = loop_dispatch(x, w, i, wg, wu, wd)

    Paper: Shazeer et al. 2017 (the dense formulation of the sparse mixture).
    """
    E = _check_dispatch(x, weights, indices, w_gate, w_up, w_down)[2]
    act = get_activation(activation)
    gate = jnp.einsum("tk,tke->te", weights.astype(x.dtype),
                      jax.nn.one_hot(indices, E, dtype=x.dtype))  # [T, E]

    def body(y, expert):
        wg, wu, wd, g = expert
        return y + g[:, None] * ((act(x @ wg) * (x @ wu)) @ wd), None

    y, _ = jax.lax.scan(body, jnp.zeros_like(x), (w_gate, w_up, w_down, gate.T))
    return y


def _ep_local(x, weights, indices, w_gate, w_up, w_down, *, axis, num_shards, buffer,
              activation, method):
    """Per-device body of :func:`expert_parallel_dispatch` (inside ``shard_map``)."""
    T, D = x.shape
    k = indices.shape[1]
    E_local = w_gate.shape[0]
    flat = indices.reshape(-1)  # [T·k] global expert ids
    dest = flat // E_local  # device holding the expert
    local_expert = flat % E_local
    order = jnp.argsort(flat, stable=True)  # grouped by device, then by expert
    sorted_dest = dest[order]
    starts = jnp.searchsorted(sorted_dest, jnp.arange(num_shards), side="left")
    rank_sorted = jnp.arange(T * k) - starts[sorted_dest]
    slot = jnp.zeros_like(rank_sorted).at[order].set(rank_sorted)  # [T·k]
    fits = slot < buffer
    dropped = jnp.sum(~fits).astype(jnp.int32)
    row = jnp.where(fits, dest * buffer + slot, num_shards * buffer)  # overflow -> dropped
    send_x = jnp.zeros((num_shards * buffer, D), x.dtype).at[row].set(
        jnp.repeat(x, k, axis=0), mode="drop")
    send_e = jnp.full((num_shards * buffer,), E_local, jnp.int32).at[row].set(
        local_expert.astype(jnp.int32), mode="drop")  # E_local marks an empty slot
    recv_x = jax.lax.all_to_all(send_x.reshape(num_shards, buffer, D), axis, 0, 0)
    recv_e = jax.lax.all_to_all(send_e.reshape(num_shards, buffer), axis, 0, 0)
    recv_x, recv_e = recv_x.reshape(-1, D), recv_e.reshape(-1)
    local_order = jnp.argsort(recv_e, stable=True)  # empty slots last
    group_sizes = jnp.bincount(recv_e, length=E_local).astype(jnp.int32)
    ys = _grouped_swiglu(recv_x[local_order], w_gate, w_up, w_down, group_sizes, activation,
                         method)
    ys = jnp.zeros_like(ys).at[local_order].set(ys, unique_indices=True)
    back = jax.lax.all_to_all(ys.reshape(num_shards, buffer, D), axis, 0, 0).reshape(-1, D)
    y = jnp.take(back, jnp.minimum(row, num_shards * buffer - 1), axis=0)
    y = jnp.where(fits[:, None], y, jnp.zeros((), y.dtype)).reshape(T, k, D)
    out = jnp.einsum("tk,tkd->td", weights.astype(y.dtype), y).astype(x.dtype)
    return out, jax.lax.psum(dropped, axis)


def expert_parallel_dispatch(x: jax.Array, weights: jax.Array, indices: jax.Array,
                             w_gate: jax.Array, w_up: jax.Array, w_down: jax.Array, *,
                             mesh=None, axis: str = "expert", capacity_factor: float | None = None,
                             activation="silu", method: str = "auto"
                             ) -> tuple[jax.Array, jax.Array]:
    """Expert-parallel MoE: experts and tokens sharded over ``axis``, ``all_to_all`` exchange.

    With ``P`` devices on ``axis``, device ``p`` holds tokens ``x[p·T/P : (p+1)·T/P]``
    and experts ``[p·E/P, (p+1)·E/P)``. Each device sorts its token copies by
    destination device into a ``[P, B, D]`` send buffer, ``all_to_all`` delivers them,
    the local experts run as one grouped matmul (:func:`grouped_matmul`), a second ``all_to_all``
    returns the outputs, and each device combines its tokens' ``k`` outputs. The
    buffer holds ``B = T/P · k`` copies per destination by default, so nothing is
    dropped and the result equals :func:`dropless_dispatch`; ``capacity_factor``
    shrinks it to ``ceil(factor · T/P · k / P)`` and drops (counts) the overflow.

    Args:
      x: ``[T, D]`` (``T`` divisible by ``P``); weights, indices, w_gate, w_up,
        w_down: as in :func:`dropless_dispatch` (``E`` divisible by ``P``).
      mesh: a ``jax.sharding.Mesh`` with ``axis`` (``None``: the mesh set with
        ``jax.set_mesh``).
      axis: mesh axis name the experts are sharded over.
      capacity_factor: ``None`` (dropless) or the per-destination buffer factor.
      activation: gate activation.
      method: the local grouped matmul (see :func:`grouped_matmul`).

    Returns:
      ``(y [T, D], dropped)``: output and the number of dropped copies (int32).

    Example:
      >>> mesh = jax.make_mesh((8,), ("expert",))
      >>> y, dropped = expert_parallel_dispatch(x, w, i, wg, wu, wd, mesh=mesh)

    Paper: Lepikhin et al. 2020, "GShard", section 3.2 (all-to-all expert parallelism).
    """
    T, _, E, k = _check_dispatch(x, weights, indices, w_gate, w_up, w_down)
    if mesh is None:
        mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or axis not in getattr(mesh, "axis_names", ()):
        raise ValueError(f"expert_parallel_dispatch needs a mesh with axis {axis!r}; pass "
                         "mesh= or set one with jax.set_mesh")
    num_shards = mesh.shape[axis]
    if E % num_shards or T % num_shards:
        raise ValueError(f"the number of experts E={E} and of tokens T={T} (x) must be "
                         f"divisible by the {num_shards} devices of mesh axis {axis!r}")
    T_local = T // num_shards
    buffer = T_local * k
    if capacity_factor is not None:
        buffer = min(buffer, max(1, math.ceil(capacity_factor * T_local * k / num_shards)))
    fn = jax.shard_map(
        lambda *a: _ep_local(*a, axis=axis, num_shards=num_shards, buffer=buffer,
                        activation=get_activation(activation), method=method),
        mesh=mesh, in_specs=(P(axis), P(axis), P(axis), P(axis), P(axis), P(axis)),
        out_specs=(P(axis), P()))

    def place(a):
        # explicit-axis meshes need jax.reshard; auto-axis ones take a constraint
        sharding = jax.sharding.NamedSharding(mesh, P(axis))
        explicit = any(t == jax.sharding.AxisType.Explicit
                       for t in getattr(mesh, "axis_types", ()))
        return jax.reshard(a, sharding) if explicit else jax.lax.with_sharding_constraint(
            a, sharding)

    return jax.jit(lambda *a: fn(*map(place, a)))(x, weights, indices, w_gate, w_up, w_down)


# ----------------------------------------------------------------------------- layer


class RouterBias(nnx.Variable):
    """The per-expert score-correction bias of ``noaux_tc``: model state that is not
    trained by gradient (it lives in ``TrainState.rest``) and is changed by
    :func:`update_router_bias` after each step."""


class MoEAux(NamedTuple):
    """Side outputs of a :class:`MoE` call.

    Attributes:
      aux_loss: scalar weighted auxiliary loss (add it to the training loss).
      tokens_per_expert: ``[E]`` routed copies per expert (the bias update's load).
      dropped: int32 number of dropped copies (0 for dropless dispatch).
      losses: ``{name: scalar}`` unweighted auxiliary losses.
      indices: ``[T, k]`` selected experts (for routing figures).
    """

    aux_loss: jax.Array
    tokens_per_expert: jax.Array
    dropped: jax.Array
    losses: dict
    indices: jax.Array


def _expert_init(key, shape, dtype):
    """LeCun normal over each expert's fan-in (axis 1), as ``nnx.Linear`` per expert."""
    return nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=1,
                                             out_axis=2, batch_axis=(0,))(key, shape, dtype)


class MoE(nnx.Module):
    """Mixture-of-experts SwiGLU feed-forward layer with shared experts.

    ``y_t = Σ_j g_{t,j} · SwiGLU_{e_{t,j}}(x_t) + SwiGLU_shared(x_t)`` with
    ``(g, e) = router(x_t W_r)``; the router logits are computed in float32 whatever
    the compute dtype.

    Args:
      config: a :class:`MoEConfig`.
      rngs: ``nnx.Rngs`` for initialisation.

    Call:
      ``x [..., D]`` (for the sequence-wise loss ``[B, S, D]``) → ``(y [..., D],
      MoEAux)``; ``mesh`` for ``dispatch="expert_parallel"`` (or ``jax.set_mesh``).

    Attributes:
      router_kernel: ``Param [D, E]``; bias: ``RouterBias [E]``; w_gate, w_up:
      ``Param [E, D, F]``; w_down: ``Param [E, F, D]``; shared: a ``GatedMLP`` or None.

    Example:
      >>> cfg = MoEConfig(d_model=16, num_experts=8, top_k=2, expert_dim=8)
      >>> layer = MoE(cfg, rngs=nnx.Rngs(0))
      >>> y, aux = layer(jnp.ones((3, 16)))
      >>> int(aux.tokens_per_expert.sum())
      6

    Paper: DeepSeek-AI 2024 (DeepSeekMoE layout: fine-grained routed plus shared
    experts); Shazeer 2020 (SwiGLU).
    """

    def __init__(self, config: MoEConfig, *, rngs: nnx.Rngs):
        if not isinstance(config, MoEConfig):
            raise ValueError(f"config must be a MoEConfig, got {type(config).__name__}")
        self.config = config
        D, E, F = config.d_model, config.num_experts, config.expert_dim
        pd = config.param_dtype
        self.router_kernel = nnx.Param(
            nnx.initializers.lecun_normal()(rngs.params(), (D, E), jnp.float32))
        self.bias = RouterBias(jnp.zeros((E,), jnp.float32))
        self.w_gate = nnx.Param(_expert_init(rngs.params(), (E, D, F), pd))
        self.w_up = nnx.Param(_expert_init(rngs.params(), (E, D, F), pd))
        self.w_down = nnx.Param(_expert_init(rngs.params(), (E, F, D), pd))
        if config.num_shared_experts:
            self.shared = GatedMLP(D, config.num_shared_experts * F,
                                   activation=config.activation, dtype=config.dtype,
                                   param_dtype=pd, rngs=rngs)
        else:
            self.shared = nnx.data(None)

    def route(self, x: jax.Array, seq_len: int | None = None) -> RouterOutput:
        """Router output for tokens ``x [T, D]`` (float32 logits)."""
        logits = x.astype(jnp.float32) @ self.router_kernel[...].astype(jnp.float32)
        return ROUTERS.get(self.config.router)(logits, self.bias[...], self.config,
                                               seq_len or x.shape[0])

    def __call__(self, x: jax.Array, *, mesh=None) -> tuple[jax.Array, MoEAux]:
        cfg = self.config
        if jnp.ndim(x) < 1 or x.shape[-1] != cfg.d_model:
            raise ValueError(f"x must have shape [..., {cfg.d_model}], got shape "
                             f"{shape_str(shape_of(x))}")
        lead = x.shape[:-1]
        seq_len = x.shape[-2] if x.ndim >= 2 else None
        dtype = cfg.dtype or x.dtype
        xt = x.reshape(-1, cfg.d_model)
        routed = self.route(xt, seq_len)
        weights = routed.weights.astype(dtype)
        experts = [w[...].astype(dtype) for w in (self.w_gate, self.w_up, self.w_down)]
        xc = xt.astype(dtype)
        dropped = jnp.zeros((), jnp.int32)
        if cfg.dispatch == "dropless":
            y = dropless_dispatch(xc, weights, routed.indices, *experts,
                                  activation=cfg.activation, method=cfg.grouped_matmul)
        elif cfg.dispatch == "capacity":
            capacity = expert_capacity(xt.shape[0], cfg.num_experts, cfg.top_k,
                                       cfg.capacity_factor)
            y, dropped = capacity_dispatch(xc, weights, routed.indices, *experts,
                                           capacity=capacity, activation=cfg.activation)
        elif cfg.dispatch == "loop":
            y = loop_dispatch(xc, weights, routed.indices, *experts, activation=cfg.activation)
        else:
            y, dropped = expert_parallel_dispatch(xc, weights, routed.indices, *experts,
                                                  mesh=mesh, axis=cfg.expert_axis,
                                                  activation=cfg.activation,
                                                  method=cfg.grouped_matmul)
        if self.shared is not None:
            y = y + self.shared(xc)
        aux = MoEAux(routed.aux_loss, tokens_per_expert(routed.indices, cfg.num_experts),
                     dropped, routed.losses, routed.indices)
        return y.reshape(*lead, cfg.d_model), aux
