"""A controlled preference task with a known reward, evaluation, and frontier analysis.

The "sentiment" task (after the DPO paper's IMDb experiment, in miniature): prompts are
``<bos>`` + ``P`` random letters; completions are ``L`` letters. A demonstrator writes
completions by copying a random prompt letter with probability ``copy_prob`` and
otherwise drawing a uniform letter, so the SFT model is a prompt-conditional LM. The
hidden true reward is a sentiment-like score of the completion,

    ``r*(y) = (#positive letters − #negative letters) / L  ∈ [−1, 1]``,

and preference pairs ``(y_1, y_2)`` sampled from the SFT model are labelled by
Bradley–Terry on it: ``P(y_1 ≻ y_2) = σ(s · (r*(y_1) − r*(y_2)))`` with ``s = bt_scale``.

Evaluation samples completions from a policy on held-out prompts and reports the mean
true reward and the sequence KL ``KL(π ‖ π_ref)(x) = E_{y∼π} Σ_t KL(π(·|x, y_<t) ‖
π_ref(·|x, y_<t))``, estimated by summing the exact per-token KLs along sampled
completions (unbiased, non-negative, lower variance than ``log π(y) − log π_ref(y)``).

:func:`reward_envelope` and :func:`compare_frontiers` turn (KL, reward) points into
frontiers — the best reward reached at KL ≤ k — and compare two methods at matched KL,
as in the DPO paper's Figure 2 (left).

Example:
    >>> task = SentimentTask()
    >>> tok = task.tokenizer()
    >>> prompts = sample_prompts(task, jax.random.key(0), 8)          # [8, 1 + P]
    >>> seqs = demonstrations(task, jax.random.key(1), prompts)       # [8, 1 + P + L]
    >>> true_reward(task, seqs)                                       # [8]
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from common.text import ByteTokenizer
from rl.preference.model import sample_completions

__all__ = [
    "SentimentTask",
    "compare_frontiers",
    "completion_positions",
    "demonstrations",
    "evaluate_policy",
    "label_pairs",
    "make_pairs",
    "optimal_frontier",
    "reward_envelope",
    "sample_prompts",
    "sequence_kl",
    "true_reward",
]


@dataclasses.dataclass(frozen=True)
class SentimentTask:
    """The toy task's vocabulary, lengths and hidden reward.

    Attributes:
      alphabet: the letters (one token each, after 3 special tokens).
      positive: letters scoring +1.
      negative: letters scoring −1.
      prompt_length: ``P`` letters after ``<bos>``.
      completion_length: ``L`` letters.
      copy_prob: the demonstrator's probability of copying a prompt letter.
      bt_scale: Bradley–Terry scale ``s`` of the preference labels.
    """

    alphabet: str = "abcdefghijklmnop"
    positive: str = "abcd"
    negative: str = "mnop"
    prompt_length: int = 4
    completion_length: int = 8
    copy_prob: float = 0.5
    bt_scale: float = 8.0

    def __post_init__(self):
        for name in ("positive", "negative"):
            extra = set(getattr(self, name)) - set(self.alphabet)
            if extra:
                raise ValueError(f"{name} letters {sorted(extra)} are not in the alphabet")
        if set(self.positive) & set(self.negative):
            raise ValueError("positive and negative letters must be disjoint")
        if self.prompt_length < 1 or self.completion_length < 1:
            raise ValueError("prompt_length and completion_length must be >= 1")
        if not 0.0 <= self.copy_prob <= 1.0:
            raise ValueError(f"copy_prob must be in [0, 1], got {self.copy_prob}")

    def tokenizer(self) -> ByteTokenizer:
        return ByteTokenizer(self.alphabet)

    @property
    def prompt_tokens(self) -> int:
        """Prompt tokens including ``<bos>``: ``1 + P``."""
        return 1 + self.prompt_length

    @property
    def seq_len(self) -> int:
        """``1 + P + L``."""
        return self.prompt_tokens + self.completion_length

    def letter_ids(self) -> jax.Array:
        """``[A]`` token ids of the alphabet."""
        return jnp.arange(len(self.alphabet), dtype=jnp.int32) + ByteTokenizer.num_special

    def token_scores(self) -> jax.Array:
        """``[V]`` hidden per-token score: +1 positive, −1 negative, 0 otherwise."""
        tok = self.tokenizer()
        scores = np.zeros(tok.vocab_size, np.float32)
        for ch in self.positive:
            scores[tok.token_id(ch)] = 1.0
        for ch in self.negative:
            scores[tok.token_id(ch)] = -1.0
        return jnp.asarray(scores)


def sample_prompts(task: SentimentTask, key: jax.Array, num: int) -> jax.Array:
    """``[num, 1 + P]`` prompts: ``<bos>`` then ``P`` uniform letters."""
    letters = jax.random.choice(key, task.letter_ids(), (num, task.prompt_length))
    bos = jnp.full((num, 1), ByteTokenizer.bos_id, jnp.int32)
    return jnp.concatenate([bos, letters], axis=1)


def demonstrations(task: SentimentTask, key: jax.Array, prompts: jax.Array) -> jax.Array:
    """The demonstrator's sequences ``[N, 1 + P + L]`` for ``prompts [N, 1 + P]``.

    Each completion letter copies a uniformly chosen prompt letter with probability
    ``copy_prob``, else is a uniform letter.
    """
    n = prompts.shape[0]
    k_copy, k_pos, k_new = jax.random.split(key, 3)
    shape = (n, task.completion_length)
    copy = jax.random.bernoulli(k_copy, task.copy_prob, shape)
    which = jax.random.randint(k_pos, shape, 1, task.prompt_tokens)
    copied = jnp.take_along_axis(prompts, which, axis=1)
    fresh = jax.random.choice(k_new, task.letter_ids(), shape)
    return jnp.concatenate([prompts, jnp.where(copy, copied, fresh)], axis=1)


def true_reward(task: SentimentTask, tokens: jax.Array) -> jax.Array:
    """Hidden reward ``[N]`` of sequences ``[N, 1 + P + L]``: mean token score of the
    completion (positions ``>= 1 + P``)."""
    if jnp.ndim(tokens) != 2 or tokens.shape[1] != task.seq_len:
        raise ValueError(f"tokens must have shape [N, {task.seq_len}], got shape "
                         f"{tuple(jnp.shape(tokens))}")
    completion = tokens[:, task.prompt_tokens:]
    return jnp.mean(task.token_scores()[completion], axis=1)


def completion_positions(task: SentimentTask, num: int) -> jax.Array:
    """``[num, 1 + P + L]`` boolean mask of the completion positions."""
    return jnp.broadcast_to(jnp.arange(task.seq_len) >= task.prompt_tokens,
                            (num, task.seq_len))


def label_pairs(task: SentimentTask, key: jax.Array, first: jax.Array, second: jax.Array,
                ) -> dict:
    """Bradley–Terry labels on the true reward for two completions of each prompt.

    ``first`` is chosen with probability ``σ(s (r*(first) − r*(second)))``.

    Args:
      task: the task (its reward and ``bt_scale`` ``s``).
      key: PRNG key of the labels.
      first, second: ``[N, 1 + P + L]`` sequences of the same prompts.

    Returns:
      A pair dataset (see ``rl.preference.training``) plus ``chosen_reward``,
      ``rejected_reward`` ``[N]`` (true rewards, for analysis only) and
      ``label_agrees`` ``[N]`` (whether the chosen one has the higher true reward).
    """
    if first.shape != second.shape:
        raise ValueError(f"second must have the shape of first {tuple(first.shape)}, got "
                         f"{tuple(second.shape)}")
    n = first.shape[0]
    ra, rb = true_reward(task, first), true_reward(task, second)
    pick = jax.random.bernoulli(key, jax.nn.sigmoid(task.bt_scale * (ra - rb)))
    rc, rr = jnp.where(pick, ra, rb), jnp.where(pick, rb, ra)
    mask = completion_positions(task, n)
    length = jnp.full((n,), task.seq_len, jnp.int32)
    return {"chosen": jnp.where(pick[:, None], first, second),
            "rejected": jnp.where(pick[:, None], second, first),
            "chosen_mask": mask, "rejected_mask": mask, "chosen_length": length,
            "rejected_length": length, "chosen_reward": rc, "rejected_reward": rr,
            "label_agrees": rc >= rr}


def make_pairs(task: SentimentTask, key: jax.Array, logits_fn, params, prompts: jax.Array,
               ) -> dict:
    """Preference pairs sampled from a policy and labelled by Bradley–Terry on ``r*``.

    Two completions per prompt from ``logits_fn(params, ·)`` (one ``lax.scan`` over a
    ``[2N]`` batch), labelled by :func:`label_pairs`.
    """
    n = prompts.shape[0]
    k_sample, k_label = jax.random.split(key)
    both = sample_completions(functools.partial(logits_fn, params),
                              jnp.concatenate([prompts, prompts]), k_sample,
                              task.completion_length).tokens
    return label_pairs(task, k_label, both[:n], both[n:])


def sequence_kl(policy_logits: jax.Array, ref_logits: jax.Array, tokens: jax.Array,
                mask: jax.Array) -> jax.Array:
    """``Σ_t m_t KL(π(·|s_<t) ‖ π_ref(·|s_<t))`` per sequence, ``[B]``.

    Args:
      policy_logits, ref_logits: ``[B, T, V]`` logits of ``tokens`` under both models.
      tokens: ``[B, T]`` (only its shape is used; the conditionals come from the logits).
      mask: ``[B, T]`` boolean, True on the scored (completion) tokens.

    Returns:
      ``[B]`` non-negative KLs, the exact per-token KLs summed along the given sequences.
    """
    B, T = tokens.shape
    for name, logits in (("policy_logits", policy_logits), ("ref_logits", ref_logits)):
        if jnp.ndim(logits) != 3 or logits.shape[:2] != (B, T):
            raise ValueError(f"{name} must have shape [B, T, V] with [B, T] = ({B}, {T}), "
                             f"got shape {tuple(logits.shape)}")
    if mask.shape != (B, T):
        raise ValueError(f"mask must have shape [B, T] = ({B}, {T}), got {tuple(mask.shape)}")
    dtype = jnp.promote_types(policy_logits.dtype, jnp.float32)
    logp = jax.nn.log_softmax(policy_logits[:, :-1].astype(dtype))
    logq = jax.nn.log_softmax(ref_logits[:, :-1].astype(dtype))
    per_token = jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)  # [B, T-1]
    return jnp.sum(jnp.where(mask[:, 1:], per_token, 0.0), axis=-1)


def evaluate_policy(task: SentimentTask, logits_fn, params, ref_params, prompts: jax.Array,
                    key: jax.Array) -> dict[str, jax.Array]:
    """True reward and KL to the reference of a policy on ``prompts`` (jittable).

    Returns:
      ``{"reward", "reward_se", "kl", "kl_se"}``: means over prompts (one completion
      each) and their standard errors.
    """
    samples = sample_completions(functools.partial(logits_fn, params), prompts, key,
                                 task.completion_length)
    tokens = samples.tokens
    reward = true_reward(task, tokens)
    kl = sequence_kl(logits_fn(params, tokens), logits_fn(ref_params, tokens), tokens,
                     completion_positions(task, tokens.shape[0]))
    n = tokens.shape[0]
    return {"reward": jnp.mean(reward), "reward_se": jnp.std(reward) / jnp.sqrt(n),
            "kl": jnp.mean(kl), "kl_se": jnp.std(kl) / jnp.sqrt(n)}


def optimal_frontier(task: SentimentTask, logits_fn, ref_params, prompts: jax.Array,
                     key: jax.Array, betas: Sequence[float], *, num_samples: int = 64,
                     ) -> dict[str, np.ndarray]:
    """The exact KL-regularised optimum's (KL, true reward) curve, by importance sampling.

    For ``max_π E_π[r*] − β KL(π ‖ π_ref)`` the optimum is ``π*(y|x) ∝ π_ref(y|x)
    exp(r*(y)/β)`` (the closed form DPO starts from), with ``E_{π*}[r*]`` and
    ``KL(π* ‖ π_ref) = E_{π*}[r*]/β − log Z(x)``. With ``M = num_samples`` completions
    ``y_i ∼ π_ref`` per prompt, the self-normalised weights ``w_i = softmax(r*(y_i)/β)``
    give ``E_{π*}[r*] ≈ Σ w_i r*(y_i)`` and ``log Z ≈ logsumexp(r*/β) − log M``. Small
    ``β`` concentrates the weights on few samples: ``ess_fraction = mean_x 1/(M Σ w_i²)``
    says how far to trust each point.

    Returns:
      ``{"beta", "kl", "reward", "ess_fraction"}`` arrays over ``betas``.

    Paper: Rafailov et al. 2023, eq. 4; Peters & Schaal 2007; Korbak et al. 2022.
    """
    n = prompts.shape[0]
    repeated = jnp.repeat(prompts, num_samples, axis=0)

    @jax.jit
    def sample(key):
        samples = sample_completions(functools.partial(logits_fn, ref_params), repeated, key,
                                     task.completion_length)
        return true_reward(task, samples.tokens).reshape(n, num_samples)

    rewards = np.asarray(sample(key), np.float64)  # [n, M]
    out = {"beta": [], "kl": [], "reward": [], "ess_fraction": []}
    for beta in betas:
        z = rewards / beta
        log_norm = np.logaddexp.reduce(z, axis=1, keepdims=True)
        w = np.exp(z - log_norm)
        mean_r = np.sum(w * rewards, axis=1)
        log_z = log_norm[:, 0] - np.log(num_samples)
        out["beta"].append(beta)
        out["reward"].append(float(np.mean(mean_r)))
        out["kl"].append(float(np.mean(mean_r / beta - log_z)))
        out["ess_fraction"].append(float(np.mean(1.0 / np.sum(w**2, axis=1))) / num_samples)
    return {k: np.asarray(v) for k, v in out.items()}


def reward_envelope(kl: Sequence[float], reward: Sequence[float], grid: np.ndarray) -> np.ndarray:
    """Best reward reached at ``KL <= k`` for each ``k`` in ``grid`` (NaN before the first
    point): the non-decreasing frontier of a set of (KL, reward) points.

    Example:
      >>> reward_envelope([0, 2], [0.1, 0.5], np.array([0.0, 1.0, 3.0])).tolist()
      [0.1, 0.1, 0.5]
    """
    kl = np.asarray(kl, np.float64)
    reward = np.asarray(reward, np.float64)
    if kl.shape != reward.shape or kl.ndim != 1:
        raise ValueError(f"kl and reward must be matching [N] arrays, got {kl.shape} and "
                         f"{reward.shape}")
    out = np.full(np.shape(grid), np.nan)
    for i, k in enumerate(np.asarray(grid, np.float64)):
        reached = reward[kl <= k]
        if reached.size:
            out[i] = reached.max()
    return out


def compare_frontiers(a_kl, a_reward, b_kl, b_reward, *, start: tuple[float, float],
                      num_grid: int = 201, checkpoints: Sequence[float] = ()) -> dict:
    """Compare frontier A (e.g. DPO) with frontier B (e.g. RLHF) at matched KL.

    Both frontiers include the common starting point ``start = (0, r_ref)`` (the
    reference policy). On ``num_grid`` KLs spanning ``[0, k_max]``, with ``k_max`` the
    smaller of the two methods' largest KL (the range both explored), it reports

    * ``a_dominates``: A's envelope ``>=`` B's at every grid KL;
    * ``a_better_fraction``: the fraction of grid KLs where A's envelope ``>=`` B's;
    * ``mean_reward_gap``: mean of ``env_A − env_B`` over the grid (area between the
      frontiers divided by the KL range);
    * ``mean_reward_a``/``mean_reward_b``: each envelope's mean (area / range);
    * ``reward_at_kl``: both envelopes at each of ``checkpoints`` inside the range.

    Returns:
      A JSON-ready dict of the above plus ``kl_max_compared``.
    """
    a_kl = np.concatenate([[start[0]], np.asarray(a_kl, np.float64)])
    a_reward = np.concatenate([[start[1]], np.asarray(a_reward, np.float64)])
    b_kl = np.concatenate([[start[0]], np.asarray(b_kl, np.float64)])
    b_reward = np.concatenate([[start[1]], np.asarray(b_reward, np.float64)])
    if num_grid < 2:
        raise ValueError(f"num_grid must be >= 2, got {num_grid}")
    k_max = float(min(a_kl.max(), b_kl.max()))
    grid = np.linspace(start[0], max(k_max, start[0]), num_grid)
    env_a = reward_envelope(a_kl, a_reward, grid)
    env_b = reward_envelope(b_kl, b_reward, grid)
    diff = env_a - env_b
    at = {}
    for k in checkpoints:
        if start[0] <= k <= k_max:
            ea, eb = reward_envelope(a_kl, a_reward, np.array([k])), reward_envelope(
                b_kl, b_reward, np.array([k]))
            at[f"{k:g}"] = {"a": float(ea[0]), "b": float(eb[0])}
    return {
        "a_dominates": bool(np.all(diff >= 0)),
        "a_better_fraction": float(np.mean(diff >= 0)),
        "mean_reward_gap": float(np.mean(diff)),
        "mean_reward_a": float(np.mean(env_a)),
        "mean_reward_b": float(np.mean(env_b)),
        "kl_max_compared": k_max,
        "reward_at_kl": at,
    }
