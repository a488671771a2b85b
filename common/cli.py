"""The ``jaxatlas`` command line.

    jaxatlas list                                  recipes and benchmarks
    jaxatlas run NAME [--scale quick|full] [--set key=value ...] [--fresh] [--show-config]
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
import shutil
import sys
import textwrap
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


def _wrapped(name: str, text: str, width: int) -> str:
    """``name`` then ``text`` wrapped under itself at the terminal's width."""
    indent = " " * 30
    lines = textwrap.wrap(text, width=max(40, width - len(indent))) or [""]
    return "\n".join([f"  {name:27s} {lines[0]}", *(indent + line for line in lines[1:])])


def _cmd_list(args) -> int:
    from common.bench import BENCHMARKS
    from common.recipe import RECIPES

    load_plugins("jaxatlas.recipes")
    load_plugins("jaxatlas.benchmarks")
    width = shutil.get_terminal_size((100, 24)).columns
    print("recipes (jaxatlas run NAME; jaxatlas run NAME --show-config lists its --set keys):")
    for name, recipe in RECIPES.items():
        print(_wrapped(name, recipe.description, width))
    print("benchmarks (jaxatlas bench NAME):")
    for name, bench in BENCHMARKS.items():
        print(_wrapped(name, bench.description, width))
    return 0


def _print_summary(summary: dict, indent: str = "  ") -> None:
    from common.recipe import format_cell

    for key, value in summary.items():
        if not isinstance(value, dict):
            print(f"{indent}{key}: {format_cell(value)}")


def _cmd_run(args) -> int:
    from common.recipe import config_lines, parse_set_args, resolve_config, run_recipe

    load_plugins("jaxatlas.recipes")
    overrides = parse_set_args(args.set or [])
    if args.show_config:
        recipe, config = resolve_config(args.name, args.scale, overrides)
        print(f"{recipe.name} ({args.scale}): {recipe.description}")
        print("\n".join("  " + line for line in config_lines(config)))
        return 0
    t0 = time.perf_counter()
    run_dir, summary = run_recipe(args.name, scale=args.scale, overrides=overrides,
                                  runs_root=args.runs, resume=not args.fresh,
                                  progress=not args.no_progress)
    from common.distributed import is_primary

    if is_primary():  # one report per run, not one per process
        print(f"{args.name}: {time.perf_counter() - t0:.1f}s → {run_dir}")
        _print_summary(summary)
    return 0


def _cmd_tour(args) -> int:
    import jax

    from common.recipe import RECIPES, run_recipe

    if jax.process_count() > 1:
        print("jaxatlas tour: error: the tour runs as one process; under several processes "
              "run the multi-process recipes one by one (jaxatlas launch -- run NAME)",
              file=sys.stderr)
        return 2
    load_plugins("jaxatlas.recipes")
    names = args.names or RECIPES.names()
    for name in names:
        RECIPES.get(name)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    report_dir = Path(args.runs) / "tour" / stamp
    report_dir.mkdir(parents=True, exist_ok=True)
    sections, failures, times = [], [], {}
    start = time.perf_counter()
    for i, name in enumerate(names, 1):
        done = time.perf_counter() - start
        left = "" if i == 1 else (f", about {done / (i - 1) * (len(names) - i + 1) / 60:.0f} "
                                  f"min left at this pace")
        print(f"[{i}/{len(names)}] {name} ({args.scale}; {done / 60:.1f} min so far{left})",
              flush=True)
        t0 = time.perf_counter()
        try:
            run_dir, summary = run_recipe(name, scale=args.scale, runs_root=args.runs,
                                          progress=not args.no_progress)
        except Exception:  # a failing recipe is reported and the tour goes on
            traceback.print_exc()
            failures.append(name)
            sections.append(f"## {name}\n\nFAILED, see the log above.\n")
            continue
        times[name] = time.perf_counter() - t0
        print(f"   {times[name]:.1f}s → {run_dir}", flush=True)
        _print_summary(summary, indent="   ")
        sections.append(_tour_section(RECIPES.get(name), run_dir, summary, times[name],
                                      report_dir))
    total = time.perf_counter() - start
    header = [f"# jaxatlas tour ({args.scale})", "",
              f"{len(names) - len(failures)} of {len(names)} recipes ran in "
              f"{total / 60:.1f} minutes.", "",
              "| recipe | wall time | the README's claim |", "| --- | --- | --- |"]
    header += [f"| [{n}](#{n}) | {times[n]:.0f} s | {RECIPES.get(n).claim or '—'} |"
               if n in times else f"| {n} | FAILED | {RECIPES.get(n).claim or '—'} |"
               for n in names]
    (report_dir / "report.md").write_text("\n".join([*header, "", *sections]),
                                          encoding="utf-8")
    print(f"report: {report_dir / 'report.md'} ({total / 60:.1f} min)")
    return 1 if failures else 0


def _tour_section(recipe, run_dir: Path, summary: dict, seconds: float,
                  report_dir: Path) -> str:
    from common.recipe import format_cell

    rel = Path(os.path.relpath(run_dir, report_dir))
    lines = [f"## {recipe.name}", "", recipe.description, "",
             f"[{run_dir}]({rel / 'summary.md'}), {seconds:.1f} s", ""]
    if recipe.claim:
        lines += [f"The README's claim: {recipe.claim}", ""]
    lines += ["| measured | value |", "| --- | --- |"]
    lines += [f"| {key} | {format_cell(value)} |" for key, value in summary.items()]
    figures = json.loads((run_dir / "summary.json").read_text()).get("figures", [])
    lines.append("")
    lines += [f"![{recipe.name}: {fig}]({rel / fig})" for fig in figures]
    return "\n".join(lines) + "\n"


def _cmd_bench(args) -> int:
    from common.bench import run_benchmarks

    load_plugins("jaxatlas.benchmarks")
    run_benchmarks(args.names or None, out_dir=Path(args.runs) / "bench", scale=args.scale)
    return 0


def build_parser(describe: bool = False) -> argparse.ArgumentParser:
    """The argument parser; ``describe`` lists the recipes and benchmarks in the
    sub-commands' help (it imports them)."""
    parser = argparse.ArgumentParser(prog="jaxatlas", description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--runs", default="runs", help="root folder for run output (runs)")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="list recipes and benchmarks").set_defaults(fn=_cmd_list)

    scale_help = ("quick: minutes on a laptop CPU (the default); full: the real figures, "
                  "sized for an accelerator")
    progress_help = "no progress bars (for logs and CI)"
    run = sub.add_parser("run", help="run one recipe", parents=[common],
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         epilog=_names_epilog("recipes", "jaxatlas.recipes", describe))
    run.add_argument("name", help="the recipe (jaxatlas list names them all)")
    run.add_argument("--scale", default="quick", choices=["quick", "full"], help=scale_help)
    run.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override a config field (nested with dots); repeatable")
    run.add_argument("--show-config", action="store_true",
                     help="print every --set key with its value at this scale and exit")
    run.add_argument("--fresh", action="store_true",
                     help="start a new run instead of resuming an unfinished one")
    run.add_argument("--no-progress", action="store_true", help=progress_help)
    run.set_defaults(fn=_cmd_run)

    tour = sub.add_parser("tour", help="run every recipe and write one report",
                          parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
                          epilog=_names_epilog("recipes", "jaxatlas.recipes", describe))
    tour.add_argument("names", nargs="*", help="recipes to include (default: all)")
    tour.add_argument("--scale", default="quick", choices=["quick", "full"], help=scale_help)
    tour.add_argument("--no-progress", action="store_true", help=progress_help)
    tour.set_defaults(fn=_cmd_tour)

    bench = sub.add_parser("bench", help="run benchmarks", parents=[common],
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog=_names_epilog("benchmarks", "jaxatlas.benchmarks", describe))
    bench.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    bench.add_argument("--scale", default="quick", choices=["quick", "full"],
                       help="quick: small sizes; full: the sizes meant for an accelerator")
    bench.set_defaults(fn=_cmd_bench)

    launch = sub.add_parser(
        "launch", help="run a command as several local processes joined like a cluster",
        description="Start PROCESSES local processes of `jaxatlas COMMAND...`, each with "
                    "DEVICES simulated CPU devices, joined by jax.distributed with gloo "
                    "collectives; stop all when one fails, naming its rank.",
        epilog="example: jaxatlas launch --processes 2 --devices-per-process 4 -- run "
               "digits-mlp")
    launch.add_argument("--processes", type=int, default=2, help="number of processes (2)")
    launch.add_argument("--devices-per-process", type=int, default=4,
                        help="simulated CPU devices per process (4)")
    launch.add_argument("--port", type=int, default=None,
                        help="coordinator port on 127.0.0.1 (default: a free one)")
    launch.add_argument("--timeout", type=float, default=None,
                        help="stop all processes after this many seconds")
    launch.add_argument("cli", nargs=argparse.REMAINDER, metavar="-- COMMAND",
                        help="the jaxatlas command each process runs, after --")
    launch.set_defaults(fn=_cmd_launch)
    return parser


def _cmd_launch(args) -> int:
    from common.launch import launch

    command = list(args.cli)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        print("jaxatlas launch: error: say what each process runs after --, e.g. "
              "-- run digits-mlp", file=sys.stderr)
        return 2
    if args.processes < 1 or args.devices_per_process < 1:
        print("jaxatlas launch: error: --processes and --devices-per-process must be >= 1",
              file=sys.stderr)
        return 2
    return launch(command, processes=args.processes,
                  devices_per_process=args.devices_per_process, port=args.port,
                  timeout=args.timeout)


def _names_epilog(kind: str, group: str, describe: bool) -> str | None:
    """The registered names of ``kind`` for a sub-command's --help (imports the plugins,
    so only when help was asked for)."""
    if not describe:
        return None
    from common.bench import BENCHMARKS
    from common.recipe import RECIPES

    load_plugins(group)
    registry = RECIPES if kind == "recipes" else BENCHMARKS
    width = shutil.get_terminal_size((100, 24)).columns
    return f"{kind}:\n" + "\n".join(_wrapped(name, entry.description, width)
                                      for name, entry in registry.items())


def main(argv: list[str] | None = None) -> int:
    from common.recipe import ConfigError, RunInterrupted
    from common.registry import UnknownNameError

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(describe="-h" in argv or "--help" in argv).parse_args(argv)
    os.environ.setdefault("MPLBACKEND", "Agg")  # figures go to files; no display needed
    if args.command in ("run", "tour", "bench"):
        from common.distributed import initialize_distributed

        initialize_distributed()  # a no-op unless launched as one of several processes
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
