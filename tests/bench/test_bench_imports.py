"""The benchmark scripts start both ways the README gives: `python bench/X.py` and, from the
repository's root, `python -m bench.X` (bench/ is a package; its scripts import each other as
`bench.run`, never as a bare `run` that only resolves from inside bench/)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ("run", "soak", "attacks", "stack_baseline", "memory_trace")  # import a bench module
GUARD = 60.0  # s: imports and --help only


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("form", ["path", "module"])
def test_bench_script_starts(script, form, tmp_path):
    command = (
        [str(ROOT / "bench" / f"{script}.py")] if form == "path" else ["-m", f"bench.{script}"]
    )
    # As a path, from elsewhere: nothing may depend on the current directory.
    cwd = tmp_path if form == "path" else ROOT
    result = subprocess.run(
        [sys.executable, *command, "--help"], cwd=cwd, capture_output=True, text=True, timeout=GUARD
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage:"), result.stdout[:500]
