"""Recipes, config overrides, the CLI, and a real interrupted-and-resumed run."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from common import cli
from common.optim import OptimConfig
from common.recipe import (
    RECIPES,
    ConfigError,
    RunContext,
    apply_overrides,
    parse_set_args,
    register_recipe,
    run_recipe,
)

REPO = Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class _Cfg:
    steps: int = 3
    rate: float = 0.5
    name: str = "x"
    flag: bool = False
    sizes: tuple[int, ...] = (4, 4)
    limit: float | None = None
    optim: OptimConfig = OptimConfig()


def test_overrides_parse_into_field_types():
    cfg = apply_overrides(_Cfg(), {"steps": "7", "rate": "1e-3", "name": "y", "flag": "true",
                                   "sizes": "8,16,32", "limit": "none",
                                   "optim.learning_rate": "0.01", "optim.name": "lion",
                                   "optim.group_lr": '[["backbone", 0.1]]',
                                   "optim.clip_norm": "1.5"})
    assert (cfg.steps, cfg.rate, cfg.name, cfg.flag) == (7, 1e-3, "y", True)
    assert cfg.sizes == (8, 16, 32) and cfg.limit is None
    assert cfg.optim.learning_rate == 0.01 and cfg.optim.name == "lion"
    assert cfg.optim.group_lr == (("backbone", 0.1),) and cfg.optim.clip_norm == 1.5
    assert apply_overrides(_Cfg(), {"limit": "2"}).limit == 2.0


@pytest.mark.parametrize("overrides, message", [
    ({"stepz": "1"}, "unknown config key 'stepz'; valid keys: .*optim.learning_rate.*steps"),
    ({"steps.x": "1"}, "has no sub-keys"),
    ({"steps": "many"}, "config key 'steps': cannot parse 'many'"),
    ({"flag": "maybe"}, "expected a boolean"),
])
def test_bad_overrides_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(_Cfg(), overrides)


def test_parse_set_args():
    assert parse_set_args(["a=1", "b.c=x=y"]) == {"a": "1", "b.c": "x=y"}
    with pytest.raises(ConfigError, match="key=value"):
        parse_set_args(["novalue"])


@pytest.fixture
def tiny_recipe():
    """A registered two-scale recipe that draws a figure and logs metrics."""
    calls = []

    @dataclasses.dataclass(frozen=True)
    class Tiny:
        steps: int = 2
        fail: bool = False

    def run(ctx: RunContext, cfg: Tiny):
        import matplotlib.pyplot as plt

        calls.append((ctx.resumed, cfg))
        if cfg.fail:
            raise RuntimeError("boom")
        for step in range(cfg.steps):
            ctx.logger.write(step, {"value": float(step)})
        fig, ax = plt.subplots()
        ax.plot([0, 1], [0, 1])
        ctx.save_figure(fig, "line")
        return {"steps": cfg.steps, "score": 0.5}

    register_recipe("test-tiny", "a tiny test recipe", quick=Tiny(), full=Tiny(steps=5))(run)
    yield calls
    RECIPES._entries.pop("test-tiny")


def test_run_writes_the_run_folder(tmp_path, tiny_recipe):
    run_dir, summary = run_recipe("test-tiny", scale="full", overrides={"steps": "4"},
                                  runs_root=tmp_path, progress=False)
    assert run_dir.parent == tmp_path / "test-tiny"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["config"]["steps"] == 4 and config["scale"] == "full"
    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved["score"] == 0.5 and saved["figures"] == ["line.png"] and not saved["resumed"]
    assert "| score | 0.5 |" in (run_dir / "summary.md").read_text()
    assert (run_dir / "line.png").stat().st_size > 1000
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 4
    assert summary == {"steps": 4, "score": 0.5}


def test_unfinished_run_is_resumed_in_its_folder(tmp_path, tiny_recipe):
    with pytest.raises(RuntimeError, match="boom"):
        run_recipe("test-tiny", overrides={"fail": "true"}, runs_root=tmp_path, progress=False)
    first = sorted((tmp_path / "test-tiny").iterdir())
    assert len(first) == 1 and not (first[0] / "summary.json").exists()
    # a different config starts a new folder; the same config resumes the unfinished one
    run_dir, _ = run_recipe("test-tiny", runs_root=tmp_path, progress=False)
    assert run_dir != first[0]
    assert [resumed for resumed, _ in tiny_recipe] == [False, False]


def test_cli_errors_name_the_problem_and_create_nothing(tmp_path, tiny_recipe, capsys):
    assert cli.main(["run", "test-tiny", "--runs", str(tmp_path), "--set", "stepz=3"]) == 2
    assert "unknown config key 'stepz'; valid keys: fail, steps" in capsys.readouterr().err
    assert cli.main(["run", "no-such-recipe", "--runs", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown recipe 'no-such-recipe'; valid names:" in err and "digits-mlp" in err
    assert cli.main(["bench", "no-such-bench", "--runs", str(tmp_path)]) == 2
    assert "unknown benchmark 'no-such-bench'" in capsys.readouterr().err
    assert not (tmp_path / "test-tiny").exists() and not (tmp_path / "bench").exists()


def test_cli_list_and_tour(tmp_path, tiny_recipe, capsys):
    assert cli.main(["list"]) == 0
    listing = capsys.readouterr().out
    assert "digits-mlp" in listing and "train-loop" in listing
    assert cli.main(["tour", "test-tiny", "--runs", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "[1/1] test-tiny (quick; 0.0 min so far)" in out and "   score: 0.5" in out
    report = next((tmp_path / "tour").iterdir()) / "report.md"
    text = report.read_text()
    assert "1 of 1 recipes ran in" in text and "| score | 0.5 |" in text
    assert "| [test-tiny](#test-tiny) |" in text and "| measured | value |" in text
    link = text.split("](")[-1].rstrip(")\n")
    assert (report.parent / link).exists()  # the figure link resolves


def _jaxatlas(args, runs):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    return subprocess.Popen([sys.executable, "-m", "common.cli", "run", "digits-mlp",
                             "--runs", str(runs), "--no-progress", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_digits_mlp_interrupted_then_resumed_reaches_target(tmp_path):
    """Ctrl-C after the first checkpoint, rerun: the run resumes in the same folder and
    finishes with test accuracy >= 0.95 (the foundation's end-to-end check)."""
    proc = _jaxatlas([], tmp_path)
    ckpt_root = tmp_path / "digits-mlp"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        steps = [p for d in ckpt_root.glob("*/checkpoints") for p in d.iterdir()
                 if p.name.isdigit()] if ckpt_root.exists() else []
        if steps:
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.05)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, f"run not stopped by the interrupt:\n{out}"
    assert "interrupted; saved step" in out and "run the same command to resume" in out
    assert "Traceback" not in out
    run_dir = next(ckpt_root.iterdir())
    assert not (run_dir / "summary.json").exists()
    interrupted_at = max(int(p.name) for p in (run_dir / "checkpoints").iterdir()
                         if p.name.isdigit())
    assert 500 <= interrupted_at < 1500

    proc = _jaxatlas([], tmp_path)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert list(ckpt_root.iterdir()) == [run_dir]  # same folder, continued
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed"] is True and summary["steps"] == 1500
    assert summary["test_accuracy"] >= 0.95
    assert {"learning_curve.png", "confusion_matrix.png"} <= set(summary["figures"])
    assert max(int(p.name) for p in (run_dir / "checkpoints").iterdir()
               if p.name.isdigit()) == 1500
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [row["step"] for row in rows if "loss" in row]
    assert sorted(logged) == list(range(1, 1501))  # every step logged exactly once
    evals = [row["step"] for row in rows if "eval/test_accuracy" in row]
    assert sorted(evals) == list(range(100, 1501, 100))  # every evaluation exactly once
    assert np.isfinite([row["loss"] for row in rows if "loss" in row]).all()


def test_help_lists_benchmarks_and_recipes(capsys):
    with pytest.raises(SystemExit):
        cli.main(["bench", "--help"])
    out = capsys.readouterr().out
    assert "train-loop" in out and "ddpg-throughput" in out
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    out = capsys.readouterr().out
    assert "digits-mlp" in out and "--show-config" in out and "quick: minutes" in out


def test_long_values_are_abbreviated_in_tables():
    from common.recipe import format_cell

    assert format_cell(0.123456) == "0.1235" and format_cell([1.0, 2.0]) == "[1, 2]"
    long = format_cell([float(i) for i in range(100)])
    assert len(long) < 70 and "(100 values)" in long
    assert format_cell({"a": 1}) == '{"a": 1}'
    assert "entries, see summary.json" in format_cell({str(i): [0.0] * 5 for i in range(25)})
