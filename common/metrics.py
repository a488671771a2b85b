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
