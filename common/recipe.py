"""Recipes: named, configurable end-to-end runs that write a self-describing folder.

A recipe is a function ``run(ctx, config) -> summary`` plus one frozen dataclass
config per scale (``quick`` for minutes on a laptop CPU, ``full`` for the real
figures). ``run_recipe`` resolves the config (``--set key=value`` overrides, nested
with dots: ``optim.learning_rate=3e-4``), picks the run folder, and writes::

    runs/NAME/<timestamp>/
        config.json      the resolved config
        metrics.jsonl    one JSON row per logged step (ctx.logger)
        tensorboard/     TensorBoard events
        checkpoints/     orbax checkpoints (ctx.checkpointer())
        *.png            figures (ctx.save_figure)
        summary.json     the headline figures the recipe returned, machine-readable
        summary.md       the same as a table, with the figures linked

A run is complete once ``summary.json`` exists. Rerunning a recipe whose latest
run folder has the same config but no summary resumes in that folder from its
last checkpoint, so an interrupted run loses no work.

Example:
    >>> @register_recipe("my-recipe", "what it shows", quick=Cfg(steps=100),
    ...                  full=Cfg(steps=10_000))
    ... def my_recipe(ctx: RunContext, cfg: Cfg) -> dict:
    ...     ...
    ...     return {"test_accuracy": acc}
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import os
import sys
import time
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax

from common.registry import Registry

SCALES = ("quick", "full")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A registered recipe: ``run(ctx, config) -> summary`` with a config per scale,
    ``claim``, what the README promises at quick scale (shown beside the measured
    figures in the tour's report), and ``multi_process``: whether it runs correctly as
    several processes (``common.distributed``'s rules: process-local data, global
    arrays, results gathered with ``to_host``)."""

    name: str
    description: str
    configs: Mapping[str, Any]
    run: Callable[[RunContext, Any], dict[str, Any]]
    claim: str = ""
    multi_process: bool = False


RECIPES: Registry[Recipe] = Registry("recipe")


class ConfigError(ValueError):
    """A config override or scale that cannot be applied (unknown key, unparsable value)."""


def register_recipe(name: str, description: str, *, quick, full, claim: str = "",
                    multi_process: bool = False):
    """Decorator registering ``run(ctx, config) -> summary`` with its two configs, the
    README's ``claim`` for the quick scale, and whether it is ``multi_process``-correct
    (others refuse to start in a multi-process run, before anything is written)."""
    for scale, cfg in (("quick", quick), ("full", full)):
        if not dataclasses.is_dataclass(cfg):
            raise TypeError(f"recipe {name!r}: the {scale} config must be a dataclass instance")

    def decorator(fn):
        RECIPES.add(name, Recipe(name, description, {"quick": quick, "full": full}, fn,
                                 claim, multi_process))
        return fn

    return decorator


# ----------------------------------------------------------------------------- configs


def config_to_dict(config) -> dict[str, Any]:
    """A (nested) dataclass config as JSON-ready dicts (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected a boolean (true/false), got {text!r}")


def _coerce(text: str, annotation, current):
    """Parse a command-line string into the type of a config field."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if text.strip().lower() in ("none", "null") and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        return _coerce(text, non_none[0], current) if len(non_none) == 1 else json.loads(text)
    if annotation is bool:
        return _parse_bool(text)
    if annotation is int:
        return int(text)
    if annotation is float:
        return float(text)
    if annotation is str:
        return text
    if origin in (tuple, list) or isinstance(current, (tuple, list)):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = [item.strip() for item in text.split(",") if item.strip()]
        if not isinstance(value, list):
            value = [value]
        if len(args) == 2 and args[1] is Ellipsis and args[0] in (int, float, str):
            value = [_element(args[0], v) for v in value]
        return _tupled(value)
    return json.loads(text)


def _element(kind: type, value):
    """One element of a ``tuple[int | float | str, ...]`` field, without silent rounding
    (``256.7`` is not an int)."""
    if kind is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"expected integers, got {value!r}")
        return int(value)
    if kind is float and isinstance(value, bool):
        raise ValueError(f"expected numbers, got {value!r}")
    return kind(value)


def _tupled(value):
    return tuple(_tupled(v) for v in value) if isinstance(value, list) else value


def apply_overrides(config, overrides: Mapping[str, str]):
    """``config`` with ``{"a.b": "text"}`` overrides parsed into each field's type.

    Raises:
      ConfigError: for a key the config does not have (listing the valid keys) or a
        value that does not parse as the field's type.
    """
    for dotted, text in overrides.items():
        config = _set_path(config, dotted.split("."), text, dotted)
    return config


def _set_path(config, parts: list[str], text: str, dotted: str):
    fields = {f.name: f for f in dataclasses.fields(config)}
    head = parts[0]
    if head not in fields:
        valid = ", ".join(sorted(_all_keys(config)))
        raise ConfigError(f"unknown config key {dotted!r}; valid keys: {valid}")
    current = getattr(config, head)
    if len(parts) > 1:
        if not dataclasses.is_dataclass(current):
            raise ConfigError(f"unknown config key {dotted!r}: {head!r} has no sub-keys")
        return _replace(config, dotted, **{head: _set_path(current, parts[1:], text, dotted)})
    hints = typing.get_type_hints(type(config))
    try:
        value = _coerce(text, hints.get(head, type(current)), current)
    except (ValueError, TypeError, json.JSONDecodeError) as err:
        raise ConfigError(f"config key {dotted!r}: cannot parse {text!r}: {err}") from None
    return _replace(config, dotted, **{head: value})


def _replace(config, dotted: str, **changes):
    """``dataclasses.replace``, with a config's own construction-time check (a
    ``__post_init__`` that raises) reported as a ``ConfigError`` naming the key."""
    try:
        return dataclasses.replace(config, **changes)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"config key {dotted!r}: {err}") from None


def _all_keys(config, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            keys.extend(_all_keys(value, prefix + f.name + "."))
        else:
            keys.append(prefix + f.name)
    return keys


def config_lines(config) -> list[str]:
    """``key = value`` for every (nested, dotted) field of a config: what ``--set``
    accepts."""
    lines = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            lines += [f"{f.name}.{line}" for line in config_lines(value)]
        else:
            lines.append(f"{f.name} = {value!r}")
    return lines


def parse_set_args(items: Sequence[str]) -> dict[str, str]:
    """``["a=1", "b.c=x"]`` → ``{"a": "1", "b.c": "x"}``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = value
    return out


# ----------------------------------------------------------------------------- helpers


def default_total_steps(optim, steps: int):
    """``optim`` (an ``OptimConfig``) with ``total_steps`` set to the run's ``steps``
    when it is None, so decaying schedules end with the run."""
    if optim.total_steps is None:
        return dataclasses.replace(optim, total_steps=int(steps))
    return optim


class PrefixedLogger:
    """A metrics writer that prefixes every name (several trained stages, one run folder).

    Example:
        >>> sft_logger = PrefixedLogger(ctx.logger, "sft/")    # writes "sft/loss", ...
    """

    def __init__(self, logger, prefix: str):
        self.logger, self.prefix = logger, prefix

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        self.logger.write(step, {self.prefix + k: v for k, v in metrics.items()})

    def truncate(self, step: int, *, eval_at_step: bool = False) -> int:
        """Drop this stage's rows after ``step`` (see ``MetricsWriter.truncate``)."""
        return self.logger.truncate(step, prefix=self.prefix, eval_at_step=eval_at_step)

    def flush(self) -> None:
        self.logger.flush()


def smoothed(values, points: int = 50):
    """A moving average of ``values [N]`` over ``max(1, N // points)`` entries.

    Returns ``(offset, smooth)``: ``smooth [N − window + 1]`` belongs to the inputs
    from index ``offset = window − 1`` on.
    """
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    window = max(1, len(values) // points)
    return window - 1, np.convolve(values, np.ones(window) / window, mode="valid")


def plot_smoothed(ax, history, key: str = "loss", *, points: int = 50, **plot_kwargs) -> bool:
    """Plot the moving average of metric ``key`` from ``fit``'s ``history`` (a list of
    ``(step, metrics)``) on ``ax``; returns False when the history has no such metric."""
    rows = [(s, m[key]) for s, m in history if key in m]
    if not rows:
        return False
    steps, values = zip(*rows, strict=True)
    offset, smooth = smoothed(values, points)
    ax.plot(steps[offset:], smooth, **plot_kwargs)
    return True


# ----------------------------------------------------------------------------- runs


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class RunContext:
    """What a recipe uses to write its run folder.

    Attributes:
      run_dir: the folder of this run.
      scale: "quick" or "full".
      progress: whether to show progress bars.
      resumed: True when this run continues an interrupted one.
    """

    def __init__(self, run_dir: Path, scale: str, *, progress: bool = True,
                 resumed: bool = False, primary: bool = True):
        self.run_dir = Path(run_dir)
        self.scale = scale
        self.primary = primary
        self.progress = progress and primary
        self.resumed = resumed
        self.figures: list[str] = []
        self._logger = None
        self._checkpointers: list = []

    @property
    def logger(self):
        """The run's ``MetricsWriter`` (``metrics.jsonl`` + TensorBoard), opened on first use;
        on a process other than the primary one of a multi-process run, a
        ``MemoryWriter`` that keeps the rows without writing files."""
        if self._logger is None:
            from common.metrics import MemoryWriter, MetricsWriter

            self._logger = MetricsWriter(self.run_dir) if self.primary else MemoryWriter()
        return self._logger

    def checkpointer(self, name: str = "checkpoints", **kwargs):
        """A ``Checkpointer`` in ``<run_dir>/<name>`` (one per trained state)."""
        from common.checkpoint import Checkpointer

        ckpt = Checkpointer(self.run_dir / name, **kwargs)
        self._checkpointers.append(ckpt)
        return ckpt

    def metrics_rows(self) -> list[dict]:
        """Every row logged so far in this run folder (``metrics.jsonl``, a resumed run's
        earlier rows included; on a non-primary process the rows kept in memory)."""
        from common.metrics import read_metrics

        self.logger.flush()
        return read_metrics(self.logger.path) if self.primary else list(self.logger.rows)

    def history(self, prefix: str = "") -> list[tuple[int, dict[str, float]]]:
        """The whole run's logged rows as ``(step, metrics)``, read back from
        ``metrics.jsonl`` — including what a stopped run logged before it was resumed
        (the in-memory history of ``fit`` holds only this process's part).

        Args:
          prefix: keep only metrics whose name starts with it, with the prefix removed
            (the rows of one :class:`PrefixedLogger` stage).
        """
        rows = []
        for row in self.metrics_rows():
            metrics = {k[len(prefix):]: float(v) for k, v in row.items()
                       if k != "step" and k.startswith(prefix)}
            if metrics:
                rows.append((int(row["step"]), metrics))
        return rows

    @contextlib.contextmanager
    def phase(self, what: str):
        """Say on stderr that a long phase without a progress bar (sampling, likelihood,
        evaluation) starts and how long it took, when progress output is on.

        Example:
            >>> with ctx.phase("sampling 1,000 images with the PC sampler"):
            ...     samples = sample(...)
        """
        if not self.progress:
            yield
            return
        print(f"  {what} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        yield
        print(f"  {what}: done in {time.perf_counter() - t0:.1f} s", file=sys.stderr,
              flush=True)

    def save_figure(self, fig, name: str) -> Path:
        """Save a matplotlib figure as ``<run_dir>/<name>.png`` and close it (only closed on
        a process other than the primary one)."""
        import matplotlib.pyplot as plt

        path = self.run_dir / f"{name}.png"
        if not self.primary:
            plt.close(fig)
            return path
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        if path.name not in self.figures:
            self.figures.append(path.name)
        return path

    def close(self) -> None:
        if self._logger is not None:
            self._logger.close()
        for ckpt in self._checkpointers:
            ckpt.close()


def _resumable_run(root: Path, config_json: str) -> Path | None:
    """The newest unfinished run folder (no ``summary.json``) whose config equals
    ``config_json``, whatever ran since (other configs, failed attempts)."""
    if not root.is_dir():
        return None
    for candidate in sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.name,
                            reverse=True):
        config_path = candidate / "config.json"
        if (candidate / "summary.json").exists() or not config_path.exists():
            continue
        if config_path.read_text(encoding="utf-8") == config_json:
            return candidate
    return None


def _new_run_dir(root: Path) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = root / stamp
    suffix = 1
    while path.exists():
        path = root / f"{stamp}-{suffix}"
        suffix += 1
    path.mkdir(parents=True)
    return path


def resolve_config(name: str, scale: str = "quick", overrides: Mapping[str, str] | None = None):
    """The recipe and its config at ``scale`` with ``overrides`` applied and validated.

    Raises:
      ConfigError: for an unknown scale or key, an unparsable value, or a config whose
        ``validate()`` (on it or any nested config) refuses a value.
    """
    recipe = RECIPES.get(name)
    if scale not in SCALES:
        raise ConfigError(f"unknown scale {scale!r}; valid scales: {', '.join(SCALES)}")
    config = apply_overrides(recipe.configs[scale], overrides or {})
    validate_config(config)
    return recipe, config


def validate_config(config, path: str = "") -> None:
    """Call ``validate()`` on ``config`` and on every nested dataclass config that has
    one, turning their ``ValueError`` into a ``ConfigError`` naming the key."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            validate_config(value, f"{path}{f.name}.")
    check = getattr(config, "validate", None)
    if callable(check):
        try:
            check()
        except (ValueError, TypeError, LookupError) as err:
            where = f" ({path.rstrip('.')})" if path else ""
            raise ConfigError(f"invalid config{where}: {err}") from None


class RunInterrupted(KeyboardInterrupt):
    """A recipe stopped by Ctrl-C: ``run_dir`` and the ``saved_step`` it resumes from
    (None when no checkpoint was written)."""

    def __init__(self, run_dir: Path, saved_step: int | None):
        super().__init__(run_dir, saved_step)
        self.run_dir, self.saved_step = run_dir, saved_step


def run_recipe(name: str, *, scale: str = "quick", overrides: Mapping[str, str] | None = None,
               runs_root: str | os.PathLike = "runs", resume: bool = True,
               progress: bool = True) -> tuple[Path, dict[str, Any]]:
    """Run recipe ``name`` and return ``(run_dir, summary)``.

    The config is resolved and validated (and ``runs_root`` checked) before any folder
    is made. With ``resume``, the newest unfinished run of the same config is continued
    in its folder (said on stderr). Ctrl-C stops at the next chunk boundary after a
    checkpoint and raises :class:`RunInterrupted`.
    """
    from common.distributed import broadcast_text, is_primary, sync
    from common.train import Interrupted, deferred_interrupts

    recipe, config = resolve_config(name, scale, overrides)
    if jax.process_count() > 1 and not recipe.multi_process:
        ready = ", ".join(n for n, r in RECIPES.items() if r.multi_process)
        raise ConfigError(
            f"recipe {name!r} does not run as several processes yet (those that do: {ready}); "
            "run it as one process, e.g. with 8 simulated devices: "
            "XLA_FLAGS=--xla_force_host_platform_device_count=8 jaxatlas run " + name)
    root_parent = Path(runs_root)
    if root_parent.exists() and not root_parent.is_dir():
        raise ConfigError(f"--runs {os.fspath(runs_root)!r} is a file, not a folder")
    config_json = json.dumps({"recipe": name, "scale": scale, "config": config_to_dict(config)},
                             indent=2, sort_keys=True)
    root = root_parent / name
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{os.fspath(root)!r} is a file; recipe runs need a folder there")
    # The primary process chooses (and makes) the folder; in a multi-process run the
    # others learn its name from it and write nothing but their checkpoint shards.
    primary = is_primary()
    run_dir, resumed = None, False
    if primary:
        run_dir = _resumable_run(root, config_json) if resume else None
        resumed = run_dir is not None
        if resumed:
            print(f"{name}: resuming the unfinished run in {run_dir}", file=sys.stderr,
                  flush=True)
        else:
            run_dir = _new_run_dir(root)
            _write_atomic(run_dir / "config.json", config_json)
    choice = broadcast_text(json.dumps([os.fspath(run_dir) if primary else "", resumed]))
    run_dir, resumed = Path(json.loads(choice)[0]), bool(json.loads(choice)[1])
    ctx = RunContext(run_dir, scale, progress=progress, resumed=resumed, primary=primary)
    try:
        with deferred_interrupts():
            summary = recipe.run(ctx, config)
    except Interrupted as stop:
        raise RunInterrupted(run_dir, stop.saved_step) from None
    except KeyboardInterrupt:
        raise RunInterrupted(run_dir, None) from None
    finally:
        ctx.close()
    summary = dict(summary)
    sync(f"jaxatlas-run-end:{run_dir}")
    if not primary:
        return run_dir, summary
    _write_atomic(run_dir / "summary.md", _summary_markdown(recipe, scale, summary, ctx.figures))
    _write_atomic(run_dir / "summary.json",
                  json.dumps(_json_ready({"recipe": name, "scale": scale, "resumed": resumed,
                                          "figures": ctx.figures, **summary}),
                             indent=2, allow_nan=False))
    return run_dir, summary


def _json_ready(value):
    """``value`` with NaN/±inf as None (strict JSON) and other non-JSON types as floats
    or strings."""
    if hasattr(value, "tolist"):  # numpy / jax arrays and scalars
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if value is None or isinstance(value, (bool, str, int)):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return number if math.isfinite(number) else None


def format_cell(value, width: int = 60) -> str:
    """A summary value for a Markdown table cell: floats to 4 significant digits, short
    lists inline, long lists and dicts abbreviated (``summary.json`` has them whole)."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        parts = [format_cell(v, width) for v in value]
        text = "[" + ", ".join(parts) + "]"
        if len(text) > width:
            shown = []
            for part in parts:
                if len(", ".join([*shown, part])) > width - 12:
                    break
                shown.append(part)
            text = "[" + ", ".join(shown) + f", … ({len(parts)} values)]"
        return text
    if isinstance(value, dict):
        text = json.dumps(_json_ready(value))
        return text if len(text) <= width else f"({len(value)} entries, see summary.json)"
    return str(value).replace("|", "\\|")


def _summary_markdown(recipe: Recipe, scale: str, summary: dict, figures: list[str]) -> str:
    lines = [f"# {recipe.name} ({scale})", "", recipe.description, "",
             "| measured | value |", "| --- | --- |"]
    for key, value in summary.items():
        lines.append(f"| {key} | {format_cell(value)} |")
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"![{fig}]({fig})" for fig in figures]
    return "\n".join(lines) + "\n"
