"""The committed generated code in scheduler/_proto/ is exactly what tools/gen_protos.py makes."""

from __future__ import annotations

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _generator():
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "tools" / "gen_protos.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_fresh(tmp_path):
    fresh = _generator().generate(tmp_path)
    assert fresh, "protoc generated nothing"
    committed_dir = ROOT / "scheduler" / "_proto"
    fresh_dir = tmp_path / "scheduler" / "_proto"
    stale = []
    for path in fresh:
        name = path.relative_to(fresh_dir).as_posix()
        committed = committed_dir / name
        if not committed.exists() or committed.read_bytes() != path.read_bytes():
            stale.append(name)
    assert not stale, (
        f"scheduler/_proto is stale for {stale}: run `python tools/gen_protos.py` "
        "and commit the result"
    )
    generated = {
        p.relative_to(committed_dir).as_posix()
        for p in committed_dir.rglob("*_*.py*")
        if p.stem.endswith(("_pb2", "_grpc"))
    }
    extra = generated - {p.relative_to(fresh_dir).as_posix() for p in fresh}
    assert not extra, f"scheduler/_proto has files no .proto generates: {sorted(extra)}"


def test_services_of_the_contract_exist():
    from scheduler._proto import agent_grpc, controller_grpc, node_agent_grpc

    assert {
        "/scheduler.agent.LifecycleService/JoinCluster",
        "/scheduler.agent.LifecycleService/LeaveCluster",
    } <= set(agent_grpc.LifecycleServiceBase.__mapping__(_Names()).keys())
    assert "/node_agent.WorkloadService/Create" in node_agent_grpc.WorkloadServiceBase.__mapping__(
        _Names()
    )
    assert (
        "/scheduler.controller.ClusterService/WatchEvents"
        in controller_grpc.ClusterServiceBase.__mapping__(_Names())
    )


class _Names:
    """Stands in for a servicer: any method name resolves to None."""

    def __getattr__(self, name):
        return None
