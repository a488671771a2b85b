"""The one optimizer builder every recipe uses.

``build_optimizer(OptimConfig(...))`` returns an ``optax.GradientTransformation``
composed, in this order, of

1. global-norm clipping (``optax.clip_by_global_norm``),
2. the named optimizer's update rule (Adam, LAMB, Lion, ...), with decoupled
   weight decay applied through a mask (Loshchilov & Hutter 2019,
   "Decoupled Weight Decay Regularization"),
3. the learning-rate schedule (warm-up, then constant / linear / cosine / step),
4. per-parameter-group learning-rate multipliers chosen by path pattern,
5. gradient accumulation over ``accumulate_steps`` micro-batches
   (``optax.MultiSteps``).

All pieces are optax; nothing here reimplements an update rule.

Example:
    >>> tx = build_optimizer(OptimConfig(name="adamw", learning_rate=3e-4,
    ...                                  schedule="cosine", warmup_steps=100,
    ...                                  total_steps=10_000, weight_decay=0.05,
    ...                                  clip_norm=1.0,
    ...                                  group_lr=(("backbone", 0.1),)))
    >>> opt_state = tx.init(params)
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from common.checks import check_int
from common.registry import Registry
from common.tree import path_to_str

OPTIMIZERS: Registry[Callable[..., optax.GradientTransformation]] = Registry("optimizer")
SCHEDULES: Registry[Callable[..., optax.Schedule]] = Registry("schedule")

# Names matched (case-insensitively, anywhere in the parameter path) by the default
# weight-decay mask, in addition to excluding every parameter with fewer than 2 dims.
DEFAULT_NO_DECAY = ("bias", "scale", "norm", "embedding_norm")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Everything that picks and shapes an optimizer; recipes embed one in their config.

    Attributes:
      name: registered optimizer name (see ``OPTIMIZERS.names()``).
      learning_rate: peak learning rate.
      schedule: registered schedule name: constant, linear, cosine, step, rsqrt.
      warmup_steps: linear warm-up from 0 to ``learning_rate`` (0 disables).
      total_steps: steps the schedule spans (needed by linear and cosine).
      end_factor: final learning rate as a fraction of the peak (linear, cosine).
      step_every: for ``schedule="step"``: decay every this many steps after warm-up.
      step_factor: for ``schedule="step"``: multiply the rate by this at each decay.
      weight_decay: decoupled weight-decay coefficient (0 disables).
      no_decay: path substrings (case-insensitive) that never decay; parameters
        with fewer than two dimensions (biases, norm scales) never decay either.
      clip_norm: clip gradients to this global norm first (None disables).
      group_lr: ``((regex, multiplier), ...)``: the first pattern that matches a
        parameter's path (``"backbone/layers/0/kernel"``) scales its learning rate.
      accumulate_steps: apply one update every this many micro-batches,
        averaging their gradients (``optax.MultiSteps``); 1 disables.
      kwargs: extra keyword arguments for the optimizer (``b1``, ``momentum``, ...).
    """

    name: str = "adam"
    learning_rate: float = 1e-3
    schedule: str = "constant"
    warmup_steps: int = 0
    total_steps: int | None = None
    end_factor: float = 0.0
    step_every: int = 1000
    step_factor: float = 0.1
    weight_decay: float = 0.0
    no_decay: tuple[str, ...] = DEFAULT_NO_DECAY
    clip_norm: float | None = None
    group_lr: tuple[tuple[str, float], ...] = ()
    accumulate_steps: int = 1
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field that would break or silently
        reverse training: unknown names, a non-finite or non-positive learning rate,
        negative decay factors or group multipliers (they flip the update's sign)."""
        OPTIMIZERS.get(self.name)
        SCHEDULES.get(self.schedule)

        def finite(value, name: str, low: float, strict: bool) -> None:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
                math.isfinite(value) and (value > low if strict else value >= low))
            if not ok:
                raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} "
                                 f"{low:g}, got {value!r}")

        finite(self.learning_rate, "learning_rate", 0.0, strict=True)
        finite(self.end_factor, "end_factor", 0.0, strict=False)
        finite(self.step_factor, "step_factor", 0.0, strict=True)
        finite(self.weight_decay, "weight_decay", 0.0, strict=False)
        if self.clip_norm is not None:
            finite(self.clip_norm, "clip_norm", 0.0, strict=True)
        check_int(self.warmup_steps, "warmup_steps", 0)
        check_int(self.step_every, "step_every", 1)
        check_int(self.accumulate_steps, "accumulate_steps", 1)
        if self.total_steps is not None:
            check_int(self.total_steps, "total_steps", 1)
        for item in self.group_lr:
            if len(item) != 2:
                raise ValueError(f"group_lr entries must be (pattern, multiplier), got {item!r}")
            try:
                re.compile(item[0])
            except re.error as err:
                raise ValueError(f"group_lr pattern {item[0]!r} is not a valid regex: "
                                 f"{err}") from None
            finite(item[1], f"group_lr multiplier of {item[0]!r}", 0.0, strict=False)


# ----------------------------------------------------------------------------- optimizers
# Each entry takes (learning_rate, weight_decay, mask, **kwargs). Optimizers whose optax
# alias has decoupled decay built in use it (their decay sits where the paper puts it,
# e.g. before LAMB's trust ratio); the rest get ``optax.add_decayed_weights`` after the
# update direction and before the learning rate, exactly as ``optax.adamw`` composes it.


def _with_decoupled_decay(direction: optax.GradientTransformation, learning_rate,
                          weight_decay: float, mask) -> optax.GradientTransformation:
    parts = [direction]
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay, mask))
    parts.append(optax.scale_by_learning_rate(learning_rate))
    return optax.chain(*parts)


def _register_plain(name: str, direction_fn: Callable[..., optax.GradientTransformation]):
    def build(learning_rate, weight_decay=0.0, mask=None, **kwargs):
        return _with_decoupled_decay(direction_fn(**kwargs), learning_rate, weight_decay, mask)

    build.__doc__ = f"{name}: optax update direction + decoupled decay + learning rate."
    OPTIMIZERS.add(name, build)


def _sgd_direction(momentum: float | None = None, nesterov: bool = False):
    if momentum is None or momentum == 0.0:
        return optax.identity()
    return optax.trace(decay=momentum, nesterov=nesterov)


_register_plain("sgd", _sgd_direction)
_register_plain("momentum", lambda momentum=0.9, nesterov=False: optax.trace(momentum, nesterov))
_register_plain("nesterov", lambda momentum=0.9: optax.trace(momentum, nesterov=True))
_register_plain("adam", optax.scale_by_adam)
_register_plain("adamax", optax.scale_by_adamax)
_register_plain("nadam", lambda **kw: optax.scale_by_adam(nesterov=True, **kw))
_register_plain("amsgrad", optax.scale_by_amsgrad)
_register_plain("radam", optax.scale_by_radam)
_register_plain("adabelief", optax.scale_by_belief)
_register_plain("yogi", optax.scale_by_yogi)
_register_plain("rmsprop", optax.scale_by_rms)
_register_plain("adagrad", optax.scale_by_rss)
_register_plain("sign_sgd", lambda: optax.scale_by_sign())


@OPTIMIZERS.register("adamw")
def _adamw(learning_rate, weight_decay=0.0, mask=None, **kwargs):
    """AdamW (Loshchilov & Hutter 2019) via ``optax.adamw``."""
    return optax.adamw(learning_rate, weight_decay=weight_decay, mask=mask, **kwargs)


@OPTIMIZERS.register("lamb")
def _lamb(learning_rate, weight_decay=0.0, mask=None, **kwargs):
    """LAMB (You et al. 2020): decay enters before the layer-wise trust ratio."""
    return optax.lamb(learning_rate, weight_decay=weight_decay, mask=mask, **kwargs)


@OPTIMIZERS.register("lion")
def _lion(learning_rate, weight_decay=0.0, mask=None, **kwargs):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms")."""
    return optax.lion(learning_rate, weight_decay=weight_decay, mask=mask, **kwargs)


@OPTIMIZERS.register("lars")
def _lars(learning_rate, weight_decay=0.0, mask=None, **kwargs):
    """LARS (You et al. 2017); its decay feeds the trust ratio as in the paper."""
    return optax.lars(learning_rate, weight_decay=weight_decay, weight_decay_mask=mask or True,
                      **kwargs)


@OPTIMIZERS.register("adafactor")
def _adafactor(learning_rate, weight_decay=0.0, mask=None, **kwargs):
    """Adafactor (Shazeer & Stern 2018) via ``optax.adafactor``."""
    return optax.adafactor(learning_rate, weight_decay_rate=weight_decay or None,
                           weight_decay_mask=mask, **kwargs)


# ----------------------------------------------------------------------------- schedules
# Each takes (peak, total_steps, end_factor, step_every, step_factor) for the part after
# warm-up, with steps counted from the end of warm-up.


def _need_total(name: str, total_steps: int | None) -> int:
    if total_steps is None or total_steps <= 0:
        raise ValueError(f"schedule {name!r} needs total_steps > 0 (the steps after warm-up), "
                         f"got total_steps={total_steps!r}")
    return int(total_steps)


@SCHEDULES.register("constant")
def _constant(peak, total_steps, end_factor, step_every, step_factor):
    return optax.constant_schedule(peak)


@SCHEDULES.register("linear")
def _linear(peak, total_steps, end_factor, step_every, step_factor):
    return optax.linear_schedule(peak, peak * end_factor, _need_total("linear", total_steps))


@SCHEDULES.register("cosine")
def _cosine(peak, total_steps, end_factor, step_every, step_factor):
    return optax.cosine_decay_schedule(peak, _need_total("cosine", total_steps), alpha=end_factor)


@SCHEDULES.register("step")
def _step(peak, total_steps, end_factor, step_every, step_factor):
    if step_every <= 0:
        raise ValueError(f"schedule 'step' needs step_every > 0, got {step_every}")
    return optax.exponential_decay(peak, step_every, step_factor, staircase=True)


@SCHEDULES.register("rsqrt")
def _rsqrt(peak, total_steps, end_factor, step_every, step_factor):
    """Inverse square root decay, ``peak * sqrt(step_every / (step_every + t))``."""
    scale = float(max(step_every, 1))
    return lambda t: peak * jnp.sqrt(scale / (scale + t))


def build_schedule(config: OptimConfig) -> optax.Schedule:
    """The learning-rate schedule of ``config``: linear warm-up, then the named decay.

    ``total_steps`` counts the whole run, warm-up included.
    """
    if config.warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {config.warmup_steps}")
    after = None if config.total_steps is None else config.total_steps - config.warmup_steps
    if config.schedule in ("linear", "cosine") and after is not None and after <= 0:
        raise ValueError(f"total_steps ({config.total_steps}) must exceed warmup_steps "
                         f"({config.warmup_steps}) for schedule {config.schedule!r}")
    decay = SCHEDULES.get(config.schedule)(config.learning_rate, after, config.end_factor,
                                           config.step_every, config.step_factor)
    if config.warmup_steps == 0:
        return decay
    warmup = optax.linear_schedule(0.0, config.learning_rate, config.warmup_steps)
    return optax.join_schedules([warmup, decay], [config.warmup_steps])


# ----------------------------------------------------------------------------- masks, groups


def decay_mask(params, no_decay: Sequence[str] = DEFAULT_NO_DECAY):
    """Boolean pytree: True where decoupled weight decay applies.

    Parameters with ``ndim < 2`` (biases, norm scales) and those whose path contains
    one of ``no_decay`` (case-insensitive) are excluded.
    """
    lowered = [s.lower() for s in no_decay]

    def keep(path, leaf):
        name = path_to_str(path).lower()
        return bool(jnp.ndim(leaf) >= 2 and not any(s in name for s in lowered))

    return jax.tree_util.tree_map_with_path(keep, params)


def group_labels(params, patterns: Sequence[tuple[str, float]]):
    """Pytree of group labels: the index of the first matching pattern, or ``"rest"``."""
    compiled = [(re.compile(p), i) for i, (p, _) in enumerate(patterns)]

    def label(path, leaf):
        name = path_to_str(path)
        for regex, i in compiled:
            if regex.search(name):
                return f"group{i}"
        return "rest"

    return jax.tree_util.tree_map_with_path(label, params)


def _group_scaling(patterns: Sequence[tuple[str, float]]) -> optax.GradientTransformation:
    transforms = {f"group{i}": optax.scale(float(m)) for i, (_, m) in enumerate(patterns)}
    transforms["rest"] = optax.identity()
    return optax.multi_transform(transforms, lambda p: group_labels(p, patterns))


# ----------------------------------------------------------------------------- builder


def build_optimizer(config: OptimConfig | None = None, **overrides) -> optax.GradientTransformation:
    """Build the optax transformation described by ``config`` (fields overridable by kwarg).

    Returns:
      An ``optax.GradientTransformation`` (an ``optax.MultiSteps`` when
      ``accumulate_steps > 1``; use its ``.init``/``.update`` the same way).
    """
    config = dataclasses.replace(config or OptimConfig(), **overrides)
    config.validate()
    schedule = build_schedule(config)
    mask = None
    if config.weight_decay:
        no_decay = tuple(config.no_decay)
        mask = lambda params: decay_mask(params, no_decay)
    core = OPTIMIZERS.get(config.name)(schedule, config.weight_decay, mask, **dict(config.kwargs))
    parts = []
    if config.clip_norm is not None:
        parts.append(optax.clip_by_global_norm(config.clip_norm))
    parts.append(core)
    if config.group_lr:
        parts.append(_group_scaling(config.group_lr))
    tx = optax.chain(*parts) if len(parts) > 1 else core
    if config.accumulate_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=int(config.accumulate_steps))
    return tx


def learning_rate_at(config: OptimConfig, step) -> jax.Array:
    """The schedule's learning rate at ``step`` (for logging)."""
    return build_schedule(config)(step)
