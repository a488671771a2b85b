"""Margin-based softmax heads for face recognition, one registry, insightface's names.

Every head maps embeddings ``x [B, D]``, class centres ``W [C, D]`` and labels
``y [B]`` to logits ``[B, C]``; training minimises the softmax cross-entropy of those
logits (:func:`margin_loss`). With ``x̂ = x/‖x‖``, ``Ŵ_j = W_j/‖W_j‖`` and
``cos θ_j = x̂·Ŵ_j``, the non-target logits are ``s cos θ_j`` and the target logit
``j = y`` is changed:

=============  =====================================  ==============================
name           target logit                           defaults
=============  =====================================  ==============================
``softmax``    ``W_y·x`` (plain linear, no margin)    —
``normface``   ``s cos θ``                            ``s=64``
``sphereface`` ``‖x‖ (λ cos θ + ψ(θ)) / (1 + λ)``     ``m=4``, λ annealed (below)
``cosface``    ``s (cos θ − m)``                      ``s=64, m=0.35``
``arcface``    ``s cos(θ + m)``                       ``s=64, m=0.5, easy_margin=False``
``combined``   ``s (cos(m1 θ + m2) − m3)``            ``s=64, m1=1.0, m2=0.3, m3=0.2``
=============  =====================================  ==============================

``softmax`` uses the raw ``W x``; ``sphereface`` keeps ``‖x‖`` as the scale (its
non-target logits are ``‖x‖ cos θ_j``) with ``ψ(θ) = (−1)^k cos(mθ) − 2k`` for
``θ ∈ [kπ/m, (k+1)π/m]``, the monotone extension of ``cos(mθ)``, and the original
λ annealing ``λ = max(lambda_min, base (1 + gamma · step)^(−power))`` (SphereFace's
``base=1000, gamma=0.12, power=1, lambda_min=5``; :func:`sphereface_lambda`).
``arcface`` follows insightface: ``cos(θ + m) = cos θ cos m − sin θ sin m``; where
``θ + m > π`` (``cos θ ≤ cos(π − m)``) it falls back to the monotone
``cos θ − m sin m``, or with ``easy_margin`` keeps ``cos θ`` wherever ``cos θ ≤ 0``.
``combined`` is insightface's general form (ArcFace paper, eq. 4); ``(1, 0.5, 0)``
is ArcFace without the fallback and ``(1, 0, 0.35)`` is CosFace.

Extremes: θ = 0 and θ = π (an embedding equal or opposite to its centre) give finite
logits and finite gradients — ``θ = arccos(cos θ)`` and ``sin θ = √(1 − cos²θ)`` are
evaluated with a zero gradient in the ``1e-6`` band next to ``|cos θ| = 1``, where
their true derivative is infinite, and zero vectors are normalised safely.

Contract of a head (what :mod:`vision.face.partial_fc` relies on): ``fn(embeddings,
centers, labels, **params) -> [B, C]``, column-separable (column ``j`` depends only
on ``x``, ``W_j`` and whether ``j = y``), a label of ``-1`` meaning "no target
among these centres" (a row without margin). Registered functions do not check
their input; :func:`margin_logits` does.

Bad input (policy of :mod:`common.checks`): wrong ranks or mismatched sizes always
raise ``ValueError`` naming the argument; labels outside ``[0, C)`` and non-finite
embeddings or centres raise when concrete, and when traced make the affected rows
of the logits (and so the loss) NaN.

Papers: Liu et al. 2017 "SphereFace"; Wang et al. 2017 "NormFace"; Wang et al. 2018
"CosFace" and "Additive Margin Softmax"; Deng et al. 2019 "ArcFace".
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from common.checks import (
    check_finite,
    check_in_range,
    check_rank,
    is_concrete,
    poison,
    shape_of,
    shape_str,
)
from common.registry import Registry

__all__ = [
    "MARGINS",
    "all_ok",
    "check_margin_inputs",
    "cosine_logits",
    "finite_ok",
    "index_ok",
    "l2_normalize",
    "margin_logits",
    "margin_loss",
    "maybe_poison",
    "register_margin",
    "safe_arccos",
    "safe_sin",
    "softmax_cross_entropy",
    "sphereface_lambda",
]

MARGINS: Registry[Callable[..., jax.Array]] = Registry("margin head")
"""Margin heads by name: ``fn(embeddings [B, D], centers [C, D], labels [B], **params)
-> logits [B, C]`` (see the module docstring for the contract)."""

_BAND = 1e-6     # |cos θ| > 1 − _BAND: θ and sin θ get a zero gradient (true one is infinite)
_NORM_EPS = 1e-12


def register_margin(name: str | None = None, *, overwrite: bool = False):
    """Decorator adding a margin head to :data:`MARGINS` (it then gets the shared tests).

    Example:
      >>> @register_margin("my_cosface")
      ... def my_cosface(embeddings, centers, labels, *, s=30.0, m=0.2):
      ...     cos = cosine_logits(embeddings, centers)
      ...     return s * (cos - m * jax.nn.one_hot(labels, cos.shape[1]))
    """
    return MARGINS.register(name, overwrite=overwrite)


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
    """``x / max(‖x‖, 1e-12)`` along ``axis`` (zero vectors stay zero, finite gradient).

    Example:
      >>> l2_normalize(jnp.array([3., 4.])).tolist()
      [0.6000000238418579, 0.800000011920929]
    """
    sq = jnp.sum(x * x, axis=axis, keepdims=True)
    safe = jnp.where(sq > _NORM_EPS**2, sq, 1.0)
    return jnp.where(sq > _NORM_EPS**2, x / jnp.sqrt(safe), x / _NORM_EPS)


def cosine_logits(embeddings: jax.Array, centers: jax.Array) -> jax.Array:
    """``cos θ = x̂ Ŵᵀ``: ``[B, D]`` × ``[C, D]`` → ``[B, C]``, clipped to ``[−1, 1]``."""
    cos = l2_normalize(embeddings) @ l2_normalize(centers).T
    return jnp.clip(cos, -1.0, 1.0)


def safe_arccos(c: jax.Array) -> jax.Array:
    """``arccos(c)`` with value exact on ``[−1, 1]`` and a zero gradient where
    ``|c| > 1 − 1e-6`` (the true derivative ``−1/√(1 − c²)`` is infinite at ±1)."""
    inside = jnp.abs(c) < 1.0 - _BAND
    exact = jax.lax.stop_gradient(jnp.arccos(jnp.clip(c, -1.0, 1.0)))
    return jnp.where(inside, jnp.arccos(jnp.where(inside, c, 0.0)), exact)


def safe_sin(c: jax.Array) -> jax.Array:
    """``sin θ = √(1 − c²)`` for ``c = cos θ``, ``θ ∈ [0, π]``; zero gradient where
    ``|c| > 1 − 1e-6``."""
    inside = jnp.abs(c) < 1.0 - _BAND
    exact = jax.lax.stop_gradient(jnp.sqrt(jnp.maximum(1.0 - c * c, 0.0)))
    return jnp.where(inside, jnp.sqrt(1.0 - jnp.where(inside, c, 0.0) ** 2), exact)


def _target_mask(labels: jax.Array, num_classes: int) -> jax.Array:
    """``[B, C]`` boolean, True at ``(i, y_i)``; rows with ``y_i = −1`` are all False."""
    return labels[:, None] == jnp.arange(num_classes, dtype=labels.dtype)[None, :]


def _with_target(cos: jax.Array, labels: jax.Array, target: jax.Array) -> jax.Array:
    """``cos`` with ``target(cos)`` at the label columns (``target`` maps ``[B, C]``)."""
    return jnp.where(_target_mask(labels, cos.shape[1]), target, cos)


@register_margin("softmax")
def softmax_head(embeddings, centers, labels, **unused):
    """Plain linear classifier ``W x`` (no normalisation, no margin, no bias)."""
    del labels, unused
    return embeddings @ centers.T


@register_margin("normface")
def normface_head(embeddings, centers, labels, *, s: float = 64.0):
    """NormFace: ``s cos θ_j`` for every class (Wang et al. 2017)."""
    del labels
    return s * cosine_logits(embeddings, centers)


def sphereface_lambda(step, base: float = 1000.0, gamma: float = 0.12, power: float = 1.0,
                      lambda_min: float = 5.0):
    """SphereFace's annealing ``λ = max(lambda_min, base · (1 + gamma · step)^(−power))``.

    Example:
      >>> float(sphereface_lambda(0)), float(sphereface_lambda(10**6))
      (1000.0, 5.0)
    """
    step = jnp.asarray(step, jnp.float32)
    return jnp.maximum(lambda_min, base * (1.0 + gamma * step) ** (-power))


@register_margin("sphereface")
def sphereface_head(embeddings, centers, labels, *, m: int = 4, step=None, lam=None,
                    base: float = 1000.0, gamma: float = 0.12, power: float = 1.0,
                    lambda_min: float = 5.0):
    """SphereFace (A-Softmax): target ``‖x‖ (λ cos θ + ψ(θ)) / (1 + λ)``, others
    ``‖x‖ cos θ_j``; ``ψ(θ) = (−1)^k cos(mθ) − 2k``, ``k = ⌊mθ/π⌋`` (clipped to ``m − 1``).

    λ: ``lam`` if given, else :func:`sphereface_lambda` of ``step`` (``step=None``:
    the end of annealing, ``lambda_min``).
    """
    cos = cosine_logits(embeddings, centers)
    norm = jnp.sqrt(jnp.sum(embeddings * embeddings, axis=1, keepdims=True))   # [B, 1]
    theta = safe_arccos(cos)
    k = jnp.clip(jnp.floor(m * theta / math.pi), 0, m - 1)
    sign = 1.0 - 2.0 * jnp.mod(k, 2.0)
    psi = sign * jnp.cos(m * theta) - 2.0 * k
    if lam is None:
        lam = lambda_min if step is None else sphereface_lambda(step, base, gamma, power,
                                                                lambda_min)
    target = (lam * cos + psi) / (1.0 + lam)
    return norm * _with_target(cos, labels, target)


@register_margin("cosface")
def cosface_head(embeddings, centers, labels, *, s: float = 64.0, m: float = 0.35):
    """CosFace / AM-Softmax: target ``s (cos θ − m)``, others ``s cos θ_j``."""
    cos = cosine_logits(embeddings, centers)
    return s * _with_target(cos, labels, cos - m)


@register_margin("arcface")
def arcface_head(embeddings, centers, labels, *, s: float = 64.0, m: float = 0.5,
                 easy_margin: bool = False):
    """ArcFace: target ``s cos(θ + m)`` (insightface's fallback ``cos θ − m sin m``
    where ``θ + m > π``; with ``easy_margin``, ``cos θ`` where ``cos θ ≤ 0``)."""
    cos = cosine_logits(embeddings, centers)
    phi = cos * math.cos(m) - safe_sin(cos) * math.sin(m)
    if easy_margin:
        phi = jnp.where(cos > 0, phi, cos)
    else:
        phi = jnp.where(cos > math.cos(math.pi - m), phi, cos - math.sin(math.pi - m) * m)
    return s * _with_target(cos, labels, phi)


@register_margin("combined")
def combined_head(embeddings, centers, labels, *, s: float = 64.0, m1: float = 1.0,
                  m2: float = 0.3, m3: float = 0.2):
    """Combined margin: target ``s (cos(m1 θ + m2) − m3)``, others ``s cos θ_j``."""
    cos = cosine_logits(embeddings, centers)
    target = jnp.cos(m1 * safe_arccos(cos) + m2) - m3
    return s * _with_target(cos, labels, target)


def finite_ok(x, name: str):
    """The finiteness check of the face modules, by :mod:`common.checks`' policy: a
    concrete ``x`` is checked on the host (``check_finite``: ``ValueError`` naming
    ``name``) and gives True; a traced one gives the on-device flag ``all(isfinite(x))``."""
    if is_concrete(x):
        check_finite(x, name)
        return True
    return jnp.all(jnp.isfinite(x))


def index_ok(labels, name: str, n: int):
    """Like :func:`finite_ok` for class indices in ``[0, n)``: True (or ``ValueError``
    naming ``name``) when concrete, the ``[B]`` on-device flag when traced."""
    if is_concrete(labels):
        check_in_range(labels, name, 0, n, high_open=True)
        return True
    return (labels >= 0) & (labels < n)


def all_ok(*flags):
    """The conjunction of validity flags; True (a Python bool) when every flag is."""
    pending = [f for f in flags if f is not True]
    if not pending:
        return True
    out = jnp.asarray(pending[0])
    for f in pending[1:]:
        out = out & f
    return out


def maybe_poison(tree, ok):
    """``poison(tree, ok)`` unless ``ok`` is the Python ``True`` of a concrete check."""
    return tree if ok is True else poison(tree, ok)


def check_margin_inputs(embeddings, centers, labels):
    """Static checks of :func:`margin_logits`' arguments and the traced-value flag.

    Returns:
      ``(embeddings, centers, labels, ok)`` with ``ok`` True when every check passed
      on concrete values, else (traced) a ``[B, 1]`` boolean marking rows with finite
      embeddings and in-range labels (and finite centres).
      Concrete bad values raise ``ValueError`` naming the argument.
    """
    check_rank(embeddings, "embeddings", 2, "[B, D]")
    check_rank(centers, "centers", 2, "[C, D]")
    check_rank(labels, "labels", 1, "[B]")
    (b, d), (c, dc), (bl,) = shape_of(embeddings), shape_of(centers), shape_of(labels)
    if dc != d:
        raise ValueError(f"centers must have shape [C, D] with D = {d} (the embeddings' "
                         f"dimension), got shape {shape_str((c, dc))}")
    if bl != b:
        raise ValueError(f"labels must have shape [B] = ({b}), got shape {shape_str((bl,))}")
    if c < 1:
        raise ValueError("centers must hold at least one class, got shape "
                         f"{shape_str((c, dc))}")
    embeddings, centers, labels = jnp.asarray(embeddings), jnp.asarray(centers), jnp.asarray(
        labels)
    for x, name in ((embeddings, "embeddings"), (centers, "centers")):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"{name} must be floating point, got dtype {x.dtype}")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    ok = all_ok(index_ok(labels, "labels", c))
    if ok is not True:
        ok = ok[:, None]
    if not is_concrete(embeddings):
        ok = all_ok(ok, jnp.all(jnp.isfinite(embeddings), axis=1, keepdims=True))
    else:
        check_finite(embeddings, "embeddings")
    ok = all_ok(ok, finite_ok(centers, "centers"))
    return embeddings, centers, labels, ok


def _jitted(name: str, head, params: dict):
    """``head`` with ``params`` bound, jitted and cached when the parameters are plain
    Python numbers (one compilation per head and setting); else called as it is."""
    if all(isinstance(v, (bool, int, float, type(None))) for v in params.values()):
        return _cached_jit(name, head, tuple(sorted(params.items())))
    return functools.partial(head, **params)


@functools.lru_cache(maxsize=256)
def _cached_jit(name: str, head, items: tuple):
    del name
    return jax.jit(functools.partial(head, **dict(items)))


def margin_logits(name: str, embeddings: jax.Array, centers: jax.Array, labels: jax.Array,
                  **params) -> jax.Array:
    """Logits of the margin head ``name`` (a :data:`MARGINS` entry), checked.

    Args:
      name: ``softmax``, ``normface``, ``sphereface``, ``cosface``, ``arcface``,
        ``combined`` or any registered head.
      embeddings: ``[B, D]`` features.
      centers: ``[C, D]`` class centres (the classifier's weight rows).
      labels: ``[B]`` integer classes in ``[0, C)``.
      **params: the head's parameters (``s``, ``m``, ``m1``, ``m2``, ``m3``,
        ``easy_margin``, ``step``, ...); insightface's defaults when omitted.

    Returns:
      ``[B, C]`` logits. Traced bad values give NaN rows (module docstring).

    Example:
      >>> x, w = jnp.array([[1., 0.]]), jnp.array([[1., 0.], [0., 1.]])
      >>> margin_logits("cosface", x, w, jnp.array([0])).tolist()   # 64·(1 − 0.35), 64·0
      [[41.599998474121094, 0.0]]

    Paper: Deng et al. 2019, "ArcFace" (section 2 compares the heads).
    """
    head = MARGINS.get(name)
    embeddings, centers, labels, ok = check_margin_inputs(embeddings, centers, labels)
    logits = _jitted(name, head, params)(embeddings, centers, labels)
    return logits if ok is True else poison(logits, ok)


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy ``mean_i [logsumexp(z_i) − z_{i, y_i}]`` (optax's)."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def margin_loss(name: str, embeddings: jax.Array, centers: jax.Array, labels: jax.Array,
                **params) -> jax.Array:
    """Mean softmax cross-entropy of :func:`margin_logits` — the training loss.

    Args: as :func:`margin_logits`.

    Returns:
      A scalar (NaN when a traced input is bad).

    Example:
      >>> x = jax.random.normal(jax.random.key(0), (8, 16))
      >>> w = jax.random.normal(jax.random.key(1), (10, 16))
      >>> y = jnp.arange(8)
      >>> bool(margin_loss("arcface", x, w, y) > margin_loss("normface", x, w, y))
      True
    """
    logits = margin_logits(name, embeddings, centers, labels, **params)
    return softmax_cross_entropy(logits, jnp.clip(labels, 0, logits.shape[1] - 1))

