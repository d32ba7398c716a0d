"""Domain dataclasses: what the core (cluster, placement, events) works on.

The core never sees protobuf; `scheduler.convert` translates at the edge. Units follow the
wire contract: node metrics in bytes and percent, workload requests in millicores and MiB.
`None` always means *unknown* (an older Agent does not report it), never zero.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar, dataclass_transform

MIB = 1024 * 1024  # bytes per MiB: workload requests are in MiB, node reports in bytes
MILLICORES_PER_CORE = 1000  # workload cpu is in millicores


_Record = TypeVar("_Record")


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def record(cls: type[_Record]) -> type[_Record]:
    """An immutable domain record: `@dataclass(frozen=True, slots=True)` as the type checker
    sees it (mypy --strict, run by CI over the core, rejects every assignment to a field), made
    without frozen's run-time check.

    Why: a frozen dataclass's `__init__` sets each field through `object.__setattr__`: 0.82 µs
    for NodeMetrics' seven fields against 0.18 µs for plain slots (measured; `bench/RESULTS.md`,
    issue 15), and every status message builds a NodeMetrics, a NodeView, a NodeEvent and an
    Event, every listed instance an InstanceReport. Otherwise the same: equal records compare and
    hash equal, and pickles keep frozen's format (a list of the field values), which the
    previous release's file is migrated from (`store/sqlite.py`).
    """
    made = dataclass(slots=True, unsafe_hash=True)(cls)
    names = tuple(f.name for f in fields(made))  # type: ignore[arg-type]

    def __getstate__(self: Any) -> list[Any]:
        return [getattr(self, name) for name in names]

    def __setstate__(self: Any, state: list[Any]) -> None:
        for name, value in zip(names, state, strict=False):
            object.__setattr__(self, name, value)

    setattr(made, "__getstate__", __getstate__)  # noqa: B010 (a class attribute, set late)
    setattr(made, "__setstate__", __setstate__)  # noqa: B010
    return made


class NodeState(enum.Enum):
    READY = 0
    LEFT = 1
    LOST = 2


class NodeEventKind(enum.Enum):
    JOINED = 0
    STATUS = 1
    LEFT = 2
    LOST = 3


class InstanceCode(enum.Enum):
    WAITING = 0
    RUNNING = 1
    TERMINATED = 2


class Signal(enum.Enum):
    STOP = 0
    KILL = 1


class WorkloadType(enum.Enum):
    CONTAINER = 0


class Strategy(enum.StrEnum):
    """How feasible nodes are ordered (config `[scheduling] strategy`; `placement.rank`)."""

    SPREAD = "spread"
    """Most free fraction after placement first: load spreads over the cluster."""
    BINPACK = "binpack"
    """Least free fraction after placement first: nodes fill up one after another."""


@record
class InstanceReport:
    """One instance as an Agent sees it, from NodeStatus.instances."""

    instance_id: str
    code: InstanceCode


@record
class NodeMetrics:
    """A node's last good status report. `None`: the Agent does not report that dimension."""

    memory_total: int | None = None  # bytes
    memory_free: int | None = None  # bytes
    cpu_load: float | None = None  # percent 0-100
    cpu_cores: int | None = None
    disk_total: int | None = None  # bytes
    disk_free: int | None = None  # bytes
    instances: tuple[InstanceReport, ...] = ()


@record
class NodeView:
    """An immutable picture of a node at one moment: what events and ListNodes carry."""

    id: str
    address: str
    state: NodeState
    metrics: NodeMetrics | None
    instance_ids: tuple[str, ...]
    last_seen_unix: float


@record
class Resources:
    """A workload's request. `None` on a dimension: not requested (fits anywhere)."""

    cpu: int | None = None  # millicores
    memory: int | None = None  # MiB
    disk: int | None = None  # MiB


NO_RESOURCES = Resources()


@record
class Workload:
    """A validated request to run one instance."""

    instance_id: str
    image: str
    type: WorkloadType = WorkloadType.CONTAINER
    environment: tuple[str, ...] = ()
    resources: Resources | None = None


@record
class Usage:
    """Resource usage an Agent reports for an instance (plain ints, as on the wire)."""

    cpu: int = 0
    memory: int = 0
    disk: int = 0


@record
class InstanceStatus:
    """One status of an instance, as relayed to the Controller."""

    instance_id: str
    code: InstanceCode
    message: str | None = None
    usage: Usage = field(default_factory=Usage)
    node_id: str = ""


@record
class NodeEvent:
    kind: NodeEventKind
    node: NodeView


@record
class InstanceEvent:
    status: InstanceStatus


@record
class Snapshot:
    nodes: tuple[NodeView, ...]
    instances: tuple[InstanceStatus, ...]


@record
class Event:
    """One entry of the event log: a revision and what happened."""

    revision: int
    body: NodeEvent | InstanceEvent | Snapshot
