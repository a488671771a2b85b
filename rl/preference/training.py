"""Training steps for RLHF and DPO on a causal LM, as ``common.train`` loss functions.

Every factory returns ``loss_fn(params, rest, batch, key[, coef]) -> (loss, metrics)``,
the signature ``common.train.train_step_fn`` / ``fit`` expect (``rest``, the model's
non-trainable state, is unused: the model functions below hold their own copy, since
the language model keeps no running statistics); the optional last argument
is the method's coefficient (DPO's ``β``, RLHF's KL coefficient) so that
:func:`make_sweep_loss` can train several coefficients at once (vmapped, one compile).

* :func:`make_sft_loss`: token-mean negative log-likelihood of completions (SFT).
* :func:`make_reward_model_loss`: Bradley–Terry loss of a :class:`RewardModel` on pairs.
* :func:`make_dpo_loss`: any registered preference loss on the policy's chosen/rejected
  log-probs from one concatenated forward pass, with the reference log-probs read from
  the batch (computed once by :func:`reference_logps` and cached in the dataset) or, for
  comparison, recomputed every step from frozen reference parameters.
* :func:`make_rloo_loss`: the RLHF baseline, maximising
  ``E_{y∼π}[r(x, y)] − β KL(π ‖ π_ref)`` with REINFORCE and a leave-one-out baseline
  (RLOO): ``K`` samples per prompt, reward ``R_i = r(x, y_i) − β log(π(y_i|x)/π_ref(y_i|x))``,
  advantage ``A_i = R_i − (1/(K−1)) Σ_{j≠i} R_j``, loss ``−mean A_i log π(y_i|x)``.

Pair datasets are dicts of device arrays with a leading size ``N``: ``chosen``,
``rejected`` ``[N, T]`` int32 token ids, ``chosen_mask``, ``rejected_mask`` ``[N, T]``
boolean completion masks, ``chosen_length``, ``rejected_length`` ``[N]`` int32 total
(non-padding) token counts, and after :func:`reference_logps`, ``ref_chosen_logps``,
``ref_rejected_logps`` ``[N]``.

Papers: Ouyang et al. 2022 (InstructGPT: SFT → reward model → KL-regularised RL);
Rafailov et al. 2023 (DPO); Ahmadian et al. 2024, "Back to Basics: Revisiting
REINFORCE Style Optimization for Learning from Human Feedback in LLMs" (RLOO);
Kool et al. 2019, "Buy 4 REINFORCE Samples, Get a Baseline for Free!".
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from rl.preference.logps import concatenated_logps, sequence_logps
from rl.preference.losses import bradley_terry_loss, preference_loss, preference_metrics
from rl.preference.model import sample_completions

__all__ = [
    "make_dpo_loss",
    "make_logits_fn",
    "make_reward_fn",
    "make_reward_model_loss",
    "make_rloo_loss",
    "make_sft_loss",
    "make_sweep_loss",
    "reference_logps",
    "stack_params",
    "unstack_params",
]

LogitsFn = Callable[[object, jax.Array], jax.Array]


def make_logits_fn(graphdef, rest) -> LogitsFn:
    """``logits_fn(params, tokens [B, T]) -> logits [B, T, V]`` of a split nnx LM.

    ``rest`` (the non-trainable state from ``nnx.split``: RNG counters, nothing that
    training changes) is copied here, so the function never reads buffers that a
    donated training step consumes.
    """
    rest = jax.tree.map(jnp.copy, rest)

    def logits_fn(params, tokens):
        return nnx.merge(graphdef, params, rest)(tokens)

    return logits_fn


def make_reward_fn(graphdef, rest) -> Callable[[object, jax.Array, jax.Array], jax.Array]:
    """``reward_fn(params, tokens [B, T], lengths [B]) -> [B]`` of a split reward model
    (``rest`` copied, as in :func:`make_logits_fn`)."""
    rest = jax.tree.map(jnp.copy, rest)

    def reward_fn(params, tokens, lengths):
        return nnx.merge(graphdef, params, rest)(tokens, lengths)

    return reward_fn


def _pair_batch_check(batch, keys) -> None:
    missing = [k for k in keys if k not in batch]
    if missing:
        raise ValueError(f"batch is missing {missing}; pair batches hold {list(keys)}")


def make_sft_loss(logits_fn: LogitsFn):
    """SFT: ``−Σ_b log π(y_b|x_b) / Σ_b |y_b|`` on a batch ``{"tokens" [B, T], "mask" [B, T]}``.

    Returns:
      ``loss_fn(params, rest, batch, key) -> (loss, {"nll": loss})``.
    """

    def loss_fn(params, rest, batch, key):
        _pair_batch_check(batch, ("tokens", "mask"))
        out = sequence_logps(logits_fn(params, batch["tokens"]), batch["tokens"], batch["mask"])
        nll = -jnp.sum(out.logps) / jnp.maximum(jnp.sum(out.lengths), 1)
        return nll, {"nll": nll}

    return loss_fn


def make_reward_model_loss(reward_fn, *, center_rewards_coefficient: float | None = None):
    """Bradley–Terry loss of a reward model on a pair batch (optionally with ``margin [B]``).

    Both completions go through the model in one ``[2B, T]`` pass.

    Returns:
      ``loss_fn(params, rest, batch, key) -> (loss, {"accuracy", "margin"})``.
    """

    def loss_fn(params, rest, batch, key):
        _pair_batch_check(batch, ("chosen", "rejected", "chosen_length", "rejected_length"))
        B = batch["chosen"].shape[0]
        tokens = jnp.concatenate([batch["chosen"], batch["rejected"]])
        lengths = jnp.concatenate([batch["chosen_length"], batch["rejected_length"]])
        rewards = reward_fn(params, tokens, lengths)
        rc, rr = rewards[:B], rewards[B:]
        losses = bradley_terry_loss(rc, rr, margin=batch.get("margin"),
                                    center_rewards_coefficient=center_rewards_coefficient)
        return jnp.mean(losses), {"accuracy": jnp.mean((rc > rr).astype(jnp.float32)),
                                  "margin": jnp.mean(rc - rr)}

    return loss_fn


def make_dpo_loss(logits_fn: LogitsFn, *, loss_type="sigmoid", beta: float = 0.1,
                  label_smoothing: float = 0.0, ref_params=None, average: bool = False,
                  pad_id: int = 0, **options):
    """A preference-optimisation loss on pair batches.

    Args:
      logits_fn: ``(params, tokens) -> logits`` of the policy (and reference).
      loss_type, label_smoothing, **options: as in ``preference_loss``.
      beta: default ``β`` (the loss function's optional 4th argument overrides it).
      ref_params: None to read ``ref_chosen_logps``/``ref_rejected_logps`` from the batch
        (cached once with :func:`reference_logps`); or the frozen reference parameters,
        whose log-probs are then recomputed every step (the slower path the benchmark
        compares against).
      average: per-token mean log-probs instead of sums (the length-normalised losses —
        ipo, sigmoid_norm, simpo, cpo, orpo — already divide summed log-probs by the
        lengths; keep ``average=False`` for them).
      pad_id: padding id used when chosen and rejected differ in length.

    Returns:
      ``loss_fn(params, rest, batch, key, beta=beta) -> (mean loss, TRL's metrics)``.

    Example:
        >>> loss_fn = make_dpo_loss(make_logits_fn(graphdef, rest), loss_type="ipo")
        >>> step = make_train_step(loss_fn, build_optimizer(name="adam"))
    """

    def loss_fn(params, rest, batch, key, beta=beta):
        _pair_batch_check(batch, ("chosen", "chosen_mask", "rejected", "rejected_mask"))
        pair = (batch["chosen"], batch["chosen_mask"], batch["rejected"], batch["rejected_mask"])
        out = concatenated_logps(functools.partial(logits_fn, params), *pair, average=average,
                                 pad_id=pad_id)
        if ref_params is None:
            _pair_batch_check(batch, ("ref_chosen_logps", "ref_rejected_logps"))
            rc, rr = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
        else:
            frozen = jax.lax.stop_gradient(ref_params)
            ref = concatenated_logps(functools.partial(logits_fn, frozen), *pair,
                                     average=average, pad_id=pad_id)
            rc, rr = ref.chosen_logps, ref.rejected_logps
        losses = preference_loss(out.chosen_logps, out.rejected_logps, rc, rr,
                                 loss_type=loss_type, beta=beta,
                                 label_smoothing=label_smoothing,
                                 chosen_lengths=out.chosen_lengths,
                                 rejected_lengths=out.rejected_lengths, **options)
        metrics = preference_metrics(out.chosen_logps, out.rejected_logps, rc, rr, beta=beta)
        return jnp.mean(losses), metrics

    return loss_fn


def reference_logps(logits_fn: LogitsFn, ref_params, pairs: dict, *, batch_size: int = 256,
                    average: bool = False, pad_id: int = 0) -> dict:
    """Cache the reference log-probs of a pair dataset (one jitted pass, ``lax.map``).

    Args:
      logits_fn: ``(params, tokens) -> logits``.
      ref_params: the reference (SFT) parameters.
      pairs: a pair dataset (see the module docstring), leading size ``N``.
      batch_size: pairs per forward pass.
      average: per-token mean log-probs (match the DPO loss's ``average``).
      pad_id: padding id.

    Returns:
      ``pairs`` plus ``ref_chosen_logps`` and ``ref_rejected_logps`` ``[N]``.
    """
    _pair_batch_check(pairs, ("chosen", "chosen_mask", "rejected", "rejected_mask"))
    keys = ("chosen", "chosen_mask", "rejected", "rejected_mask")
    n = pairs["chosen"].shape[0]
    bs = max(1, min(batch_size, n))
    chunks = -(-n // bs)

    def padded(x):
        x = jnp.pad(x, ((0, chunks * bs - n),) + ((0, 0),) * (x.ndim - 1))
        return x.reshape(chunks, bs, *x.shape[1:])

    @jax.jit
    def run(params, arrays):
        def one(chunk):
            out = concatenated_logps(functools.partial(logits_fn, params), *chunk,
                                     average=average, pad_id=pad_id)
            return out.chosen_logps, out.rejected_logps

        rc, rr = jax.lax.map(one, arrays)
        return rc.reshape(-1)[:n], rr.reshape(-1)[:n]

    rc, rr = run(ref_params, tuple(padded(pairs[k]) for k in keys))
    return {**pairs, "ref_chosen_logps": rc, "ref_rejected_logps": rr}


def make_rloo_loss(logits_fn: LogitsFn, ref_params, reward_fn: Callable[[jax.Array], jax.Array],
                   *, completion_length: int, num_samples: int = 4, kl_coef: float = 0.05,
                   temperature: float = 1.0, pad_id: int = 0):
    """RLHF baseline: REINFORCE with a leave-one-out baseline on ``r − β·KL``.

    For each prompt ``x`` (a batch ``{"prompts": [B, P]}``) draw ``K = num_samples``
    completions ``y_i ∼ π_θ`` (with ``lax.scan``, parameters frozen), then

    ``R_i = r(x, y_i) − β (log π_θ(y_i|x) − log π_ref(y_i|x))``,
    ``A_i = R_i − (1/(K−1)) Σ_{j≠i} R_j``,  ``L(θ) = −(1/BK) Σ A_i log π_θ(y_i|x)``,

    whose gradient is an unbiased estimate of ``−∇_θ (E[r] − β KL(π_θ ‖ π_ref))`` (the
    KL term as a sequence-level penalty in the reward, as in InstructGPT/RLOO).

    Args:
      logits_fn: ``(params, tokens) -> logits`` of the policy and reference.
      ref_params: frozen reference (SFT) parameters.
      reward_fn: ``tokens [N, P + L] -> rewards [N]`` (a trained reward model or the
        true reward), not differentiated.
      completion_length: ``L``.
      num_samples: ``K >= 2``.
      kl_coef: default ``β`` (the loss function's optional 4th argument overrides it).
      temperature: sampling temperature (1 for on-policy RLOO).
      pad_id: filler for not-yet-sampled positions.

    Returns:
      ``loss_fn(params, rest, batch, key, kl_coef=kl_coef) -> (loss, {"reward", "kl",
      "rlhf_reward", "advantage_std"})`` with ``kl`` the sampled sequence KL.

    Paper: Ahmadian et al. 2024 (RLOO); Williams 1992 (REINFORCE); Ouyang et al. 2022.
    """
    if num_samples < 2:
        raise ValueError(f"num_samples must be >= 2 for a leave-one-out baseline, got "
                         f"{num_samples}")

    def loss_fn(params, rest, batch, key, kl_coef=kl_coef):
        _pair_batch_check(batch, ("prompts",))
        prompts = batch["prompts"]
        B, P = prompts.shape
        K = num_samples
        repeated = jnp.repeat(prompts, K, axis=0)  # [B*K, P]
        frozen = jax.lax.stop_gradient(params)
        samples = sample_completions(functools.partial(logits_fn, frozen), repeated, key,
                                     completion_length, temperature=temperature,
                                     pad_id=pad_id)
        tokens = samples.tokens  # [B*K, P + L]
        mask = jnp.broadcast_to(jnp.arange(tokens.shape[1]) >= P, tokens.shape)
        logp = sequence_logps(logits_fn(params, tokens), tokens, mask).logps  # [B*K]
        ref_logp = sequence_logps(logits_fn(jax.lax.stop_gradient(ref_params), tokens),
                                  tokens, mask).logps
        score = jax.lax.stop_gradient(reward_fn(tokens))
        kl = jax.lax.stop_gradient(logp - ref_logp)
        total = (score - kl_coef * kl).reshape(B, K)
        baseline = (jnp.sum(total, axis=1, keepdims=True) - total) / (K - 1)
        advantage = jax.lax.stop_gradient(total - baseline).reshape(-1)
        loss = -jnp.mean(advantage * logp)
        return loss, {"reward": jnp.mean(score), "kl": jnp.mean(kl),
                      "rlhf_reward": jnp.mean(total), "advantage_std": jnp.std(advantage)}

    return loss_fn


def make_sweep_loss(loss_fn, coefs):
    """Train one model per coefficient in a single program.

    ``L(θ_1..θ_K) = Σ_k loss_fn(θ_k, rest, batch, key_k, coef_k)``: the members share nothing,
    so the gradient of the sum is each member's own gradient, and an element-wise
    optimizer (Adam, SGD) updates each exactly as if trained alone. Global-norm
    clipping would couple the members; leave ``clip_norm`` unset for sweeps.

    Args:
      loss_fn: ``loss_fn(params, rest, batch, key, coef) -> (loss, metrics)``.
      coefs: ``K`` coefficients.

    Returns:
      ``sweep(params [K, ...], rest, batch, key) -> (Σ losses, {f"{name}[{k}]": metric})``,
      parameters stacked by :func:`stack_params` (``rest`` shared); every member sees the
      same batch and its own key.
    """
    coefs = tuple(float(c) for c in coefs)
    if not coefs:
        raise ValueError("coefs must hold at least one coefficient")
    values = jnp.asarray(coefs, jnp.float32)
    K = len(coefs)

    def sweep(params, rest, batch, key):
        keys = jax.random.split(key, K)
        losses, metrics = jax.vmap(loss_fn, in_axes=(0, None, None, 0, 0))(params, rest, batch,
                                                                            keys, values)
        out = {f"{name}[{k}]": value[k] for name, value in metrics.items() for k in range(K)}
        out.update({f"loss[{k}]": losses[k] for k in range(K)})
        return jnp.sum(losses), out

    return sweep


def stack_params(params, num: int):
    """``num`` copies of a parameter pytree stacked on a new leading axis."""
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (num, *x.shape)).copy(), params)


def unstack_params(params, index: int):
    """Member ``index`` of a stacked parameter pytree."""
    return jax.tree.map(lambda x: x[index], params)
