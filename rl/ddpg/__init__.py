"""DDPG with TD3 options, trained on the device and vmapped over seeds.

* ``rl.ddpg.losses``: TD target, critic/actor losses, target smoothing, soft updates.
* ``rl.ddpg.noise``: exploration noise processes (``NOISES``: gaussian, ou).
* ``rl.ddpg.networks``: ``Actor`` (tanh-scaled to the bounds) and ``Critic``.
* ``rl.ddpg.agent``: ``DDPGConfig``, ``make_train(config) -> train(key)``,
  ``train_seeds`` (vmapped seeds, sharding, checkpoints through ``common.train.fit``),
  ``PRESETS`` (the ``ddpg`` and ``td3`` configurations).
"""

from rl.ddpg.agent import (
    ERROR_BITS,
    PRESETS,
    DDPGAgent,
    DDPGConfig,
    DDPGState,
    Learner,
    TrainResult,
    ddpg_config,
    make_agent,
    make_chunk_fn,
    make_train,
    raise_on_error,
    seed_keys,
    seed_rows,
    td3_config,
    train_seeds,
)
from rl.ddpg.losses import (
    critic_loss,
    dpg_actor_loss,
    scale_action,
    smoothed_target_action,
    soft_update,
    td_target,
)
from rl.ddpg.networks import Actor, Critic
from rl.ddpg.noise import NOISES, NoiseProcess, gaussian_noise, ou_noise

__all__ = [
    "ERROR_BITS",
    "NOISES",
    "PRESETS",
    "Actor",
    "Critic",
    "DDPGAgent",
    "DDPGConfig",
    "DDPGState",
    "Learner",
    "NoiseProcess",
    "TrainResult",
    "critic_loss",
    "ddpg_config",
    "dpg_actor_loss",
    "gaussian_noise",
    "make_agent",
    "make_chunk_fn",
    "make_train",
    "ou_noise",
    "raise_on_error",
    "scale_action",
    "seed_keys",
    "seed_rows",
    "smoothed_target_action",
    "soft_update",
    "td3_config",
    "td_target",
    "train_seeds",
]
