"""Mixed precision: one switch (``--set precision=bf16``) for parameters, compute and
outputs.

A :class:`Policy` names three dtypes, in the sense of mixed-precision training
(Micikevicius et al. 2018, "Mixed Precision Training"; the ``jmp`` convention):

* ``param_dtype``: how parameters (and hence optimizer moments) are stored and
  updated: float32 in every policy here, so small updates are not rounded away;
* ``compute_dtype``: what matmuls, convolutions and activations run in; layers get
  it as flax's ``dtype`` argument (``nnx.Linear(..., dtype=...)``, and the
  ``dtype`` fields of ``common.nn`` configs), which casts inputs and parameters on
  the way into each operation, so gradients arrive in ``param_dtype``;
* ``output_dtype``: what a model's outputs are cast to before the loss (float32),
  with :meth:`Policy.cast_output`.

What stays in float32 under ``bf16`` by construction: attention logits and softmax
(``common.nn.attention`` promotes them to at least float32), MoE routers
(``common.nn.moe`` runs the router in float32), LayerNorm / RMSNorm / GroupNorm /
BatchNorm statistics (flax reduces them in float32), losses and their reductions
(computed on :meth:`Policy.cast_output` outputs), gradients, optimizer state and
every metric.

``fp16`` is not offered: float16's 5-bit exponent needs dynamic loss scaling, which
bfloat16 (float32's exponent range) does not.

Example:
    >>> policy = get_policy("bf16")
    >>> mlp = MLP([64, 256, 10], dtype=policy.compute_dtype, rngs=nnx.Rngs(0))
    >>> logits = policy.cast_output(mlp(x))        # float32 for the loss
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from common.registry import Registry

__all__ = ["PRECISIONS", "Policy", "get_policy"]


@dataclasses.dataclass(frozen=True)
class Policy:
    """Dtypes of parameters, computation and outputs (see the module docstring)."""

    name: str
    param_dtype: Any
    compute_dtype: Any
    output_dtype: Any

    @property
    def layer_dtype(self):
        """The ``dtype`` argument for flax layers: None (from inputs and parameters) when
        computing in the parameter dtype, else the compute dtype."""
        return None if self.compute_dtype == self.param_dtype else self.compute_dtype

    def cast_output(self, tree):
        """Floating leaves of ``tree`` cast to ``output_dtype`` (others unchanged)."""
        return _cast(tree, self.output_dtype)

    def cast_to_compute(self, tree):
        """Floating leaves of ``tree`` cast to ``compute_dtype`` (e.g. images entering a
        model whose first operation is not a flax layer)."""
        return _cast(tree, self.compute_dtype)


def _cast(tree, dtype):
    def cast(x):
        if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != dtype:
            return jnp.asarray(x).astype(dtype)
        return x

    return jax.tree.map(cast, tree)


PRECISIONS: Registry[Policy] = Registry("precision")
PRECISIONS.add("fp32", Policy("fp32", jnp.float32, jnp.float32, jnp.float32))
PRECISIONS.add("bf16", Policy("bf16", jnp.float32, jnp.bfloat16, jnp.float32))


def get_policy(name: str) -> Policy:
    """The policy called ``name`` (``"fp32"`` or ``"bf16"``).

    Raises:
      ValueError: for an unknown name, listing the valid ones (as ``precision``).
    """
    if not isinstance(name, str) or name not in PRECISIONS.names():
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS.names())}, "
                         f"got {name!r}")
    return PRECISIONS.get(name)
