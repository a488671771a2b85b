"""Preference optimisation: sequence log-probs, the DPO loss family, RLHF and a toy LM.

* ``rl.preference.logps``: per-sequence completion log-probs from logits (shifted
  labels, completion masks, sum or mean, chosen+rejected in one forward pass).
* ``rl.preference.losses``: ``PREFERENCE_LOSSES`` (TRL's ``loss_type`` names plus
  SimPO, CPO, ORPO, KTO-pair) behind ``preference_loss``; ``preference_metrics``;
  unpaired ``kto_loss``; the Bradley–Terry ``bradley_terry_loss``.
* ``rl.preference.model``: a small causal transformer LM and reward model from
  ``common.nn``; ``lax.scan`` sampling.
* ``ByteTokenizer`` (from ``common.text``): a byte-level tokenizer (no downloads).
* ``rl.preference.training``: SFT, reward-model, DPO (cached reference log-probs) and
  RLOO (RLHF baseline) loss functions for ``common.train``, and coefficient sweeps.
* ``rl.preference.task``: a toy task with a known reward, evaluation (true reward, KL
  to the reference) and reward-vs-KL frontier comparison.

Example:
    >>> from rl.preference import preference_loss
    >>> losses = preference_loss(pc, pr, rc, rr, loss_type="sigmoid", beta=0.1)
"""

from common.text import ByteTokenizer
from rl.preference.logps import (
    PairLogps,
    SequenceLogps,
    completion_mask,
    concatenate_pairs,
    concatenated_logps,
    sequence_logps,
    token_logps,
)
from rl.preference.losses import (
    PREFERENCE_LOSSES,
    PreferenceInputs,
    PreferenceLoss,
    bradley_terry_loss,
    kto_kl_estimate,
    kto_loss,
    preference_loss,
    preference_metrics,
    register_preference_loss,
    update_reward_mean,
)
from rl.preference.model import (
    CausalLM,
    LMConfig,
    RewardModel,
    Samples,
    init_reward_from_lm,
    lm_flops_per_token,
    sample_completions,
)
from rl.preference.training import (
    make_dpo_loss,
    make_logits_fn,
    make_reward_fn,
    make_reward_model_loss,
    make_rloo_loss,
    make_sft_loss,
    make_sweep_loss,
    reference_logps,
    stack_params,
    unstack_params,
)

__all__ = [
    "PREFERENCE_LOSSES",
    "ByteTokenizer",
    "CausalLM",
    "LMConfig",
    "PairLogps",
    "PreferenceInputs",
    "PreferenceLoss",
    "RewardModel",
    "Samples",
    "SequenceLogps",
    "bradley_terry_loss",
    "completion_mask",
    "concatenate_pairs",
    "concatenated_logps",
    "init_reward_from_lm",
    "kto_kl_estimate",
    "kto_loss",
    "lm_flops_per_token",
    "make_dpo_loss",
    "make_logits_fn",
    "make_reward_fn",
    "make_reward_model_loss",
    "make_rloo_loss",
    "make_sft_loss",
    "make_sweep_loss",
    "preference_loss",
    "preference_metrics",
    "reference_logps",
    "register_preference_loss",
    "sample_completions",
    "sequence_logps",
    "stack_params",
    "token_logps",
    "unstack_params",
    "update_reward_mean",
]
