"""Metric logging: one JSON object a line, plus TensorBoard event files.

``metrics.jsonl`` is the machine-readable record (``{"step": 10, "loss": 0.3}``
per line, appended, so a resumed run continues the same file); TensorBoard events
(tensorboardX) are for looking at curves while a run goes.

Example:
    >>> with MetricsWriter(run_dir) as log:
    ...     log.write(step=10, metrics={"loss": 0.31})
    >>> read_metrics(run_dir / "metrics.jsonl")[-1]["loss"]
    0.31
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path


def _plain(value):
    value = float(value)
    return value if math.isfinite(value) else str(value)


class MetricsWriter:
    """Append scalar metrics to ``<run_dir>/metrics.jsonl`` and TensorBoard events.

    Args:
      run_dir: the run folder (created if missing).
      tensorboard: also write TensorBoard events under ``<run_dir>/tensorboard``.
    """

    def __init__(self, run_dir: str | os.PathLike, *, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        self._file = open(self.path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"), flush_secs=30)

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        """Record ``metrics`` (name → scalar) at ``step``."""
        row = {"step": int(step)}
        row.update({k: _plain(v) for k, v in metrics.items()})
        self._file.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for name, value in metrics.items():
                if math.isfinite(float(value)):  # NaN means "none this step" (JSONL keeps it)
                    self._tb.add_scalar(name, float(value), int(step))

    def truncate(self, step: int, *, prefix: str = "", eval_at_step: bool = False) -> int:
        """Drop the JSONL rows a stopped run wrote after ``step`` (its last checkpoint),
        so a resumed run does not log them twice; returns how many were dropped.

        Args:
          step: the step training resumes from.
          prefix: only rows whose every metric name starts with ``prefix`` (one stage
            of a multi-stage run, see ``common.recipe.PrefixedLogger``).
          eval_at_step: also drop the evaluation rows (``eval/...``) at ``step`` itself,
            for a run that evaluates again there.

        TensorBoard event files are append-only; TensorBoard shows the later value.
        """
        self._file.flush()
        kept, dropped = [], 0
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                row = json.loads(line)
                names = [k for k in row if k != "step"]
                ours = all(k.startswith(prefix) for k in names)
                stale = row["step"] > step or (
                    eval_at_step and row["step"] == step
                    and all(k.startswith(prefix + "eval/") for k in names))
                if ours and stale:
                    dropped += 1
                else:
                    kept.append(line if line.endswith("\n") else line + "\n")
        if dropped:
            self._file.close()
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(kept), encoding="utf-8")
            os.replace(tmp, self.path)
            self._file = open(self.path, "a", encoding="utf-8")
        return dropped

    def flush(self) -> None:
        self._file.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class MemoryWriter:
    """The rows a ``MetricsWriter`` would write, kept in memory and never written: the
    logger of every process but the primary one in a multi-process run (their rows are
    the same replicated values the primary writes)."""

    def __init__(self):
        self.rows: list[dict] = []

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        self.rows.append({"step": int(step), **{k: _plain(v) for k, v in metrics.items()}})

    def truncate(self, step: int, *, prefix: str = "", eval_at_step: bool = False) -> int:
        """As ``MetricsWriter.truncate``, on the rows in memory."""
        before = len(self.rows)
        self.rows = [row for row in self.rows if not (
            all(k.startswith(prefix) for k in row if k != "step")
            and (row["step"] > step or (eval_at_step and row["step"] == step and all(
                k.startswith(prefix + "eval/") for k in row if k != "step"))))]
        return before - len(self.rows)

    def flush(self) -> None:
        """Nothing to flush: the rows live in memory."""

    def close(self) -> None:
        """Nothing to close: no file was opened."""


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """All rows of a ``metrics.jsonl`` file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def series(rows: list[dict], name: str) -> tuple[list[int], list[float]]:
    """``(steps, values)`` of metric ``name`` from ``read_metrics`` rows.

    A resumed run may repeat steps after its last checkpoint; the last value written
    for a step wins.
    """
    latest: dict[int, float] = {}
    for row in rows:
        if name in row:
            latest[row["step"]] = float(row[name])
    steps = sorted(latest)
    return steps, [latest[s] for s in steps]
