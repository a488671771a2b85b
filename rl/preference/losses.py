"""Preference losses: the DPO family (TRL's ``loss_type`` names), SimPO, CPO, ORPO, KTO
and the Bradley–Terry reward-model loss, behind one registry and one entry point.

Notation (all per pair ``b`` of a batch ``[B]``): ``π`` the policy, ``π_ref`` the
reference, ``log π(y_w|x)`` / ``log π(y_l|x)`` the sequence log-probabilities of the
chosen (winning) and rejected (losing) completions (summed over completion tokens
unless stated), ``|y|`` a completion's token count, and

* chosen log-ratio     ``c = log π(y_w|x) − log π_ref(y_w|x)``,
* rejected log-ratio   ``r = log π(y_l|x) − log π_ref(y_l|x)``,
* the DPO logit        ``Δ = c − r``  (TRL's ``logits`` / ``delta_score``),
* implicit rewards     ``β c`` and ``β r`` (TRL's ``chosen_rewards``, ``rejected_rewards``).

Every loss is a function registered in :data:`PREFERENCE_LOSSES` with
:func:`register_preference_loss`; :func:`preference_loss` validates the inputs once,
looks the loss up by name (a typo lists the valid names) and returns the per-pair
losses ``[B]`` (take ``.mean()`` for TRL's batch loss). A new loss is one decorated
function and is then covered by the shared family tests (reference formula, finite
values and gradients at ``|log-ratio| = 1e4``, bad inputs).

Bad values follow :mod:`common.checks`: concrete ones raise ``ValueError`` naming the
argument, traced ones (a ``β`` sweep under ``vmap``, inputs under ``jit``) give NaN losses.

Numerics: every ``−log σ(x)`` is ``−jax.nn.log_sigmoid(x)`` (a softplus, no overflow),
``exp`` terms are folded into log-space where a sigmoid multiplies them (DiscoPOP), and
ORPO's ``log(1 − p)`` uses a stable ``log1mexp``; all losses are finite, with finite
gradients, at log-ratios of ``±1e4``.

Example:
    >>> losses = preference_loss(pc, pr, rc, rr, loss_type="sigmoid", beta=0.1)  # [B]
    >>> loss = losses.mean()
    >>> mixed = preference_loss(pc, pr, rc, rr, loss_type=("sigmoid", "sft"),
    ...                         loss_weights=(1.0, 0.2))  # DPO + NLL (RPO-style)

Papers: Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is
Secretly a Reward Model" (and its reference code for conservative DPO); names and
formulas follow Hugging Face TRL's ``DPOTrainer`` (1.x), ``CPOTrainer``,
``ORPOTrainer``, ``KTOTrainer`` and ``RewardTrainer``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from common.checks import poison, shape_of, value_ok
from common.registry import Registry

__all__ = [
    "PREFERENCE_LOSSES",
    "PreferenceInputs",
    "PreferenceLoss",
    "bradley_terry_loss",
    "kto_kl_estimate",
    "kto_loss",
    "preference_loss",
    "preference_metrics",
    "register_preference_loss",
    "update_reward_mean",
]


class PreferenceInputs(NamedTuple):
    """The validated inputs every registered loss receives (all ``[B]`` or None).

    ``ref_*`` are zeros in reference-free mode; ``*_lengths`` are floats clamped to
    ``>= 1`` (TRL's ``clamp(min=1)``) when given, for per-sequence normalisation;
    ``chosen_token_counts`` are the same counts unclamped (a zero-length completion
    counts 0 tokens), for batch token means.
    """

    policy_chosen_logps: jax.Array
    policy_rejected_logps: jax.Array | None
    ref_chosen_logps: jax.Array | None
    ref_rejected_logps: jax.Array | None
    chosen_lengths: jax.Array | None
    rejected_lengths: jax.Array | None
    chosen_token_counts: jax.Array | None = None

    @property
    def chosen_logratios(self) -> jax.Array:
        """``c = log π(y_w) − log π_ref(y_w)``, ``[B]``."""
        return self.policy_chosen_logps - self.ref_chosen_logps

    @property
    def rejected_logratios(self) -> jax.Array:
        """``r = log π(y_l) − log π_ref(y_l)``, ``[B]``."""
        return self.policy_rejected_logps - self.ref_rejected_logps

    @property
    def logits(self) -> jax.Array:
        """``Δ = c − r``, ``[B]``."""
        return self.chosen_logratios - self.rejected_logratios


@dataclasses.dataclass(frozen=True)
class PreferenceLoss:
    """A registered preference loss and what it needs.

    Attributes:
      name: the ``loss_type`` string.
      fn: ``fn(inputs: PreferenceInputs, *, beta, label_smoothing, **options) -> [B]``.
      label_smoothing: ``(low, high, high_inclusive)`` range the loss accepts (``low``
        included), ``(low, high, high_inclusive, low_inclusive)`` to say whether ``low``
        is, or None when the loss does not use label smoothing (then it must be 0).
      needs_lengths: True, False, or ``f(options) -> bool`` (e.g. IPO needs lengths
        only in its length-normalised form).
      needs_reference: False for reference-free losses (SimPO, CPO, ORPO, SFT).
      needs_rejected: False for losses of the chosen completions only (SFT).
      nonpositive_logps: True when the policy log-probs must be ``<= 0`` (ORPO's
        ``log(1 − p)``); larger values are refused (eager) or poison the loss (traced).
      options: extra keyword options the loss accepts, with their defaults.
      paper: where the loss comes from.
    """

    name: str
    fn: Callable[..., jax.Array]
    label_smoothing: tuple[float, float, bool] | tuple[float, float, bool, bool] | None = None
    needs_lengths: bool | Callable[[Mapping[str, Any]], bool] = False
    needs_reference: bool = True
    needs_rejected: bool = True
    nonpositive_logps: bool = False
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    paper: str = ""

    def lengths_needed(self, options: Mapping[str, Any]) -> bool:
        if callable(self.needs_lengths):
            return bool(self.needs_lengths(options))
        return bool(self.needs_lengths)

    def label_smoothing_interval(self) -> tuple[float, float, bool, bool]:
        """``(low, high, low_inclusive, high_inclusive)``; requires ``label_smoothing``."""
        low, high, high_inclusive, *rest = self.label_smoothing
        return low, high, bool(rest[0]) if rest else True, high_inclusive


PREFERENCE_LOSSES: Registry[PreferenceLoss] = Registry("preference loss")


def register_preference_loss(name: str, *, label_smoothing: tuple | None = None,
                             needs_lengths: bool | Callable = False,
                             needs_reference: bool = True, needs_rejected: bool = True,
                             nonpositive_logps: bool = False,
                             options: Mapping[str, Any] | None = None, paper: str = ""):
    """Decorator registering ``fn(inputs, *, beta, label_smoothing, **options) -> [B]``.

    Example:
        >>> @register_preference_loss("my_loss", paper="...")
        ... def my_loss(x, *, beta, label_smoothing):
        ...     return jax.nn.softplus(-beta * x.logits)
    """

    def decorator(fn):
        PREFERENCE_LOSSES.add(name, PreferenceLoss(
            name=name, fn=fn, label_smoothing=label_smoothing, needs_lengths=needs_lengths,
            needs_reference=needs_reference, needs_rejected=needs_rejected,
            nonpositive_logps=nonpositive_logps, options=dict(options or {}), paper=paper))
        return fn

    return decorator


def _nls(x: jax.Array) -> jax.Array:
    """``−log σ(x)`` computed as ``softplus(−x)``: finite for any finite ``x``."""
    return -jax.nn.log_sigmoid(x)


def _smoothed_sigmoid(x: jax.Array, label_smoothing) -> jax.Array:
    """``−(1 − ε) log σ(x) − ε log σ(−x)``: the sigmoid loss against soft labels."""
    return (1.0 - label_smoothing) * _nls(x) + label_smoothing * _nls(-x)


# ----------------------------------------------------------------------------- DPO family


@register_preference_loss("sigmoid", label_smoothing=(0.0, 0.5, True),
                          paper="Rafailov et al. 2023 (DPO); conservative DPO (cDPO): "
                                "Mitchell 2023, 'A note on DPO with noisy preferences'")
def sigmoid_loss(x: PreferenceInputs, *, beta, label_smoothing):
    """DPO: ``−(1 − ε) log σ(βΔ) − ε log σ(−βΔ)``; ``ε = label_smoothing`` (cDPO, the
    DPO authors' ``label_smoothing`` for preferences flipped with probability ε)."""
    return _smoothed_sigmoid(beta * x.logits, label_smoothing)


@register_preference_loss("hinge", paper="Liu et al. 2024, 'Statistical Rejection "
                                         "Sampling Improves Preference Optimization' (RSO)")
def hinge_loss(x: PreferenceInputs, *, beta, label_smoothing):
    """RSO hinge: ``max(0, 1 − βΔ)``."""
    return jax.nn.relu(1.0 - beta * x.logits)


def _ipo_needs_lengths(options) -> bool:
    return bool(options.get("ipo_normalize", True))


@register_preference_loss("ipo", needs_lengths=_ipo_needs_lengths,
                          options={"ipo_normalize": True},
                          paper="Azar et al. 2023, 'A General Theoretical Paradigm to "
                                "Understand Learning from Human Preferences' (IPO), eq. 17")
def ipo_loss(x: PreferenceInputs, *, beta, label_smoothing, ipo_normalize=True):
    """IPO: ``(Δ' − 1/(2β))²`` with ``β`` the paper's τ.

    ``ipo_normalize=True`` (TRL): ``Δ' = c/|y_w| − r/|y_l|`` (per-token log-ratios, so
    the loss does not grow with completion length; needs the lengths).
    ``ipo_normalize=False`` (the DPO authors' code): ``Δ' = Δ`` on summed log-probs.
    """
    if ipo_normalize:
        delta = (x.chosen_logratios / x.chosen_lengths
                 - x.rejected_logratios / x.rejected_lengths)
    else:
        delta = x.logits
    return (delta - 1.0 / (2.0 * beta)) ** 2


@register_preference_loss("exo_pair", label_smoothing=(0.0, 1.0, False, False),
                          paper="Ji et al. 2024, 'Towards Efficient Exact Optimization of "
                                "Language Model Alignment' (EXO), eq. 16")
def exo_pair_loss(x: PreferenceInputs, *, beta, label_smoothing):
    """EXO (pairwise): ``KL(p_θ ‖ p_ε)`` over {chosen, rejected} with
    ``p_θ = (σ(βΔ), σ(−βΔ))`` and ``p_ε = (1 − ε, ε)``:
    ``σ(βΔ)(log σ(βΔ) − log(1 − ε)) + σ(−βΔ)(log σ(−βΔ) − log ε)``.

    ``ε = label_smoothing`` in ``(0, 1)``: ``log ε`` must be finite, so ``ε = 0`` is
    refused, as in TRL 1.x (TRL 0.19 and earlier silently replaced 0 by ``1e-3``; pass
    ``label_smoothing=1e-3`` for that loss).
    """
    eps = label_smoothing
    z = beta * x.logits
    return (jax.nn.sigmoid(z) * (jax.nn.log_sigmoid(z) - jnp.log1p(-eps))
            + jax.nn.sigmoid(-z) * (jax.nn.log_sigmoid(-z) - jnp.log(eps)))


@register_preference_loss("nca_pair", paper="Chen et al. 2024, 'Noise Contrastive "
                                            "Alignment of Language Models with Explicit "
                                            "Rewards' (NCA)")
def nca_pair_loss(x: PreferenceInputs, *, beta, label_smoothing):
    """NCA (pairwise): ``−log σ(βc) − ½ log σ(−βc) − ½ log σ(−βr)``."""
    cr, rr = beta * x.chosen_logratios, beta * x.rejected_logratios
    return _nls(cr) + 0.5 * _nls(-cr) + 0.5 * _nls(-rr)


@register_preference_loss("robust", label_smoothing=(0.0, 0.5, False),
                          paper="Chowdhury et al. 2024, 'Provably Robust DPO: Aligning "
                                "Language Models with Noisy Feedback' (rDPO)")
def robust_loss(x: PreferenceInputs, *, beta, label_smoothing):
    """Robust DPO: ``[−(1 − ε) log σ(βΔ) + ε log σ(−βΔ)] / (1 − 2ε)``, an unbiased loss
    under preference flips with probability ``ε = label_smoothing < ½``."""
    z = beta * x.logits
    return ((1.0 - label_smoothing) * _nls(z) - label_smoothing * _nls(-z)) / (
        1.0 - 2.0 * label_smoothing)


@register_preference_loss("bco_pair", options={"bco_delta": 0.0},
                          paper="Jung et al. 2024, 'Binary Classifier Optimization for "
                                "Large Language Model Alignment' (BCO)")
def bco_pair_loss(x: PreferenceInputs, *, beta, label_smoothing, bco_delta=0.0):
    """BCO (pairwise): ``−log σ(βc − δ) − log σ(−(βr − δ))``.

    ``δ = bco_delta`` is the running mean of the implicit rewards ``{βc, βr}`` (TRL's
    ``delta``; keep it with :func:`update_reward_mean` and pass it each step). TRL 1.x
    uses ``δ = 0``, the default.
    """
    return _nls(beta * x.chosen_logratios - bco_delta) + _nls(
        -(beta * x.rejected_logratios - bco_delta))


@register_preference_loss("sppo_hard", paper="Wu et al. 2024, 'Self-Play Preference "
                                             "Optimization for Language Model Alignment' "
                                             "(SPPO), hard-label form of eq. 4.7")
def sppo_hard_loss(x: PreferenceInputs, *, beta, label_smoothing):
    """SPPO with hard win probabilities (1 for the winner, 0 for the loser):
    ``(c − 1/(2β))² + (r + 1/(2β))²``."""
    return (x.chosen_logratios - 0.5 / beta) ** 2 + (x.rejected_logratios + 0.5 / beta) ** 2


@register_preference_loss("aot", label_smoothing=(0.0, 0.5, True),
                          paper="Melnyk et al. 2024, 'Distributional Preference Alignment "
                                "of LLMs via Optimal Transport' (AOT), paired form")
def aot_loss(x: PreferenceInputs, *, beta, label_smoothing):
    """AOT (paired): ``d = sort_B(log π(y_w) − log π(y_l)) − sort_B(log π_ref(y_w) −
    log π_ref(y_l))`` (each sorted over the batch), then the smoothed sigmoid loss of
    ``βd``. Entry ``b`` is the ``b``-th order statistic, not pair ``b``: the loss couples
    the batch (first-order stochastic dominance of the margins)."""
    policy = jnp.sort(x.policy_chosen_logps - x.policy_rejected_logps)
    ref = jnp.sort(x.ref_chosen_logps - x.ref_rejected_logps)
    return _smoothed_sigmoid(beta * (policy - ref), label_smoothing)


@register_preference_loss("aot_unpaired", label_smoothing=(0.0, 0.5, True),
                          paper="Melnyk et al. 2024 (AOT), unpaired form")
def aot_unpaired_loss(x: PreferenceInputs, *, beta, label_smoothing):
    """AOT (unpaired): ``d = sort_B(c) − sort_B(r)``, then the smoothed sigmoid loss of
    ``βd`` (chosen and rejected log-ratio distributions compared by quantiles)."""
    d = jnp.sort(x.chosen_logratios) - jnp.sort(x.rejected_logratios)
    return _smoothed_sigmoid(beta * d, label_smoothing)


@register_preference_loss("apo_zero", paper="D'Oosterlinck et al. 2024, 'Anchored "
                                            "Preference Optimization and Contrastive "
                                            "Revisions' (APO), eq. 7")
def apo_zero_loss(x: PreferenceInputs, *, beta, label_smoothing):
    """APO-zero (chosen better than the model's own outputs):
    ``(1 − σ(βc)) + σ(βr)``."""
    return (1.0 - jax.nn.sigmoid(beta * x.chosen_logratios)) + jax.nn.sigmoid(
        beta * x.rejected_logratios)


@register_preference_loss("apo_down", paper="D'Oosterlinck et al. 2024 (APO), eq. 8")
def apo_down_loss(x: PreferenceInputs, *, beta, label_smoothing):
    """APO-down (chosen worse than the model's own outputs):
    ``σ(βc) + (1 − σ(βΔ))``."""
    return jax.nn.sigmoid(beta * x.chosen_logratios) + (1.0 - jax.nn.sigmoid(beta * x.logits))


@register_preference_loss("discopop", options={"discopop_tau": 0.05},
                          paper="Lu et al. 2024, 'Discovering Preference Optimization "
                                "Algorithms with and for Large Language Models' "
                                "(DiscoPOP), eq. 5")
def discopop_loss(x: PreferenceInputs, *, beta, label_smoothing, discopop_tau=0.05):
    """DiscoPOP (log-ratio modulated loss): with ``z = βΔ`` and ``m = σ(z/τ)``,
    ``−log σ(z)(1 − m) + exp(−z) m``; ``τ = discopop_tau`` (TRL default 0.05).

    The exponential term is evaluated as ``exp(−z + log σ(z/τ))``, finite wherever the
    loss is (for ``τ < 1`` that is every finite ``z``).
    """
    z = beta * x.logits
    logistic = _nls(z) * jax.nn.sigmoid(-z / discopop_tau)
    exponential = jnp.exp(-z + jax.nn.log_sigmoid(z / discopop_tau))
    return logistic + exponential


@register_preference_loss("sft", needs_reference=False, needs_rejected=False,
                          paper="Supervised fine-tuning NLL on the chosen completions "
                                "(TRL's 'sft' loss type; RPO/MPO combine it with DPO)")
def sft_loss(x: PreferenceInputs, *, beta, label_smoothing):
    """Negative log-likelihood of the chosen completions (only ``policy_chosen_logps``
    is read).

    With ``chosen_lengths`` (and summed log-probs): TRL 1.x's token-mean cross-entropy
    ``−Σ_b log π(y_w,b) / Σ_b |y_w,b|``, the same value for every pair, over the real
    completion tokens only: a zero-length completion adds 0 tokens (not the 1 of the
    per-sequence ``clamp(min=1)``), see :func:`_token_mean_nll`. Without lengths:
    ``−log π(y_w)`` per pair (use mean log-probs for a per-token NLL).
    """
    if x.chosen_lengths is None:
        return -x.policy_chosen_logps
    return _token_mean_nll(x)


def _token_mean_nll(x: PreferenceInputs) -> jax.Array:
    """``−Σ_b log π(y_w,b) / Σ_b |y_w,b|`` broadcast to ``[B]`` (a batch's token-mean
    cross-entropy on the chosen completions, from summed log-probs and lengths).

    As TRL 1.x's ``cross_entropy`` over non-padding tokens, the denominator counts real
    tokens: unclamped lengths (``chosen_token_counts``), so a zero-length completion
    contributes 0 tokens and 0 log-probability. A batch without any token gives 0
    (TRL: NaN), the denominator being clamped to ``>= 1`` only as a whole.
    """
    counts = x.chosen_lengths if x.chosen_token_counts is None else x.chosen_token_counts
    nll = -jnp.sum(x.policy_chosen_logps) / jnp.maximum(jnp.sum(counts), 1.0)
    return jnp.broadcast_to(nll, x.policy_chosen_logps.shape)


@register_preference_loss("sigmoid_norm", needs_lengths=True,
                          paper="Lambert et al. 2024, 'Tülu 3' (length-normalised DPO)")
def sigmoid_norm_loss(x: PreferenceInputs, *, beta, label_smoothing):
    """Length-normalised DPO: ``−log σ(β (c/|y_w| − r/|y_l|))``."""
    return _nls(beta * (x.chosen_logratios / x.chosen_lengths
                        - x.rejected_logratios / x.rejected_lengths))


# ----------------------------------------------------------------------------- reference-free


@register_preference_loss("simpo", label_smoothing=(0.0, 0.5, True), needs_lengths=True,
                          needs_reference=False, options={"simpo_gamma": 0.5},
                          paper="Meng et al. 2024, 'SimPO: Simple Preference Optimization "
                                "with a Reference-Free Reward', eq. 6")
def simpo_loss(x: PreferenceInputs, *, beta, label_smoothing, simpo_gamma=0.5):
    """SimPO: ``−log σ(β log π(y_w)/|y_w| − β log π(y_l)/|y_l| − γ)`` with
    ``γ = simpo_gamma`` (TRL ``CPOTrainer(loss_type="simpo")``, smoothed by ε)."""
    avg = (x.policy_chosen_logps / x.chosen_lengths
           - x.policy_rejected_logps / x.rejected_lengths)
    return _smoothed_sigmoid(beta * avg - simpo_gamma, label_smoothing)


def _cpo_needs_lengths(options) -> bool:
    alpha = options.get("cpo_alpha", 1.0)
    return isinstance(alpha, jax.Array) or alpha != 0


@register_preference_loss("cpo", label_smoothing=(0.0, 0.5, True),
                          needs_lengths=_cpo_needs_lengths, needs_reference=False,
                          options={"cpo_alpha": 1.0},
                          paper="Xu et al. 2024, 'Contrastive Preference Optimization: "
                                "Pushing the Boundaries of LLM Performance in Machine "
                                "Translation' (CPO), eq. 3")
def cpo_loss(x: PreferenceInputs, *, beta, label_smoothing, cpo_alpha=1.0):
    """CPO: ``−log σ(β(log π(y_w) − log π(y_l)))`` (smoothed by ε) ``+ α NLL``, with
    ``NLL = −Σ_b log π(y_w,b) / Σ_b |y_w,b|`` the token-mean negative log-likelihood of
    the batch's chosen completions (TRL ``CPOTrainer``) and ``α = cpo_alpha`` (lengths
    needed unless ``α = 0``)."""
    pref = _smoothed_sigmoid(beta * (x.policy_chosen_logps - x.policy_rejected_logps),
                             label_smoothing)
    if x.chosen_lengths is None:
        return pref
    return pref + cpo_alpha * _token_mean_nll(x)


def _log1mexp(a: jax.Array) -> jax.Array:
    """``log(1 − exp(a))`` for ``a < 0`` (Mächler 2012): ``log(−expm1(a))`` near 0,
    ``log1p(−exp(a))`` below ``−log 2``."""
    return jnp.where(a > -math.log(2.0), jnp.log(-jnp.expm1(jnp.minimum(a, -1e-30))),
                     jnp.log1p(-jnp.exp(jnp.minimum(a, -math.log(2.0)))))


@register_preference_loss("orpo", needs_lengths=True, needs_reference=False,
                          nonpositive_logps=True,
                          paper="Hong et al. 2024, 'ORPO: Monolithic Preference Optimization "
                                "without Reference Model', eqs. 6-7")
def orpo_loss(x: PreferenceInputs, *, beta, label_smoothing):
    """ORPO: ``NLL − β log σ(log odds(y_w) − log odds(y_l))`` with mean per-token
    log-probs ``ℓ = log π(y)/|y|``, ``log odds = ℓ − log(1 − e^ℓ)``, ``β`` the paper's λ
    and ``NLL = −Σ_b log π(y_w,b) / Σ_b |y_w,b|`` the batch's token-mean negative
    log-likelihood of the chosen completions (TRL ``ORPOTrainer``).

    ``ℓ`` is clamped to at most ``−ϵ`` (machine epsilon) so that a completion of
    probability 1, whose odds are infinite, gives a finite loss. Log-probabilities
    ``> 0`` are not probabilities: refused when concrete, a NaN loss when traced.
    """
    dtype = x.policy_chosen_logps.dtype
    tiny = jnp.finfo(dtype).eps
    lw = jnp.minimum(x.policy_chosen_logps / x.chosen_lengths, -tiny)
    ll = jnp.minimum(x.policy_rejected_logps / x.rejected_lengths, -tiny)
    log_odds = (lw - ll) - (_log1mexp(lw) - _log1mexp(ll))
    return _token_mean_nll(x) + beta * _nls(log_odds)


# ----------------------------------------------------------------------------- KTO


@register_preference_loss("kto_pair", options={"desirable_weight": 1.0,
                                               "undesirable_weight": 1.0},
                          paper="Ethayarajh et al. 2024, 'KTO: Model Alignment as Prospect "
                                "Theoretic Optimization', eq. 8 (paired data)")
def kto_pair_loss(x: PreferenceInputs, *, beta, label_smoothing, desirable_weight=1.0,
                  undesirable_weight=1.0):
    """KTO on paired data: chosen completions are desirable, rejected undesirable, with
    batch KL estimates ``z_w = max(0, mean_B c)``, ``z_l = max(0, mean_B r)`` (no
    gradient through them):
    ``½[λ_D (1 − σ(β(c − z_l))) + λ_U (1 − σ(β(z_w − r)))]``.

    The ½ makes the batch mean equal TRL's mean over the ``2B`` concatenated terms.
    """
    z_chosen = jax.lax.stop_gradient(jnp.maximum(jnp.mean(x.chosen_logratios), 0.0))
    z_rejected = jax.lax.stop_gradient(jnp.maximum(jnp.mean(x.rejected_logratios), 0.0))
    desirable = 1.0 - jax.nn.sigmoid(beta * (x.chosen_logratios - z_rejected))
    undesirable = 1.0 - jax.nn.sigmoid(beta * (z_chosen - x.rejected_logratios))
    return 0.5 * (desirable_weight * desirable + undesirable_weight * undesirable)


def kto_kl_estimate(policy_kl_logps: jax.Array, ref_kl_logps: jax.Array) -> jax.Array:
    """KTO's reference point ``z_0 = max(0, mean_b [log π(y'_b|x_b) − log π_ref(y'_b|x_b)])``
    from mismatched pairs ``(x_b, y'_b)`` (completions shifted within the batch), with
    the gradient stopped.

    Args:
      policy_kl_logps: ``[N]`` policy log-probs of the mismatched completions.
      ref_kl_logps: ``[N]`` reference log-probs of the same.

    Returns:
      A scalar ``>= 0``.

    Paper: Ethayarajh et al. 2024 (KTO), section 4.1.
    """
    policy_kl_logps = jnp.asarray(policy_kl_logps)
    ref_kl_logps = jnp.asarray(ref_kl_logps)
    _check_vector(policy_kl_logps, "policy_kl_logps")
    _check_same(ref_kl_logps, "ref_kl_logps", policy_kl_logps, "policy_kl_logps")
    return jax.lax.stop_gradient(jnp.maximum(jnp.mean(policy_kl_logps - ref_kl_logps), 0.0))


def kto_loss(policy_logps: jax.Array, ref_logps: jax.Array, desirable: jax.Array, *,
             kl, beta: float = 0.1, desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0) -> jax.Array:
    """KTO on unpaired data: each completion is labelled desirable or undesirable.

    ``ℓ_b = λ_D (1 − σ(β(ρ_b − z_0)))`` if desirable, ``λ_U (1 − σ(β(z_0 − ρ_b)))``
    otherwise, with ``ρ_b = log π(y_b|x_b) − log π_ref(y_b|x_b)`` and ``z_0 = kl``.

    Args:
      policy_logps: ``[N]`` policy sequence log-probs.
      ref_logps: ``[N]`` reference sequence log-probs.
      desirable: ``[N]`` boolean labels.
      kl: the scalar reference point ``z_0`` (:func:`kto_kl_estimate`), not differentiated.
      beta: finite ``β > 0``.
      desirable_weight, undesirable_weight: ``λ_D, λ_U >= 0`` (TRL's names).

    Returns:
      ``[N]`` per-completion losses (TRL averages them).

    Example:
        >>> kl = kto_kl_estimate(policy_kl_logps, ref_kl_logps)
        >>> kto_loss(logps, ref_logps, labels, kl=kl, beta=0.1).mean()

    Paper: Ethayarajh et al. 2024, 'KTO: Model Alignment as Prospect Theoretic
    Optimization', eq. 8 (TRL ``KTOTrainer``).
    """
    policy_logps = jnp.asarray(policy_logps)
    _check_vector(policy_logps, "policy_logps")
    ref_logps = jnp.asarray(ref_logps)
    _check_same(ref_logps, "ref_logps", policy_logps, "policy_logps")
    desirable = jnp.asarray(desirable)
    _check_same(desirable, "desirable", policy_logps, "policy_logps", floating=False)
    if desirable.dtype != jnp.bool_:
        raise ValueError(f"desirable must be a boolean array, got dtype {desirable.dtype}")
    if jnp.ndim(kl) != 0:
        raise ValueError(f"kl must be a scalar, got shape {shape_of(kl)}")
    ok = _check_beta(beta) & _check_options({"desirable_weight": desirable_weight,
                                             "undesirable_weight": undesirable_weight})
    z0 = jax.lax.stop_gradient(jnp.asarray(kl, policy_logps.dtype))
    rho = policy_logps - ref_logps
    good = desirable_weight * (1.0 - jax.nn.sigmoid(beta * (rho - z0)))
    bad = undesirable_weight * (1.0 - jax.nn.sigmoid(beta * (z0 - rho)))
    return poison(jnp.where(desirable, good, bad), ok)


# ----------------------------------------------------------------------------- reward model


def bradley_terry_loss(rewards_chosen: jax.Array, rewards_rejected: jax.Array, *,
                       margin: jax.Array | None = None,
                       center_rewards_coefficient: float | None = None) -> jax.Array:
    """Bradley–Terry reward-model loss: ``−log σ(r_w − r_l − m) + c (r_w + r_l)²``.

    ``P(y_w ≻ y_l) = σ(r_w − r_l)`` (Bradley & Terry 1952); the optional margin ``m``
    asks for a larger gap on pairs labelled as clearly better (Llama 2); the optional
    centring term ``c (r_w + r_l)²`` keeps rewards near zero mean (Eisenstein et al.
    2023), both as in TRL's ``RewardTrainer``.

    Args:
      rewards_chosen: ``[B]`` scalar rewards ``r_w`` of the chosen completions.
      rewards_rejected: ``[B]`` rewards ``r_l`` of the rejected completions.
      margin: optional ``[B]`` margins ``m``.
      center_rewards_coefficient: optional ``c >= 0``.

    Returns:
      ``[B]`` per-pair losses (TRL averages them).

    Example:
        >>> bradley_terry_loss(jnp.array([1.0]), jnp.array([0.0])).tolist()  # −log σ(1)
        [0.3132616...]

    Paper: Ouyang et al. 2022, 'Training language models to follow instructions with
    human feedback', eq. 1; Touvron et al. 2023 (Llama 2), eq. 2 (margin).
    """
    rewards_chosen = jnp.asarray(rewards_chosen)
    rewards_rejected = jnp.asarray(rewards_rejected)
    _check_vector(rewards_chosen, "rewards_chosen")
    _check_same(rewards_rejected, "rewards_rejected", rewards_chosen, "rewards_chosen")
    gap = rewards_chosen - rewards_rejected
    if margin is not None:
        margin = jnp.asarray(margin)
        _check_same(margin, "margin", rewards_chosen, "rewards_chosen")
        gap = gap - margin
    loss = _nls(gap)
    if center_rewards_coefficient is not None:
        if not isinstance(center_rewards_coefficient, jax.Array) and (
                center_rewards_coefficient < 0):
            raise ValueError("center_rewards_coefficient must be >= 0, got "
                             f"{center_rewards_coefficient}")
        loss = loss + center_rewards_coefficient * (rewards_chosen + rewards_rejected) ** 2
    return loss


# ----------------------------------------------------------------------------- helpers


def update_reward_mean(mean: jax.Array, count: jax.Array, rewards: jax.Array):
    """Running mean of implicit rewards, for ``bco_pair``'s ``bco_delta``.

    ``mean' = (count · mean + Σ rewards) / (count + n)``.

    Args:
      mean: scalar running mean.
      count: scalar number of rewards seen so far.
      rewards: ``[n]`` new rewards (e.g. ``concat(β c, β r)``, gradient stopped).

    Returns:
      ``(mean', count')``.

    Example:
        >>> mean, count = update_reward_mean(0.0, 0.0, jnp.array([1.0, 3.0]))  # 2.0, 2.0
    """
    rewards = jax.lax.stop_gradient(jnp.asarray(rewards))
    if jnp.ndim(rewards) != 1:
        raise ValueError(f"rewards must have shape [n], got {shape_of(rewards)}")
    n = rewards.shape[0]
    new_count = count + n
    new_mean = (count * mean + jnp.sum(rewards)) / jnp.maximum(new_count, 1)
    return new_mean, new_count


def preference_metrics(policy_chosen_logps: jax.Array, policy_rejected_logps: jax.Array,
                       ref_chosen_logps: jax.Array | None = None,
                       ref_rejected_logps: jax.Array | None = None, *,
                       beta: float = 0.1) -> dict[str, jax.Array]:
    """The metrics TRL's ``DPOTrainer`` logs, as batch means.

    ``rewards/chosen = mean βc``, ``rewards/rejected = mean βr``,
    ``rewards/accuracies = mean [βc > βr]`` (strict: 0 at ``π = π_ref``),
    ``rewards/margins = mean β(c − r)``, ``logps/chosen``, ``logps/rejected`` (mean
    policy log-probs). Missing reference log-probs count as 0 (reference-free).

    Args:
      policy_chosen_logps, policy_rejected_logps: ``[B]``.
      ref_chosen_logps, ref_rejected_logps: ``[B]`` or None.
      beta: the ``β`` of the implicit reward.

    Returns:
      ``{name: scalar}``.

    Example:
        >>> preference_metrics(pc, pr, rc, rr, beta=0.1)["rewards/accuracies"]
    """
    pc = jnp.asarray(policy_chosen_logps)
    _check_vector(pc, "policy_chosen_logps")
    pr = jnp.asarray(policy_rejected_logps)
    _check_same(pr, "policy_rejected_logps", pc, "policy_chosen_logps")
    rc = jnp.zeros_like(pc) if ref_chosen_logps is None else jnp.asarray(ref_chosen_logps)
    rr = jnp.zeros_like(pc) if ref_rejected_logps is None else jnp.asarray(ref_rejected_logps)
    _check_same(rc, "ref_chosen_logps", pc, "policy_chosen_logps")
    _check_same(rr, "ref_rejected_logps", pc, "policy_chosen_logps")
    chosen = jax.lax.stop_gradient(beta * (pc - rc))
    rejected = jax.lax.stop_gradient(beta * (pr - rr))
    return {
        "rewards/chosen": jnp.mean(chosen),
        "rewards/rejected": jnp.mean(rejected),
        "rewards/accuracies": jnp.mean((chosen > rejected).astype(chosen.dtype)),
        "rewards/margins": jnp.mean(chosen - rejected),
        "logps/chosen": jnp.mean(jax.lax.stop_gradient(pc)),
        "logps/rejected": jnp.mean(jax.lax.stop_gradient(pr)),
    }


# ----------------------------------------------------------------------------- checks


def _check_vector(x, name: str) -> None:
    if jnp.ndim(x) != 1:
        raise ValueError(f"{name} must have shape [B], got shape {shape_of(x)}")
    if not jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating):
        raise ValueError(f"{name} must be a floating-point array, got dtype {x.dtype}")


def _check_same(x, name: str, like, like_name: str, *, floating: bool = True) -> None:
    if shape_of(x) != shape_of(like):
        raise ValueError(f"{name} must have shape [B] = {shape_of(like)} like {like_name}, "
                         f"got shape {shape_of(x)}")
    if floating and not jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating):
        raise ValueError(f"{name} must be a floating-point array, got dtype {x.dtype}")


def _finite_and(test: Callable) -> Callable:
    return lambda v: jnp.isfinite(v) & test(v)


def _check_beta(beta):
    """``β`` a finite scalar > 0 (``inf`` would make every loss a step function)."""
    if jnp.ndim(beta) != 0:
        raise ValueError(f"beta must be a scalar, got shape {shape_of(beta)}")
    return value_ok(beta, "beta", _finite_and(lambda b: b > 0), "finite and > 0")


# Option values a loss cannot use: the condition and how the message states it.
_OPTION_CHECKS = {
    "discopop_tau": (_finite_and(lambda v: v > 0), "finite and > 0"),
    "desirable_weight": (_finite_and(lambda v: v >= 0), "finite and >= 0"),
    "undesirable_weight": (_finite_and(lambda v: v >= 0), "finite and >= 0"),
}


def _check_options(options: Mapping[str, Any]):
    ok = True
    for name, value in options.items():
        if name in _OPTION_CHECKS:
            condition, expected = _OPTION_CHECKS[name]
            ok = ok & value_ok(value, name, condition, expected)
    return ok


def _check_label_smoothing(label_smoothing, specs: Sequence[PreferenceLoss]):
    if jnp.ndim(label_smoothing) != 0:
        raise ValueError(f"label_smoothing must be a scalar, got shape {shape_of(label_smoothing)}")
    users = [s for s in specs if s.label_smoothing is not None]
    if not users:
        names = ", ".join(repr(s.name) for s in specs)
        return value_ok(label_smoothing, "label_smoothing", lambda v: v == 0,
                         f"0: it is not used by loss_type {names}")
    ok = True
    for spec in users:
        low, high, low_in, high_in = spec.label_smoothing_interval()
        interval = f"{'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}"
        ok = ok & value_ok(
            label_smoothing, "label_smoothing",
            lambda v, low=low, high=high, low_in=low_in, high_in=high_in: (
                (v >= low if low_in else v > low) & (v <= high if high_in else v < high)),
            f"in {interval} for loss_type {spec.name!r}")
    return ok


def _as_lengths(lengths, name: str, like) -> tuple[jax.Array, jax.Array, Any]:
    """``(lengths clamped to >= 1, lengths as given, ok)`` as floats of ``like``'s dtype."""
    lengths = jnp.asarray(lengths)
    if shape_of(lengths) != shape_of(like):
        raise ValueError(f"{name} must have shape [B] = {shape_of(like)}, got shape "
                         f"{shape_of(lengths)}")
    ok = value_ok(lengths, name, _finite_and(lambda v: v >= 0), "finite token counts >= 0")
    counts = lengths.astype(like.dtype)
    return jnp.maximum(counts, 1.0), counts, ok


def _loss_types(loss_type, loss_weights) -> tuple[tuple[str, ...], tuple[Any, ...]]:
    names = (loss_type,) if isinstance(loss_type, str) else tuple(loss_type)
    if not names:
        raise ValueError("loss_type must name at least one loss")
    if loss_weights is None:
        weights = (1.0,) * len(names)
    else:
        weights = tuple(loss_weights)
        if len(weights) != len(names):
            raise ValueError(f"loss_weights must have one weight per loss_type: got "
                             f"{len(weights)} weights for {len(names)} losses {names}")
    return names, weights


def preference_loss(policy_chosen_logps: jax.Array,
                    policy_rejected_logps: jax.Array | None = None,
                    ref_chosen_logps: jax.Array | None = None,
                    ref_rejected_logps: jax.Array | None = None, *,
                    loss_type: str | Sequence[str] = "sigmoid", beta=0.1,
                    label_smoothing=0.0, chosen_lengths: jax.Array | None = None,
                    rejected_lengths: jax.Array | None = None,
                    loss_weights: Sequence[float] | None = None,
                    reference_free: bool = False, **options) -> jax.Array:
    """Per-pair preference losses ``[B]`` of one registered loss or a weighted sum of several.

    ``L_b = Σ_k w_k ℓ_k(b)`` with ``ℓ_k`` the loss named ``loss_type[k]`` (see the module
    docstring and each loss's docstring for its formula) and ``w_k = loss_weights[k]``
    (default 1), as TRL's ``loss_type=[...]``, ``loss_weights=[...]``.

    Args:
      policy_chosen_logps: ``[B]`` ``log π(y_w|x)`` (sequence log-probs, see
        ``rl.preference.logps``).
      policy_rejected_logps: ``[B]`` ``log π(y_l|x)``; may be None only for ``"sft"``.
      ref_chosen_logps, ref_rejected_logps: ``[B]`` reference log-probs; None for
        reference-free losses or with ``reference_free=True``.
      loss_type: a registered name (``PREFERENCE_LOSSES.names()``) or a sequence of them.
      beta: finite ``β > 0`` (a scalar; may be traced, e.g. vmapped over a sweep).
      label_smoothing: ``ε``, checked against the range of each loss that uses it
        (e.g. ``[0, ½]`` for sigmoid, ``[0, ½)`` for robust); must be 0 when no chosen
        loss uses it.
      chosen_lengths, rejected_lengths: ``[B]`` completion token counts, required by
        length-normalised losses (ipo, sigmoid_norm, simpo, cpo, orpo); clamped to >= 1.
      loss_weights: one weight per loss in ``loss_type``.
      reference_free: treat the reference log-probs as 0 (TRL's ``reference_free``).
      **options: loss-specific options, e.g. ``ipo_normalize``, ``bco_delta``,
        ``discopop_tau``, ``simpo_gamma``, ``cpo_alpha``, ``desirable_weight``,
        ``undesirable_weight`` (each loss lists its own with its defaults).

    Returns:
      ``[B]`` losses in the dtype of ``policy_chosen_logps``; ``.mean()`` is TRL's loss.

    Raises:
      common.registry.UnknownNameError: an unknown ``loss_type`` (lists the valid ones).
      ValueError: mismatched shapes (naming the argument), missing lengths or
        reference log-probs, an option no chosen loss accepts, and, for concrete
        values: ``beta`` not finite and > 0, a ``label_smoothing`` outside the range a
        loss allows (``exo_pair``: ``(0, 1)``), negative or non-finite lengths,
        ``discopop_tau <= 0``, negative KTO weights, ORPO log-probs ``> 0``. Traced
        values (inside ``jit``/``vmap``/``grad``) that fail these checks give NaN
        losses instead (:func:`common.checks.poison`).

    Example:
        >>> losses = preference_loss(pc, pr, rc, rr, loss_type="ipo", beta=0.1,
        ...                          chosen_lengths=nc, rejected_lengths=nr)

    Paper: Rafailov et al. 2023 (DPO) and the papers of each registered loss.
    """
    names, weights = _loss_types(loss_type, loss_weights)
    specs = [PREFERENCE_LOSSES.get(name) for name in names]

    pc = jnp.asarray(policy_chosen_logps)
    _check_vector(pc, "policy_chosen_logps")
    ok = _check_beta(beta) & _check_label_smoothing(label_smoothing, specs)

    accepted: dict[str, Any] = {}
    for spec in specs:
        accepted.update(spec.options)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        valid = ", ".join(sorted(accepted)) or "(none)"
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for loss_type "
                         f"{list(names)}; accepted options: {valid}")
    ok = ok & _check_options(options)

    def vector(x, name):
        if x is None:
            return None
        x = jnp.asarray(x)
        _check_same(x, name, pc, "policy_chosen_logps")
        return x.astype(pc.dtype)

    pr = vector(policy_rejected_logps, "policy_rejected_logps")
    rc = vector(ref_chosen_logps, "ref_chosen_logps")
    rr = vector(ref_rejected_logps, "ref_rejected_logps")
    if pr is None and any(s.needs_rejected for s in specs):
        need = [s.name for s in specs if s.needs_rejected]
        raise ValueError(f"policy_rejected_logps is required by loss_type {need}")
    if reference_free:
        rc, rr = jnp.zeros_like(pc), jnp.zeros_like(pc)
    else:
        need_ref = [s.name for s in specs if s.needs_reference]
        if need_ref and (rc is None or rr is None):
            missing = "ref_chosen_logps" if rc is None else "ref_rejected_logps"
            raise ValueError(f"{missing} is required by loss_type {need_ref} (pass "
                             "reference_free=True to use a zero reference)")
        if (rc is None) != (rr is None):
            raise ValueError("ref_chosen_logps and ref_rejected_logps must be given together")

    need_len = [s.name for s in specs if s.lengths_needed({**s.options, **options})]
    if need_len and (chosen_lengths is None or (pr is not None and rejected_lengths is None)):
        missing = "chosen_lengths" if chosen_lengths is None else "rejected_lengths"
        raise ValueError(f"{missing} is required: loss_type {need_len} is length-normalised "
                         "(pass the completion token counts [B])")
    lc = lr = counts = None
    if chosen_lengths is not None:
        lc, counts, lengths_ok = _as_lengths(chosen_lengths, "chosen_lengths", pc)
        ok = ok & lengths_ok
    if rejected_lengths is not None:
        lr, _, lengths_ok = _as_lengths(rejected_lengths, "rejected_lengths", pc)
        ok = ok & lengths_ok
    for spec in specs:
        if spec.nonpositive_logps:
            for logps, name in ((pc, "policy_chosen_logps"), (pr, "policy_rejected_logps")):
                if logps is not None:
                    ok = ok & value_ok(logps, name, lambda v: v <= 0,
                                        f"<= 0 (log-probabilities) for loss_type {spec.name!r}")

    inputs = PreferenceInputs(pc, pr, rc, rr, lc, lr, counts)
    total = jnp.zeros_like(pc)
    for spec, weight in zip(specs, weights, strict=True):
        own = {k: options.get(k, default) for k, default in spec.options.items()}
        losses = spec.fn(inputs, beta=beta, label_smoothing=label_smoothing, **own)
        total = total + weight * losses.astype(pc.dtype)
    return poison(total, ok)
