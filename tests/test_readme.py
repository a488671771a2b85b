"""Every ```python block of README.md runs as written, each in a fresh namespace.

The blocks run in one subprocess (a clean interpreter, as a reader's would be), in a
temporary working directory so that the files they write stay out of the tree.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"

# What the blocks promise in their comments, checked on the names they define.
_EXPECT = r"""
import numpy as np
EXPECT = {
    "optimal": lambda v: abs(float(v.values[17]) - 10.0) < 1e-3,
    "final_returns": lambda v: np.asarray(v).shape == (2,) and np.all(np.isfinite(v)),
    "losses": lambda v: np.asarray(v).ndim == 1 and np.all(np.isfinite(v)),
    "sample_std": lambda v: abs(v - np.sqrt(0.25 - 25.0 / 500)) < 0.02,
    "greedy_actions": lambda v: np.all(np.asarray(v) == 1),
    "summary": lambda v: abs(v["w"] - 3.0) < 1e-2 and abs(v["b"] + 1.0) < 1e-2,
    "rows": lambda v: np.asarray(v).shape == (8, 20),
}
"""

_DRIVER = _EXPECT + r"""
import json, sys, traceback
blocks = json.load(open(sys.argv[1], encoding="utf-8"))
for i, (line, code) in enumerate(blocks, 1):
    where = f"README.md block {i} (line {line})"
    namespace = {"__name__": "__main__"}
    try:
        exec(compile(code, where, "exec"), namespace)
    except BaseException:
        traceback.print_exc()
        sys.exit(f"{where} failed")
    for name, check in EXPECT.items():
        if name in namespace and not check(namespace[name]):
            sys.exit(f"{where}: {name} = {namespace[name]!r} is not what the README says")
print(f"{len(blocks)} blocks ran")
"""


def readme_blocks() -> list[tuple[int, str]]:
    """``(first line number, code)`` of every ```python block."""
    text = README.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1))
            for m in re.finditer(r"```python\n(.*?)```", text, flags=re.S)]


def test_readme_has_python_blocks():
    assert len(readme_blocks()) >= 6


PARTS = 3  # the blocks run in this many subprocesses, so that test workers share them


@pytest.mark.parametrize("part", range(PARTS))
def test_every_readme_python_block_runs(tmp_path, part):
    """Blocks ``part``, ``part + PARTS``, ... (every block runs in exactly one part)."""
    import json

    blocks = readme_blocks()[part::PARTS]
    blocks_file = tmp_path / "blocks.json"
    blocks_file.write_text(json.dumps(blocks), encoding="utf-8")
    root = str(README.parent)
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "MPLBACKEND": "Agg", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", _DRIVER, str(blocks_file)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    assert f"{len(blocks)} blocks ran" in done.stdout
