"""Training and evaluating score networks: the pieces every generative recipe shares.

* :func:`train_score_net` — ``common.train.fit`` with the shared optimizer builder,
  scanned chunks, checkpoints/resume, and the exponential moving average of the
  parameters that score models are evaluated with (``TrainState.ema``, checkpointed
  with the state; Song & Ermon 2020, "Improved Techniques for Training Score-Based
  Generative Models", §3.4).
* :func:`sde_loss_factory` — the continuous SDE loss of a noise-prediction network as a
  ``common.train`` loss ``loss_fn(params, rest, batch, key)``.
* ``pc_sample`` / ``ode_sample`` / ``batched_log_likelihood`` — jitted wrappers that take
  the parameters as arguments and the architecture (``graphdef``) and SDE as static
  arguments, so one compilation serves every model of the same shape and SDE.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from common.checks import check_fields
from common.optim import OptimConfig, build_optimizer
from common.recipe import default_total_steps
from common.train import TrainState, fit, train_step_fn
from generative.likelihood import log_likelihood
from generative.losses import sde_loss
from generative.sampling import ode_sampler, pc_sampler
from generative.sde import make_score_fn


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How a score network is trained; ``optim.total_steps`` defaults to ``steps``."""

    steps: int = 2000
    batch_size: int = 256
    chunk_size: int = 250
    checkpoint_every: int = 1000
    ema_decay: float = 0.99
    optim: OptimConfig = OptimConfig(name="adam", learning_rate=2e-3, schedule="cosine",
                                     warmup_steps=100, end_factor=0.05, clip_norm=1.0)

    def validate(self) -> None:
        check_fields(self, positive_ints=("steps", "batch_size", "chunk_size",
                                          "checkpoint_every"), fractions=("ema_decay",))


def net_apply(graphdef, params, rest, x, t, *, deterministic=True, rngs=None):
    """Evaluate the nnx network ``graphdef`` with ``params`` and non-trainable ``rest``."""
    return nnx.merge(graphdef, params, rest)(x, t, deterministic=deterministic, rngs=rngs)


def score_fn_of(graphdef, params, rest, sde, data_std=None):
    """``score(x, t) = −ε̂(c(t) x, t) / std(t)`` of a noise-prediction network."""
    return make_score_fn(sde, lambda x, t: net_apply(graphdef, params, rest, x, t),
                         data_std=data_std)


def train_score_net(model, loss_factory, cfg: TrainConfig, *, key, data, batch_fn,
                    logger=None, checkpointer=None, progress=False, desc="train",
                    history=None) -> TrainState:
    """Train ``model`` with ``loss_factory(graphdef) -> loss_fn(params, rest, batch, key)``.

    Returns the final ``TrainState``; ``state.ema`` holds the EMA parameters (equal to
    ``state.params`` when ``cfg.ema_decay == 0``) and ``state.rest`` the network's
    non-trainable state.
    """
    tx = build_optimizer(default_total_steps(cfg.optim, cfg.steps))
    state = TrainState.create(model, tx, key, ema=True)
    step = train_step_fn(loss_factory(state.graphdef), tx, ema_decay=cfg.ema_decay)
    return fit(state, step, batch_fn, data, num_steps=cfg.steps, chunk_size=cfg.chunk_size,
               logger=logger, checkpointer=checkpointer, checkpoint_every=cfg.checkpoint_every,
               progress=progress, desc=desc, history=history)


def sde_loss_factory(sde, *, reduce_mean=True, likelihood_weighting=False, eps=1e-5,
                     data_std=None):
    """``factory(graphdef) -> loss_fn(params, rest, batch, key)``: the continuous SDE loss
    of a noise-prediction network on batches ``{"x": [B, ...]}``."""

    def factory(graphdef):
        def loss_fn(params, rest, batch, key):
            drop_key, loss_key = jax.random.split(key)
            eps_fn = lambda x, t: net_apply(graphdef, params, rest, x, t, deterministic=False,
                                            rngs=nnx.Rngs(dropout=drop_key))
            score_fn = make_score_fn(sde, eps_fn, data_std=data_std)
            loss = sde_loss(score_fn, sde, batch["x"], loss_key, eps=eps,
                            reduce_mean=reduce_mean,
                            likelihood_weighting=likelihood_weighting)
            return loss, {}

        return loss_fn

    return factory


@functools.partial(jax.jit, static_argnames=("graphdef", "sde", "shape", "predictor",
                                             "corrector", "snr", "n_steps", "data_std"))
def pc_sample(key, params, rest, *, graphdef, sde, shape, predictor="reverse_diffusion",
              corrector="langevin", snr=0.16, n_steps=1, data_std=None):
    """Jitted :func:`~generative.sampling.pc_sampler` of a noise-prediction network."""
    return pc_sampler(key, score_fn_of(graphdef, params, rest, sde, data_std), sde, shape,
                      predictor=predictor, corrector=corrector, snr=snr, n_steps=n_steps)


@functools.partial(jax.jit, static_argnames=("graphdef", "sde", "shape", "rtol", "atol",
                                             "data_std"))
def ode_sample(key, params, rest, *, graphdef, sde, shape, rtol=1e-5, atol=1e-5,
               data_std=None):
    """Jitted :func:`~generative.sampling.ode_sampler` of a noise-prediction network."""
    return ode_sampler(key, score_fn_of(graphdef, params, rest, sde, data_std), sde, shape,
                       rtol=rtol, atol=atol)


@functools.partial(jax.jit, static_argnames=("graphdef", "sde", "divergence", "rtol", "atol",
                                             "data_std"))
def _likelihood(key, params, rest, x, *, graphdef, sde, divergence, rtol, atol, data_std):
    score_fn = score_fn_of(graphdef, params, rest, sde, data_std)
    logp, _, nfe = log_likelihood(key, score_fn, sde, x, divergence=divergence, rtol=rtol,
                                  atol=atol)
    return logp, nfe


def batched_log_likelihood(key, params, rest, x, *, graphdef, sde, batch_size,
                           divergence="exact", rtol=1e-5, atol=1e-5, data_std=None):
    """``log p(x)`` for ``x [N, ...]`` in batches of ``batch_size`` (last one padded).

    Returns ``(logp [N] numpy, mean NFE per batch)``.
    """
    n = x.shape[0]
    batches = math.ceil(n / batch_size)
    xp = x[jnp.arange(batches * batch_size) % n]  # pad by wrapping around
    out, nfes = [], []
    for i in range(batches):
        logp, nfe = _likelihood(jax.random.fold_in(key, i), params, rest,
                                xp[i * batch_size:(i + 1) * batch_size], graphdef=graphdef,
                                sde=sde, divergence=divergence, rtol=rtol, atol=atol,
                                data_std=data_std)
        out.append(np.asarray(logp))
        nfes.append(int(nfe))
    return np.concatenate(out)[:n], float(np.mean(nfes))
