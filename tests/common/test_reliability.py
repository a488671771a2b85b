"""No lost work, no silent wrong answer: resume finds its run, damaged checkpoints fall
back, metrics are not duplicated, Ctrl-C stops cleanly, bad configs are refused before
anything is written, and non-finite losses stop training."""

import dataclasses
import glob
import json
import os
import signal
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from common import cli
from common.checkpoint import Checkpointer, CheckpointMismatch, CheckpointUnreadable
from common.data import sample_batch
from common.metrics import MetricsWriter, read_metrics
from common.optim import OptimConfig, build_optimizer
from common.recipe import (
    RECIPES,
    PrefixedLogger,
    RunContext,
    register_recipe,
    run_recipe,
)
from common.sharding import make_mesh, param_shardings, shard_batch
from common.train import Interrupted, TrainState, fit, train_step_fn

# ----------------------------------------------------------------------------- a tiny run


def _linear_problem():
    x = jnp.linspace(-1.0, 1.0, 32)
    data = {"x": x, "y": 2.0 * x + 0.5}
    tx = optax.sgd(0.1)
    state = TrainState.create({"w": jnp.zeros(()), "b": jnp.zeros(())}, tx, jax.random.key(0))

    def loss_fn(params, rest, batch, key):
        return jnp.mean((params["w"] * batch["x"] + params["b"] - batch["y"]) ** 2), {}

    return state, train_step_fn(loss_fn, tx), (lambda d, k: d), data


@dataclasses.dataclass(frozen=True)
class _LineCfg:
    steps: int = 40
    fail_at: int = 0            # raise in the eval at this step (0: never) ...
    interrupt_at: int = 0       # ... or send ourselves SIGINT there (first attempt only)

    def validate(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")


@pytest.fixture
def line_recipe():
    """A recipe training through ``fit`` with checkpoints every 10 steps and an eval."""

    def run(ctx: RunContext, cfg: _LineCfg):
        state, step, batch_fn, data = _linear_problem()

        def eval_fn(state):
            at = int(state.step)
            if at == cfg.fail_at and not ctx.resumed:
                raise RuntimeError(f"failure at step {at}")
            if at == cfg.interrupt_at and not ctx.resumed:
                os.kill(os.getpid(), signal.SIGINT)   # Ctrl-C, delivered right now
            return {"w": float(state.params["w"])}

        state = fit(state, step, batch_fn, data, num_steps=cfg.steps, chunk_size=5,
                    logger=ctx.logger, checkpointer=ctx.checkpointer(), checkpoint_every=10,
                    eval_fn=eval_fn, eval_every=10, progress=False)
        rows = ctx.history()
        return {"w": float(state.params["w"]), "loss_rows": sum("loss" in m for _, m in rows)}

    register_recipe("test-line", "least squares", quick=_LineCfg(), full=_LineCfg())(run)
    yield
    RECIPES.unregister("test-line")


def _loss_steps(run_dir):
    return [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]


# ----------------------------------------------------------------------------- resume


def test_resume_finds_the_unfinished_run_whatever_ran_since(tmp_path, line_recipe, capsys):
    """Item 1: a failed run, then a run of another config, then a bad --set: the original
    command still resumes its own folder and says so."""
    with pytest.raises(RuntimeError, match="failure at step 30"):
        run_recipe("test-line", overrides={"fail_at": "30"}, runs_root=tmp_path,
                   progress=False)
    (first,) = (tmp_path / "test-line").iterdir()
    run_recipe("test-line", overrides={"steps": "20"}, runs_root=tmp_path, progress=False)
    assert cli.main(["run", "test-line", "--runs", str(tmp_path), "--set", "steps=0"]) == 2
    capsys.readouterr()
    run_dir, summary = run_recipe("test-line", overrides={"fail_at": "30"}, runs_root=tmp_path,
                                  progress=False)
    assert run_dir == first
    assert "resuming the unfinished run in" in capsys.readouterr().err
    assert json.loads((run_dir / "summary.json").read_text())["resumed"] is True
    # item 3: the rows after the last checkpoint (21..30) were written once only
    assert sorted(_loss_steps(run_dir)) == list(range(1, 41))
    assert summary["loss_rows"] == 40     # the figures and summary see the whole run


def test_ctrl_c_stops_at_a_chunk_boundary_and_the_cli_says_how_to_resume(tmp_path, line_recipe,
                                                                        capsys):
    """Item 4: SIGINT during the evaluation at step 20 → the step finishes (evaluation,
    checkpoint), exit code 130 with one line; the same command resumes and loses
    nothing, and the evaluation at 20 is logged once."""
    args = ["run", "test-line", "--runs", str(tmp_path), "--set", "interrupt_at=20"]
    assert cli.main(args) == 130
    err = capsys.readouterr().err
    (run_dir,) = (tmp_path / "test-line").iterdir()
    assert f"interrupted; saved step 20 in {run_dir}; run the same command to resume" in err
    assert "Traceback" not in err
    assert Checkpointer(run_dir / "checkpoints").latest_step() == 20
    assert cli.main(args) == 0
    steps = _loss_steps(run_dir)
    assert sorted(steps) == list(range(1, 41))
    evals = [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if "eval/w" in r]
    assert sorted(evals) == [10, 20, 30, 40]


def test_direct_interrupt_raises_interrupted_with_the_saved_step(tmp_path):
    state, step, batch_fn, data = _linear_problem()

    class Stop:
        """Ctrl-C arriving once, while step 13 is logged."""

        raised = False

        def write(self, at, metrics):
            if at == 13 and not self.raised:
                self.raised = True
                raise KeyboardInterrupt

    with Checkpointer(tmp_path / "ckpt") as ckpt:
        with pytest.raises(Interrupted) as stop:
            fit(state, step, batch_fn, data, num_steps=40, chunk_size=5, logger=Stop(),
                checkpointer=ckpt, checkpoint_every=10, progress=False)
        assert stop.value.saved_step == 15 and ckpt.latest_step() == 15


def test_metrics_truncation_is_per_stage(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=False) as log:
        for s in (1, 2, 3):
            log.write(s, {"sft/loss": 1.0})
            log.write(s, {"rm/loss": 2.0})
        log.write(2, {"rm/eval/acc": 0.5})
        assert PrefixedLogger(log, "rm/").truncate(1) == 3   # rm rows at 2, 3 and its eval
        assert log.truncate(2, eval_at_step=True) == 1        # sft/loss at 3
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["step"], sorted(k for k in r if k != "step")) for r in rows] == [
        (1, ["sft/loss"]), (1, ["rm/loss"]), (2, ["sft/loss"])]


# ----------------------------------------------------------------------------- checkpoints


def _two_checkpoints(path):
    with Checkpointer(path) as ckpt:
        ckpt.save(1, {"w": jnp.ones(3)})
        ckpt.save(2, {"w": 2.0 * jnp.ones(3)})


@pytest.mark.parametrize("damage", ["truncate_data", "delete_data", "delete_metadata"])
def test_a_damaged_latest_checkpoint_falls_back_with_a_warning(tmp_path, damage):
    """Item 2: the newest readable checkpoint is restored, the bad one named and moved
    aside so that its step can be written again."""
    _two_checkpoints(tmp_path)
    files = glob.glob(str(tmp_path / "2" / "default" / "d" / "*"))
    assert files
    if damage == "truncate_data":
        for f in files:
            with open(f, "r+b") as handle:
                handle.truncate(5)
    elif damage == "delete_data":
        for f in files:
            os.remove(f)
    else:
        os.remove(tmp_path / "2" / "default" / "_METADATA")
    with Checkpointer(tmp_path) as ckpt, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        restored = ckpt.restore_or({"w": jnp.zeros(3)})
        np.testing.assert_array_equal(restored["w"], np.ones(3))
        assert any("step 2" in str(w.message) and "moved aside" in str(w.message)
                   for w in caught)
        assert ckpt.all_steps() == [1]
        ckpt.save(2, {"w": 3.0 * jnp.ones(3)})       # the step can be written again
        ckpt.wait()
        assert ckpt.all_steps() == [1, 2]
    assert (tmp_path / "2.unreadable").is_dir()


def test_no_readable_checkpoint_and_a_changed_model_are_refused(tmp_path):
    _two_checkpoints(tmp_path)
    for step in ("1", "2"):
        os.remove(tmp_path / step / "default" / "_METADATA")
    with Checkpointer(tmp_path) as ckpt, pytest.raises(CheckpointUnreadable,
                                                       match="no checkpoint .* can be read"):
        ckpt.restore_or({"w": jnp.zeros(3)})
    _two_checkpoints(tmp_path / "other")
    with Checkpointer(tmp_path / "other") as ckpt, pytest.raises(CheckpointMismatch,
                                                                 match="has shape"):
        ckpt.restore_or({"w": jnp.zeros(4)})


# ----------------------------------------------------------------------------- bad config


@pytest.mark.parametrize(("override", "message"), [
    ("batch_size=0", "batch_size must be an integer >= 1, got 0"),
    ("hidden=", "hidden must list at least one size"),
    ("hidden=256.7", "expected integers, got 256.7"),
    ("steps=0", "steps must be an integer >= 1, got 0"),
    ("dropout=1.5", r"dropout must be a finite number in \[0, 1\), got 1.5"),
    ("optim.name=nosuch", "unknown optimizer 'nosuch'"),
    ("optim.learning_rate=inf", "learning_rate must be a finite number > 0, got inf"),
])
def test_bad_config_values_are_refused_before_anything_is_written(tmp_path, capsys, override,
                                                                  message):
    """Item 5: exit code 2, `jaxatlas run: error: ...`, no run folder."""
    assert cli.main(["run", "digits-mlp", "--runs", str(tmp_path), "--set", override]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxatlas run: error: ")
    assert __import__("re").search(message, err), err
    assert not any(tmp_path.iterdir())


def test_runs_pointing_at_a_file_is_refused(tmp_path, capsys):
    target = tmp_path / "a_file"
    target.write_text("not a folder")
    assert cli.main(["run", "digits-mlp", "--runs", str(target)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


@pytest.mark.parametrize(("field", "value", "message"), [
    ("end_factor", -0.5, "end_factor must be a finite number >= 0"),
    ("step_factor", -0.1, "step_factor must be a finite number > 0"),
    ("learning_rate", float("inf"), "learning_rate must be a finite number > 0"),
    ("group_lr", (("backbone", -1.0),), "group_lr multiplier of 'backbone'"),
])
def test_optimizer_values_that_reverse_the_update_are_refused(field, value, message):
    """Item 6."""
    with pytest.raises(ValueError, match=message):
        build_optimizer(OptimConfig(**{field: value}))


# ----------------------------------------------------------------------------- messages


def test_summary_json_is_strict_json(tmp_path):
    """Item 10: NaN and inf in a summary become null, not bare NaN."""
    @dataclasses.dataclass(frozen=True)
    class Nothing:
        pass

    register_recipe("test-nan", "nan summary", quick=Nothing(), full=Nothing())(
        lambda ctx, cfg: {"loss": float("nan"), "per_seed": [1.0, float("inf")],
                          "count": np.int64(3)})
    try:
        run_dir, _ = run_recipe("test-nan", runs_root=tmp_path, progress=False)
    finally:
        RECIPES.unregister("test-nan")
    saved = json.loads((run_dir / "summary.json").read_text(),
                       parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert saved["loss"] is None and saved["per_seed"] == [1.0, None] and saved["count"] == 3


def test_empty_batches_and_unknown_mesh_axes_are_named():
    """Item 10: no ZeroDivisionError or bare KeyError."""
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        sample_batch({"x": jnp.zeros((4, 2))}, jax.random.key(0), 0)
    with pytest.raises(ValueError, match="arrays are empty"):
        sample_batch({"x": jnp.zeros((0, 2))}, jax.random.key(0), 4)
    mesh = make_mesh()
    with pytest.raises(ValueError, match=r"batch leaf \['x'\] is empty"):
        shard_batch({"x": np.zeros((0, 2))}, mesh)
    with pytest.raises(ValueError, match="names mesh axis 'tensor', which the mesh does not"):
        param_shardings({"w": jnp.zeros((8, 8))}, mesh,
                        [("w", jax.sharding.PartitionSpec(None, "tensor"))])


def test_a_non_finite_loss_stops_training_before_it_is_saved(tmp_path):
    state, _, batch_fn, data = _linear_problem()

    def loss_fn(params, rest, batch, key):
        bad = jnp.where(params["w"] > 1.5, jnp.nan, 0.0)   # diverges once w passes 1.5
        return jnp.mean((params["w"] * batch["x"] - batch["y"]) ** 2) + bad, {}

    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(FloatingPointError, match=r"non-finite loss nan at step") as err:
            fit(state, train_step_fn(loss_fn, optax.sgd(0.1)), batch_fn, data, num_steps=50,
                chunk_size=5, checkpointer=ckpt, checkpoint_every=5, progress=False)
        failed_at = int(str(err.value).split("at step ")[1].split(";")[0])
        assert ckpt.all_steps() and max(ckpt.all_steps()) < failed_at
        restored = ckpt.restore_or(state)
    assert 0.0 < float(restored.params["w"]) <= 1.5
