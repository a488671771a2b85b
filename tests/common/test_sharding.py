"""On 8 simulated CPU devices: the sharded train step equals the single-device step,
and parameters keep the sharding asked for."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from common.distributed import initialize_distributed
from common.nn import MLP
from common.optim import build_optimizer
from common.sharding import (
    batch_sharding,
    make_mesh,
    param_shardings,
    replicated,
    shard_batch,
    shard_pytree,
    state_shardings,
)
from common.train import TrainState, make_train_chunk, make_train_step, train_step_fn
from tests.tolerances import F32_LOOSE, assert_close


def _setup():
    model = MLP([8, 32, 4], activation="relu", rngs=nnx.Rngs(0))
    tx = build_optimizer(name="adamw", learning_rate=1e-2, weight_decay=0.01)
    state = TrainState.create(model, tx, jax.random.key(1))

    def loss_fn(params, rest, batch, key):
        pred = nnx.merge(state.graphdef, params, rest)(batch["x"])
        return jnp.mean((pred - batch["y"]) ** 2), {}

    x = jax.random.normal(jax.random.key(2), (64, 8))
    batch = {"x": x, "y": jnp.tanh(x[:, :4])}
    return state, tx, loss_fn, batch


def test_eight_devices_are_simulated():
    assert jax.device_count() == 8


def test_mesh_shapes_and_errors():
    mesh = make_mesh()
    assert dict(mesh.shape) == {"data": 8, "model": 1}
    assert dict(make_mesh(model=2).shape) == {"data": 4, "model": 2}
    with pytest.raises(ValueError, match="model=3"):
        make_mesh(model=3)
    with pytest.raises(ValueError, match="exceeds"):
        make_mesh(data=8, model=2)


def test_batch_must_divide_the_data_axis():
    mesh = make_mesh()
    with pytest.raises(ValueError, match=r"batch leaf \['x'\] has leading dimension 12, "
                                         "not divisible by the data axis size 8"):
        shard_batch({"x": np.zeros((12, 3))}, mesh)
    with pytest.raises(ValueError, match="scalar"):
        shard_batch({"x": np.zeros(())}, mesh)
    placed = shard_batch({"x": np.zeros((16, 3))}, mesh)
    assert placed["x"].sharding.is_equivalent_to(batch_sharding(mesh, 2), 2)
    assert placed["x"].addressable_shards[0].data.shape == (2, 3)


def _assert_states_close(a, b):
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        assert_close(x, y, F32_LOOSE)


def test_data_parallel_step_equals_single_device_step():
    state, tx, loss_fn, batch = _setup()
    single, m1 = make_train_step(loss_fn, tx, donate=False)(state, batch)
    mesh = make_mesh()
    shardings = state_shardings(state, mesh)
    step = make_train_step(loss_fn, tx, donate=False, state_shardings=shardings)
    sharded, m8 = step(shard_pytree(state, mesh), shard_batch(batch, mesh))
    _assert_states_close(sharded, single)
    assert_close(m8["loss"], m1["loss"])
    for leaf in jax.tree.leaves(sharded.params):
        assert leaf.sharding.is_equivalent_to(replicated(mesh), leaf.ndim)


def test_model_parallel_rule_is_kept_through_steps():
    """Hidden layer split along "model" (kernel columns) with data parallelism on the rest."""
    state, tx, loss_fn, batch = _setup()
    mesh = make_mesh(model=2)
    rules = [(r"layers/0/kernel$", P(None, "model")), (r"layers/0/bias$", P("model"))]
    shardings = state_shardings(state, mesh, rules)
    reference = state
    ref_step = make_train_step(loss_fn, tx, donate=False)
    for _ in range(3):
        reference, _ = ref_step(reference, batch)
    # device_put may alias the single-device buffers, which the donating step then frees:
    # the reference is computed first.
    step = make_train_step(loss_fn, tx, donate=True, state_shardings=shardings)
    sharded = shard_pytree(state, mesh, rules)
    for _ in range(3):
        sharded, _ = step(sharded, shard_batch(batch, mesh))
    _assert_states_close(sharded, reference)
    kernel = sharded.params["layers"][0]["kernel"][...]
    assert kernel.sharding.is_equivalent_to(jax.sharding.NamedSharding(mesh, P(None, "model")), 2)
    assert kernel.addressable_shards[0].data.shape == (8, 16)
    # Adam's moments of the kernel follow the kernel's layout.
    mu = sharded.opt_state[0].mu["layers"][0]["kernel"][...]
    assert mu.sharding.is_equivalent_to(kernel.sharding, 2)


def test_sharded_scanned_chunk_equals_single_device():
    state, tx, loss_fn, batch = _setup()
    batch_fn = lambda data, key: data  # full batch every step
    chunk = make_train_chunk(train_step_fn(loss_fn, tx), batch_fn, 4, donate=False)
    single, _ = chunk(state, batch)
    mesh = make_mesh()
    sharded_chunk = make_train_chunk(train_step_fn(loss_fn, tx), batch_fn, 4, donate=False,
                                     state_shardings=state_shardings(state, mesh))
    sharded, _ = sharded_chunk(shard_pytree(state, mesh), shard_batch(batch, mesh))
    _assert_states_close(sharded, single)


def test_rule_errors_name_the_parameter():
    state, _, _, _ = _setup()
    mesh = make_mesh(model=2)
    with pytest.raises(ValueError, match="too many axes"):
        param_shardings(state.params, mesh, [(r"layers/0/bias$", P(None, "model"))])
    with pytest.raises(ValueError, match=r"layers/1/bias dimension 4 is not divisible"):
        param_shardings(state.params, make_mesh(model=8), [(r"layers/1/bias$", P("model"))])


def test_initialize_distributed_is_a_no_op_on_one_host(monkeypatch):
    for var in ("JAXATLAS_COORDINATOR", "JAXATLAS_NUM_PROCESSES", "SLURM_JOB_ID",
                "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    assert initialize_distributed() is False
