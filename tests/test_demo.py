"""`orka-scheduler demo` completes (a reduced size): scheduler, simulated Agents and Controller."""
from __future__ import annotations

import os
import re
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def demo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "scheduler", "demo", *args],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=120)


def test_demo_places_instances_and_shows_lost_agents():
    result = demo("--agents", "4", "--instances", "20", "--kill", "1", "--keep")
    directory = pathlib.Path(re.search(r"^orka-scheduler demo in (\S+)$", result.stdout,
                                       re.MULTILINE).group(1))
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        out = result.stdout
        assert "placing [########################################] 20/20" in out
        assert "placed 20/20 instances" in out
        assert "LOST doomed-00000:" in out, out  # the LOST event, as it arrived
        assert re.search(r"^doomed-00000\s+LOST\s", out, re.MULTILINE), out  # the nodes table
        assert "summary: 3 nodes READY, 1 LOST, 20 instances placed, 0 not placed" in out
        assert f"scheduler log: {directory / 'scheduler.log'} (kept)" in out, out

        # The demo's own teardown is a planned shutdown: the instances still running on the
        # surviving Agents end without a WARNING. (The killed Agent's do warn: a real failure.)
        running = re.findall(r"^node-\d+\s+READY\s.*\s(\d+)\s+\d+s ago$", out, re.MULTILINE)
        assert sum(map(int, running)) > 0, out  # there were relays to end at teardown
        log = (directory / "scheduler.log").read_text()
        assert "received SIGTERM" in log, log
        warnings = [line for line in log.splitlines() if " WARNING " in line]
        assert not [line for line in warnings if "relay ended" in line and "node-0" in line], log
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_demo_says_its_log_is_deleted_unless_kept():
    result = demo("--agents", "2", "--instances", "4", "--kill", "0")
    assert result.returncode == 0, result.stdout + result.stderr
    log = re.search(r"scheduler log: (\S+) \(deleted at exit; --keep keeps it\)$", result.stdout,
                    re.MULTILINE)
    assert log, result.stdout
    assert not pathlib.Path(log.group(1)).parent.exists()
