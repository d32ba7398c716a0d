"""The domain records (`scheduler.model.record`): immutable by contract, built cheaply.

At run time a record is a plain slots dataclass (frozen's per-field `object.__setattr__` cost
4x its construction on the status hot path); mypy --strict, run by `.ci/lint`, is what rejects
assignments. What must still hold at run time: equality and hashing by value, and pickles in
the frozen format the previous release's SQLite file holds (`store/sqlite.py` migrates it).
"""

from __future__ import annotations

import dataclasses
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

from scheduler import model
from scheduler.model import InstanceCode, InstanceStatus, NodeMetrics, Usage

ROOT = Path(__file__).resolve().parent.parent


def test_records_compare_and_hash_by_value() -> None:
    one, same, other = NodeMetrics(1, 2, 3.0, 4), NodeMetrics(1, 2, 3.0, 4), NodeMetrics(1)
    assert one == same and one != other
    assert hash(one) == hash(same)
    assert len({one, same, other}) == 2
    status = InstanceStatus("i-1", InstanceCode.RUNNING, usage=Usage(cpu=5))
    assert status == InstanceStatus("i-1", InstanceCode.RUNNING, usage=Usage(cpu=5))
    assert hash(status) == hash(InstanceStatus("i-1", InstanceCode.RUNNING, usage=Usage(cpu=5)))
    assert not hasattr(one, "__dict__"), "records keep their slots"


def test_a_record_pickles_exactly_as_the_frozen_dataclass_did(monkeypatch) -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class NodeMetrics:  # the previous release's class, field for field
        memory_total: int | None = None
        memory_free: int | None = None
        cpu_load: float | None = None
        cpu_cores: int | None = None
        disk_total: int | None = None
        disk_free: int | None = None
        instances: tuple[model.InstanceReport, ...] = ()

    NodeMetrics.__module__, NodeMetrics.__qualname__ = "scheduler.model", "NodeMetrics"
    record = model.NodeMetrics(8 << 30, 4 << 30, 12.5, 4)
    with monkeypatch.context() as patch:
        patch.setattr(model, "NodeMetrics", NodeMetrics)
        frozen = pickle.dumps(NodeMetrics(8 << 30, 4 << 30, 12.5, 4), pickle.HIGHEST_PROTOCOL)
    assert pickle.dumps(record, pickle.HIGHEST_PROTOCOL) == frozen
    assert pickle.loads(frozen) == record and type(pickle.loads(frozen)) is model.NodeMetrics


def test_the_type_checker_rejects_assigning_to_a_record(tmp_path) -> None:
    source = tmp_path / "mutates.py"
    source.write_text(
        textwrap.dedent(
            """
            from scheduler.model import NodeMetrics

            NodeMetrics(1).memory_total = 2
            """
        )
    )
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(source)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert 'Property "memory_total" defined in "NodeMetrics" is read-only' in checked.stdout
