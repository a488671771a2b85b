"""The ``SCORE_NETS`` registry and :func:`build_score_net`."""

from __future__ import annotations

import jax
from flax import nnx

from common.registry import Registry

SCORE_NETS: Registry[type] = Registry("score net")


def build_score_net(name: str, **kwargs):
    """Instantiate the score network registered as ``name`` (``"mlp"``, ``"unet"``).

    Args:
      name: registry name.
      **kwargs: constructor arguments, including ``rngs``.

    Returns:
      The ``flax.nnx`` module.
    """
    return SCORE_NETS.get(name)(**kwargs)


def init_score_net(name: str, key: jax.Array, **kwargs):
    """Build a registered score network with all initialisers in one jitted program.

    Eager construction compiles one small XLA program per parameter shape (dozens for
    a U-Net); here the initialisers run as one jitted program, compiled without the
    backend's optimisation passes (it runs once; the unrolled threefry hashes of the
    per-parameter keys make optimised CPU compilation several times slower). Same
    ``key``, same model.

    Args:
      name: registry name.
      key: PRNG key for the ``params`` (and default) streams.
      **kwargs: constructor arguments other than ``rngs``.

    Returns:
      The ``flax.nnx`` module.

    Example:
        >>> net = init_score_net("unet", jax.random.key(0), image_size=8, channel_mult=(1, 2))
    """
    cls = SCORE_NETS.get(name)
    build = lambda k: cls(**kwargs, rngs=nnx.Rngs(k))
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: build(key)))
    lowered = jax.jit(lambda k: nnx.split(build(k))[1]).lower(key)
    state = lowered.compile(compiler_options={"xla_backend_optimization_level": 0})(key)
    return nnx.merge(graphdef, state)
