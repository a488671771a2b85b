"""The small helpers recipes share: optimizer run length, prefixed logging, smoothing."""

import matplotlib.pyplot as plt
import numpy as np

from common.optim import OptimConfig
from common.recipe import (
    PrefixedLogger,
    default_total_steps,
    plot_smoothed,
    smoothed,
)


def test_default_total_steps_fills_only_a_missing_value():
    assert default_total_steps(OptimConfig(), 300).total_steps == 300
    assert default_total_steps(OptimConfig(total_steps=50), 300).total_steps == 50


class _Rows:
    def __init__(self):
        self.rows, self.flushed = [], 0

    def write(self, step, metrics):
        self.rows.append((step, dict(metrics)))

    def flush(self):
        self.flushed += 1


def test_prefixed_logger_prefixes_every_name():
    inner = _Rows()
    log = PrefixedLogger(inner, "sft/")
    log.write(3, {"loss": 1.0, "eval/kl": 2.0})
    log.flush()
    assert inner.rows == [(3, {"sft/loss": 1.0, "sft/eval/kl": 2.0})] and inner.flushed == 1


def test_smoothed_is_a_trailing_moving_average():
    values = np.arange(100.0)
    offset, smooth = smoothed(values, points=25)          # window 4
    assert offset == 3 and len(smooth) == 97
    np.testing.assert_allclose(smooth, [values[i:i + 4].mean() for i in range(97)])
    offset, smooth = smoothed([1.0, 2.0], points=50)      # fewer values than points
    assert offset == 0 and list(smooth) == [1.0, 2.0]


def test_plot_smoothed_reads_a_fit_history():
    history = [(s, {"loss": float(s)}) for s in range(1, 51)] + [(50, {"eval/acc": 0.5})]
    fig, ax = plt.subplots()
    assert plot_smoothed(ax, history, "loss", points=10)
    assert not plot_smoothed(ax, history, "missing")
    x, y = ax.lines[0].get_data()
    assert x[0] == 5 and y[0] == np.mean(np.arange(1.0, 6.0))
    plt.close(fig)
