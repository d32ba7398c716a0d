"""`orka-scheduler demo` completes (a reduced size): scheduler, simulated Agents and Controller."""
from __future__ import annotations

import os
import re
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_demo_places_instances_and_shows_lost_agents():
    result = subprocess.run(
        [sys.executable, "-m", "scheduler", "demo", "--agents", "4", "--instances", "20",
         "--kill", "1"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "placing [########################################] 20/20" in out
    assert "placed 20/20 instances" in out
    assert "LOST doomed-00000:" in out, out  # the LOST event, as it arrived
    assert re.search(r"^doomed-00000\s+LOST\s", out, re.MULTILINE), out  # the nodes table
    assert "summary: 3 nodes READY, 1 LOST, 20 instances placed, 0 not placed" in out
