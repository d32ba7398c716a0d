"""The built wheel carries the generated code and the tooling `orka-scheduler demo` runs
(scheduler.sim), and it imports them from there (not from the repo)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import zipfile

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_wheel_ships_and_imports_generated_code(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheels),
            str(ROOT),
        ],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("orka_scheduler-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("agent", "node_agent", "controller", "store", "etcd/rpc", "etcd/v3election"):
        assert f"scheduler/_proto/{module}_pb2.py" in names
        assert f"scheduler/_proto/{module}_grpc.py" in names
        assert f"scheduler/_proto/{module}_pb2.pyi" in names
    for module in (
        "__init__",
        "demo",
        "demo_ha",
        "simulator",
        "sim_controller",
        "local_etcd",
        "signals",
    ):
        assert f"scheduler/sim/{module}.py" in names
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        cwd=tmp_path,
    )
    probe = (
        "import scheduler, scheduler._proto.agent_grpc as g, scheduler.cli;"
        "import scheduler._proto.etcd.v3election_grpc as e, scheduler.sim.demo as d;"
        "print(scheduler.__file__); print(g.LifecycleServiceStub.__name__);"
        "print(e.ElectionStub.__name__); print(d.__file__)"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run(
        [sys.executable, "-c", probe],
        check=True,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert out[0].startswith(str(target)), f"imported from {out[0]}, not the installed wheel"
    assert out[1:3] == ["LifecycleServiceStub", "ElectionStub"]
    assert out[3].startswith(str(target)), f"the demo imported from {out[3]}"
