"""Work run the same way in one process (the test, 8 devices) and in each process of
a ``launch`` (2 × 4 devices): a DETR train step with in-jit matching and DDPG with its
seeds split across the devices. ``python -m tests.common.multiprocess_worker WHAT OUT``
writes the result (from process 0) to ``OUT.npz``."""

from __future__ import annotations

import sys

import numpy as np


def detr_steps(num_steps: int = 2) -> dict[str, np.ndarray]:
    """``num_steps`` DETR train steps (detr-shapes' model, batch 16 split along ``data``)."""
    import dataclasses

    import jax
    from flax import nnx

    from common.distributed import global_array, global_batch, process_rows, to_host
    from common.optim import build_optimizer
    from common.sharding import make_mesh, state_shardings
    from common.train import TrainState, train_step_fn
    from vision.detr import DETR
    from vision.recipes.detr_shapes import DetrShapesConfig, make_batch_fn, make_loss_fn
    from vision.shapes import generate_shapes

    cfg = dataclasses.replace(DetrShapesConfig(), batch_size=16)
    mesh = make_mesh()
    data = {k: jax.numpy.asarray(v) for k, v in generate_shapes(32, seed=0).as_arrays().items()}
    batch = jax.device_get(jax.jit(make_batch_fn(cfg))(data, jax.random.key(1)))
    rows = process_rows(cfg.batch_size, mesh)
    batch = global_batch(jax.tree.map(lambda x: x[rows], batch), mesh)
    tx = build_optimizer(dataclasses.replace(cfg.optim, total_steps=cfg.steps))
    state = TrainState.create(DETR(cfg.model, rngs=nnx.Rngs(0)), tx, jax.random.key(0))
    state = global_array(state, state_shardings(state, mesh))
    step = jax.jit(train_step_fn(make_loss_fn(state.graphdef, cfg.criterion), tx,
                                 updates_rest=True))
    losses = []
    for _ in range(num_steps):
        state, metrics = step(state, batch)
        losses.append(float(to_host(metrics["loss"])))
    params = to_host(jax.tree.leaves(state.params))
    return {"loss": np.asarray(losses), **{f"param{i}": p for i, p in enumerate(params)}}


def ddpg_seeds() -> dict[str, np.ndarray]:
    """Eight DDPG seeds (a tiny Pendulum run), split across the devices of the mesh."""
    import jax

    from common.distributed import to_host
    from common.sharding import make_mesh
    from rl.ddpg import ddpg_config, train_seeds
    from rl.envs.gymnax_env import make_env

    config = ddpg_config(total_steps=100, eval_every=50, learning_starts=32, batch_size=16,
                         buffer_size=256, actor_hidden=(16,), critic_hidden=(16,),
                         eval_episodes=2)
    result = train_seeds(config, list(range(8)), periods_per_chunk=1, mesh=make_mesh(),
                         env=make_env("Pendulum-v1", max_steps_in_episode=50))
    params = to_host(jax.tree.leaves(result.state.learner.actor))
    return {"eval_return": result.final_eval_returns,
            **{f"actor{i}": p for i, p in enumerate(params)}}


WORK = {"detr": detr_steps, "ddpg": ddpg_seeds}


def main(argv: list[str]) -> int:
    from common.distributed import initialize_distributed, is_primary

    what, out = argv
    initialize_distributed()
    result = WORK[what]()
    if is_primary():
        np.savez(out, **result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
