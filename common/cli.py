"""The ``jaxatlas`` command line.

    jaxatlas list                                  recipes and benchmarks
    jaxatlas run NAME [--scale quick|full] [--set key=value ...] [--fresh]
    jaxatlas tour [--scale quick|full]             every recipe, one report
    jaxatlas bench [NAME ...]                      benchmarks → runs/bench/*.json

Recipes and benchmarks are discovered through the entry-point groups
``jaxatlas.recipes`` and ``jaxatlas.benchmarks`` (see pyproject.toml): each entry
names a module whose import registers its recipes or benchmarks. This keeps
``common`` free of imports from ``rl``, ``generative`` and ``vision``, and lets
another installed package add its own.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import sys
import time
import traceback
from importlib.metadata import entry_points
from pathlib import Path

# Modules registered when the package metadata is unavailable (running from a source
# tree without installing); an installed jaxatlas uses its entry points instead.
_FALLBACK_MODULES = {
    "jaxatlas.recipes": ("common.recipes", "rl.recipes", "generative.recipes",
                         "vision.recipes"),
    "jaxatlas.benchmarks": ("common.benchmarks", "rl.benchmarks", "generative.benchmarks",
                            "vision.benchmarks"),
}


def load_plugins(group: str) -> list[str]:
    """Import every module registered under entry-point ``group``; returns their names."""
    modules = [ep.value for ep in entry_points(group=group)] or list(_FALLBACK_MODULES[group])
    loaded = []
    for module in modules:
        importlib.import_module(module)
        loaded.append(module)
    return loaded


def _cmd_list(args) -> int:
    from common.bench import BENCHMARKS
    from common.recipe import RECIPES

    load_plugins("jaxatlas.recipes")
    load_plugins("jaxatlas.benchmarks")
    print("recipes:")
    for name, recipe in RECIPES.items():
        print(f"  {name:28s} {recipe.description}")
    print("benchmarks:")
    for name, bench in BENCHMARKS.items():
        print(f"  {name:28s} {bench.description}")
    return 0


def _cmd_run(args) -> int:
    from common.recipe import parse_set_args, run_recipe

    load_plugins("jaxatlas.recipes")
    overrides = parse_set_args(args.set or [])
    t0 = time.perf_counter()
    run_dir, summary = run_recipe(args.name, scale=args.scale, overrides=overrides,
                                  runs_root=args.runs, resume=not args.fresh,
                                  progress=not args.no_progress)
    print(f"{args.name}: {time.perf_counter() - t0:.1f}s → {run_dir}")
    for key, value in summary.items():
        if not isinstance(value, (dict, list)):
            print(f"  {key}: {value:.4g}" if isinstance(value, float) else f"  {key}: {value}")
    return 0


def _cmd_tour(args) -> int:
    from common.recipe import RECIPES, run_recipe

    load_plugins("jaxatlas.recipes")
    names = args.names or RECIPES.names()
    for name in names:
        RECIPES.get(name)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    report_dir = Path(args.runs) / "tour" / stamp
    report_dir.mkdir(parents=True, exist_ok=True)
    sections, failures = [], []
    for name in names:
        print(f"== {name} ({args.scale})", flush=True)
        t0 = time.perf_counter()
        try:
            run_dir, summary = run_recipe(name, scale=args.scale, runs_root=args.runs,
                                          progress=not args.no_progress)
        except Exception:  # a failing recipe is reported and the tour goes on
            traceback.print_exc()
            failures.append(name)
            sections.append(f"## {name}\n\nFAILED, see the log above.\n")
            continue
        seconds = time.perf_counter() - t0
        print(f"   {seconds:.1f}s → {run_dir}", flush=True)
        sections.append(_tour_section(name, run_dir, summary, seconds, report_dir))
    header = [f"# jaxatlas tour ({args.scale})", "",
              f"{len(names) - len(failures)} of {len(names)} recipes ran.", ""]
    (report_dir / "report.md").write_text("\n".join(header + sections), encoding="utf-8")
    print(f"report: {report_dir / 'report.md'}")
    return 1 if failures else 0


def _tour_section(name: str, run_dir: Path, summary: dict, seconds: float,
                  report_dir: Path) -> str:
    rel = Path(os.path.relpath(run_dir, report_dir))
    lines = [f"## {name}", "", f"[{run_dir}]({rel / 'summary.md'}), {seconds:.1f} s", "",
             "| figure | value |", "| --- | --- |"]
    for key, value in summary.items():
        if isinstance(value, (dict, list)):
            value = json.dumps(value, default=str)
        lines.append(f"| {key} | {value:.4g} |" if isinstance(value, float)
                     else f"| {key} | {value} |")
    figures = json.loads((run_dir / "summary.json").read_text()).get("figures", [])
    lines.append("")
    lines += [f"![{name}: {fig}]({rel / fig})" for fig in figures]
    return "\n".join(lines) + "\n"


def _cmd_bench(args) -> int:
    from common.bench import run_benchmarks

    load_plugins("jaxatlas.benchmarks")
    run_benchmarks(args.names or None, out_dir=Path(args.runs) / "bench", scale=args.scale)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxatlas", description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--runs", default="runs", help="root folder for run output (runs)")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="list recipes and benchmarks").set_defaults(fn=_cmd_list)

    run = sub.add_parser("run", help="run one recipe", parents=[common])
    run.add_argument("name")
    run.add_argument("--scale", default="quick", choices=["quick", "full"])
    run.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override a config field (nested with dots); repeatable")
    run.add_argument("--fresh", action="store_true",
                     help="start a new run instead of resuming an unfinished one")
    run.add_argument("--no-progress", action="store_true")
    run.set_defaults(fn=_cmd_run)

    tour = sub.add_parser("tour", help="run every recipe and write one report",
                          parents=[common])
    tour.add_argument("names", nargs="*", help="recipes to include (default: all)")
    tour.add_argument("--scale", default="quick", choices=["quick", "full"])
    tour.add_argument("--no-progress", action="store_true")
    tour.set_defaults(fn=_cmd_tour)

    bench = sub.add_parser("bench", help="run benchmarks", parents=[common])
    bench.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    bench.add_argument("--scale", default="quick", choices=["quick", "full"])
    bench.set_defaults(fn=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    from common.recipe import ConfigError, RunInterrupted
    from common.registry import UnknownNameError

    args = build_parser().parse_args(argv)
    os.environ.setdefault("MPLBACKEND", "Agg")  # figures go to files; no display needed
    try:
        return args.fn(args)
    except (UnknownNameError, ConfigError) as err:
        print(f"jaxatlas {args.command}: error: {err}", file=sys.stderr)
        return 2
    except RunInterrupted as stop:
        saved = ("no checkpoint yet" if stop.saved_step is None
                 else f"saved step {stop.saved_step}")
        print(f"interrupted; {saved} in {stop.run_dir}; run the same command to resume",
              file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
