"""Smoke test of the soak benchmark (bench/soak.py, issue #7): a 12-second soak with churn
against a real scheduler process must end with the Controller's view equal to the truth.

The soak runs in its own process (it is plain asyncio, the scheduler and the simulated
Agents in their own processes; see tests/sim/test_simulator.py for why).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.soak  # over 10 s: not in the default run; `python -m pytest -m soak`, .ci/run
def test_soak_smoke() -> None:
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "soak.py"),
            "--minutes",
            "0.2",
            "--agents",
            "8",
            "--insecure",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = run.stdout.strip().splitlines()
    assert lines, f"no output; stderr:\n{run.stderr[-3000:]}"
    result = json.loads(lines[-1])
    assert run.returncode == 0 and result["mismatches"] == 0, (
        f"exit {run.returncode}:\n{run.stdout[-4000:]}\n{run.stderr[-2000:]}"
    )
    assert result["placements"] > 0 and result["destroys"] > 0, result
    assert result["joins"] > 4 and result["leaves"] + result["kills"] > 0, result
    assert result["events"] > 0 and result["rss_start_kib"] > 0, result
