"""Multi-process runs on one machine, as on a cluster: ``jaxatlas launch`` starts
2 processes × 4 simulated CPU devices joined by ``jax.distributed`` (gloo
collectives); the same recipe in this test process runs on 8 devices of one process.
Both use the same 8-device mesh, so they must agree step by step, and checkpoints
move between process counts."""

import json
import shutil
import stat
from pathlib import Path

import jax
import numpy as np
import pytest

import common.recipes  # noqa: F401  (registers digits-mlp)
from common.checkpoint import Checkpointer
from common.launch import launch, process_env
from common.metrics import MemoryWriter, read_metrics
from common.recipe import run_recipe

DIGITS = {"steps": "40", "chunk_size": "20", "eval_every": "20", "checkpoint_every": "20",
          "hidden": "[32]", "optim.warmup_steps": "10"}


def _launch_run(runs: Path, overrides: dict[str, str], *, fresh: bool = True) -> int:
    args = ["run", "digits-mlp", "--runs", str(runs), "--no-progress"]
    args += [item for k, v in overrides.items() for item in ("--set", f"{k}={v}")]
    return launch(args + (["--fresh"] if fresh else []), processes=2, devices_per_process=4,
                  timeout=240)


def _only_run(root: Path) -> Path:
    (run_dir,) = [p for p in (root / "digits-mlp").iterdir() if p.is_dir()]
    return run_dir


def _restored(run_dir: Path, step: int, target):
    with Checkpointer(run_dir / "checkpoints") as ckpt:
        return ckpt.restore(target, step)


def _digits_target():
    """The digits-mlp state on this process's 8 devices, as the recipe builds it."""
    from common.distributed import global_array
    from common.optim import build_optimizer
    from common.recipe import apply_overrides, default_total_steps
    from common.recipes.digits_mlp import DigitsConfig, make_model
    from common.sharding import make_mesh, state_shardings
    from common.train import TrainState

    cfg = apply_overrides(DigitsConfig(), DIGITS)
    init_key, train_key = jax.random.split(jax.random.key(cfg.seed))
    tx = build_optimizer(default_total_steps(cfg.optim, cfg.steps))
    state = TrainState.create(make_model(cfg, init_key), tx, train_key)
    return global_array(state, state_shardings(state, make_mesh()))


def _losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """digits-mlp (40 steps) as 2 processes × 4 devices and as 1 process × 8 devices."""
    assert jax.device_count() == 8
    multi, single = tmp_path_factory.mktemp("multi"), tmp_path_factory.mktemp("single")
    assert _launch_run(multi, DIGITS) == 0
    single_dir, _ = run_recipe("digits-mlp", overrides=DIGITS, runs_root=single,
                               progress=False)
    return _only_run(multi), single_dir


def test_two_processes_train_as_one_process_with_eight_devices(two_runs):
    multi_dir, single_dir = two_runs
    # only process 0 wrote files: one metrics file, one summary, the figures once
    summary = json.loads((multi_dir / "summary.json").read_text())
    assert summary["steps"] == 40
    assert summary["figures"] == ["learning_curve.png", "confusion_matrix.png"]
    assert sorted(p.name for p in multi_dir.iterdir()) == sorted(
        p.name for p in single_dir.iterdir())
    # the same 8-device program: every logged loss agrees (gloo's all-reduce may sum in
    # another order than the in-process one, so to float32 rounding, not bitwise)
    a, b = _losses(multi_dir), _losses(single_dir)
    assert sorted(a) == sorted(b) == list(range(1, 41))
    np.testing.assert_allclose([a[s] for s in sorted(a)], [b[s] for s in sorted(b)],
                               rtol=1e-5, atol=1e-6)
    # a checkpoint written by 2 processes restores in 1 and equals the 1-process one
    target = _digits_target()
    from_multi = _restored(multi_dir, 40, target)
    from_single = _restored(single_dir, 40, target)
    assert int(from_multi.step) == 40
    for x, y in zip(jax.tree.leaves(from_multi.params), jax.tree.leaves(from_single.params),
                    strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_one_process_checkpoint_resumes_in_two_processes(two_runs, tmp_path):
    """Cut the 1-process run back to its step-20 checkpoint; 2 processes resume it and
    end where the uninterrupted run ended."""
    _, single_dir = two_runs
    root = tmp_path / "runs"
    run_dir = root / "digits-mlp" / single_dir.name
    shutil.copytree(single_dir, run_dir)
    (run_dir / "summary.json").unlink()
    shutil.rmtree(run_dir / "checkpoints" / "40")
    assert _launch_run(root, DIGITS, fresh=False) == 0
    assert json.loads((run_dir / "summary.json").read_text())["resumed"] is True
    target = _digits_target()
    resumed, straight = _restored(run_dir, 40, target), _restored(single_dir, 40, target)
    for x, y in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(straight.params),
                    strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


def _fake_python(tmp_path: Path, body: str) -> str:
    """An executable standing in for the interpreter: runs ``body`` (sh) per rank."""
    path = tmp_path / "fake-python"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_launch_stops_everyone_when_one_rank_fails_and_names_it(tmp_path, capfd):
    # rank 1 fails at once; rank 0 would run for a minute: it must be stopped
    python = _fake_python(tmp_path, 'if [ "$JAXATLAS_PROCESS_ID" = 1 ]; then exit 3; fi\n'
                                    "sleep 60")
    code = launch(["run", "x"], processes=2, devices_per_process=4, python=python,
                  timeout=30)
    assert code == 3
    assert "rank 1 of 2 failed with exit code 3" in capfd.readouterr().err


def test_launch_passes_rank_count_coordinator_and_devices(tmp_path):
    out = tmp_path / "env"
    python = _fake_python(tmp_path, f'echo "$JAXATLAS_PROCESS_ID $JAXATLAS_NUM_PROCESSES '
                                    f'$JAXATLAS_COORDINATOR $XLA_FLAGS $*" >> {out}')
    assert launch(["run", "digits-mlp"], processes=3, devices_per_process=2, python=python,
                  port=12999) == 0
    lines = sorted(out.read_text().splitlines())
    assert [line.split()[0] for line in lines] == ["0", "1", "2"]
    for line in lines:
        assert " 3 127.0.0.1:12999 " in line
        assert "--xla_force_host_platform_device_count=2" in line
        assert line.endswith("-m common.cli run digits-mlp")
    env = process_env(1, 2, 4, 1234, base={"XLA_FLAGS": "--xla_foo=1 "
                                           "--xla_force_host_platform_device_count=8"})
    assert env["XLA_FLAGS"] == "--xla_foo=1 --xla_force_host_platform_device_count=4"
    assert env["JAXATLAS_CPU_COLLECTIVES"] == "gloo"


def test_launch_refuses_bad_arguments():
    with pytest.raises(ValueError, match="processes"):
        launch(["run", "x"], processes=0)
    with pytest.raises(ValueError, match="devices_per_process"):
        launch(["run", "x"], devices_per_process=0)
    with pytest.raises(ValueError, match="command"):
        launch([])


def test_memory_writer_keeps_and_truncates_rows_like_the_file_writer():
    log = MemoryWriter()
    for step in (10, 20, 30):
        log.write(step, {"loss": step / 10})
    log.write(20, {"eval/acc": 0.5})
    assert log.truncate(20, eval_at_step=True) == 2
    assert log.rows == [{"step": 10, "loss": 1.0}, {"step": 20, "loss": 2.0}]


def test_process_helpers_on_one_process():
    from common.distributed import (
        broadcast_text,
        global_array,
        global_batch,
        is_primary,
        process_rows,
        to_host,
    )
    from common.sharding import make_mesh

    mesh = make_mesh()
    assert is_primary() and broadcast_text("run/a") == "run/a"
    assert process_rows(16, mesh) == slice(0, 16)
    with pytest.raises(ValueError, match="num_rows"):
        process_rows(12, mesh)
    x = np.arange(32.0).reshape(16, 2)
    xs = global_batch(x, mesh)
    assert xs.sharding.spec[0] == "data"
    np.testing.assert_array_equal(to_host(xs), x)
    key = global_array(jax.random.key(3), mesh)
    np.testing.assert_array_equal(jax.random.key_data(key), jax.random.key_data(
        jax.random.key(3)))


def _launched(what: str, tmp_path: Path) -> dict[str, np.ndarray]:
    out = tmp_path / f"{what}.npz"
    assert launch([what, str(out)], processes=2, devices_per_process=4,
                  module="tests.common.multiprocess_worker", timeout=300) == 0
    with np.load(out) as data:
        return dict(data)


@pytest.mark.slow
@pytest.mark.parametrize("what", ["detr", "ddpg"])
def test_detr_step_and_ddpg_seeds_in_two_processes_equal_one_process(what, tmp_path):
    """DETR: two train steps with in-jit Hungarian matching, batch split over 2 × 4
    devices; DDPG: eight seeds, one per device, four per process. Equal to the same
    work on one process's 8 devices up to the all-reduce order."""
    from tests.common import multiprocess_worker

    multi = _launched(what, tmp_path)
    single = multiprocess_worker.WORK[what]()
    assert sorted(multi) == sorted(single)
    for name in single:
        np.testing.assert_allclose(multi[name], single[name], rtol=2e-5, atol=2e-6,
                                   err_msg=name)


def test_recipes_not_ready_for_several_processes_refuse_before_writing(tmp_path,
                                                                       monkeypatch):
    import common.recipe as recipe_module
    from common.recipe import RECIPES, ConfigError

    monkeypatch.setattr(recipe_module.jax, "process_count", lambda: 2)
    not_ready = [n for n, r in RECIPES.items() if not r.multi_process]
    assert "digits-mlp" not in not_ready and not_ready
    with pytest.raises(ConfigError, match=f"{not_ready[0]!r} does not run as several "
                                          "processes yet .*digits-mlp"):
        run_recipe(not_ready[0], runs_root=tmp_path, progress=False)
    assert not any(tmp_path.iterdir())
