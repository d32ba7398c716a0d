"""What is stored, and how: keys, and values encoded as the messages of protos/store.proto.

The same layout serves both backends (SQLite rows, etcd keys under `[etcd] prefix`); it is a
contract like the wire API (SPEC §4.1), so it is explicit and versioned, never pickled:
  meta                      StoredMeta: format, epoch, revision checkpoint
  nodes/<node id>           StoredNode
  placements/<instance id>  StoredPlacement (workload, node, generation, latest status)
  events/<revision>         StoredEvent, non-STATUS events only; 20 digits, so keys sort
                            in revision order
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError

from .._proto import store_pb2
from ..enum_maps import D, EnumMap
from ..model import (
    Event,
    InstanceCode,
    InstanceEvent,
    InstanceReport,
    InstanceStatus,
    NodeEvent,
    NodeEventKind,
    NodeMetrics,
    NodeState,
    NodeView,
    Resources,
    Usage,
    Workload,
    WorkloadType,
)

FORMAT = 1  # StoredMeta.format this version writes; additive changes keep it (protobuf rules)
REVISION_SLACK = 1_000_000  # revisions a run may hand out (STATUS events) past its checkpoint
META = "meta"
NODES = "nodes/"
PLACEMENTS = "placements/"
EVENTS = "events/"


class FormatError(Exception):
    """The stored state is not something this version can read (a newer format, garbage)."""


# -- enums, member by member (the stored numbers are a contract of their own) ------------------
STATE = EnumMap(
    NodeState,
    "store.NodeState",
    store_pb2.NodeState.values(),
    {
        NodeState.READY: store_pb2.READY,
        NodeState.LEFT: store_pb2.LEFT,
        NodeState.LOST: store_pb2.LOST,
    },
)
CODE = EnumMap(
    InstanceCode,
    "store.InstanceCode",
    store_pb2.InstanceCode.values(),
    {
        InstanceCode.WAITING: store_pb2.WAITING,
        InstanceCode.RUNNING: store_pb2.RUNNING,
        InstanceCode.TERMINATED: store_pb2.TERMINATED,
    },
)
_Kind = store_pb2.NodeEvent.Kind
KIND = EnumMap(
    NodeEventKind,
    "store.NodeEvent.Kind",
    _Kind.values(),
    {
        NodeEventKind.JOINED: _Kind.JOINED,
        NodeEventKind.STATUS: _Kind.STATUS,
        NodeEventKind.LEFT: _Kind.LEFT,
        NodeEventKind.LOST: _Kind.LOST,
    },
)
TYPE = EnumMap(WorkloadType, "store.Workload.type", [0], {WorkloadType.CONTAINER: 0})


def _from_stored(mapping: EnumMap[D, Any], value: int) -> D:
    """The member for a stored number; ValueError (decode_state's FormatError, with the key)
    for a number this version does not know."""
    member = mapping.from_wire(value)
    if member is None:
        raise ValueError(
            f"{mapping.wire_name} {value} is unknown to this version ({mapping.known()})"
        )
    return member


def node_key(node_id: str) -> str:
    return NODES + node_id


def placement_key(instance_id: str) -> str:
    return PLACEMENTS + instance_id


def event_key(revision: int) -> str:
    return f"{EVENTS}{revision:020d}"


@dataclass
class NodeRow:
    id: str
    host: str
    port: int
    state: NodeState
    generation: int
    last_seen: float


@dataclass
class PlacementRow:
    workload: Workload
    node_id: str
    generation: int
    latest: InstanceStatus


@dataclass
class Restored:
    """What the previous leader (or run) left: empty on a first start."""

    epoch: str | None = None
    revision: int = 0
    nodes: list[NodeRow] = field(default_factory=list)
    placements: list[PlacementRow] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)


# -- encoding ---------------------------------------------------------------------------------


def encode_meta(epoch: str, revision: int) -> bytes:
    return store_pb2.StoredMeta(format=FORMAT, epoch=epoch, revision=revision).SerializeToString()


def encode_node(row: NodeRow) -> bytes:
    return store_pb2.StoredNode(
        id=row.id,
        host=row.host,
        port=row.port,
        state=STATE.to_wire(row.state),
        generation=row.generation,
        last_seen_unix=row.last_seen,
    ).SerializeToString()


def encode_placement(row: PlacementRow) -> bytes:
    return store_pb2.StoredPlacement(
        workload=_workload(row.workload),
        node_id=row.node_id,
        generation=row.generation,
        latest=_status(row.latest),
    ).SerializeToString()


def encode_event(event: Event) -> bytes:
    body = event.body
    if isinstance(body, InstanceEvent):
        return store_pb2.StoredEvent(
            revision=event.revision, instance=_status(body.status)
        ).SerializeToString()
    assert isinstance(body, NodeEvent), f"only node and instance events are stored, not {body}"
    return store_pb2.StoredEvent(
        revision=event.revision,
        node=store_pb2.NodeEvent(kind=KIND.to_wire(body.kind), node=_view(body.node)),
    ).SerializeToString()


def _workload(workload: Workload) -> store_pb2.Workload:
    message = store_pb2.Workload(
        instance_id=workload.instance_id,
        image=workload.image,
        type=TYPE.to_wire(workload.type),
        environment=workload.environment,
    )
    if workload.resources is not None:
        resources = workload.resources
        message.resources.SetInParent()
        for name in ("cpu", "memory", "disk"):
            value = getattr(resources, name)
            if value is not None:
                setattr(message.resources, name, value)
    return message


def _status(status: InstanceStatus) -> store_pb2.InstanceStatus:
    usage = status.usage
    message = store_pb2.InstanceStatus(
        instance_id=status.instance_id,
        code=CODE.to_wire(status.code),
        node_id=status.node_id,
        usage=store_pb2.Usage(cpu=usage.cpu, memory=usage.memory, disk=usage.disk),
    )
    if status.message is not None:
        message.message = status.message
    return message


_METRICS = ("memory_total", "memory_free", "cpu_load", "cpu_cores", "disk_total", "disk_free")


def _view(view: NodeView) -> store_pb2.NodeView:
    message = store_pb2.NodeView(
        id=view.id,
        address=view.address,
        state=STATE.to_wire(view.state),
        instance_ids=view.instance_ids,
        last_seen_unix=view.last_seen_unix,
    )
    metrics = view.metrics
    if metrics is not None:
        message.metrics.SetInParent()
        for name in _METRICS:
            value = getattr(metrics, name)
            if value is not None:
                setattr(message.metrics, name, value)
        for report in metrics.instances:
            message.metrics.instances.add(
                instance_id=report.instance_id, code=CODE.to_wire(report.code)
            )
    return message


# -- decoding ---------------------------------------------------------------------------------


def decode_state(items: Iterable[tuple[str, bytes]], retained: int) -> Restored:
    """The Restored state from every stored (key, value); keys the layout does not know (a
    newer version's additions) are skipped. Raises FormatError for state this version cannot
    read."""
    meta = None
    nodes, placements, events = [], [], []
    try:
        for key, value in items:
            if key == META:
                meta = store_pb2.StoredMeta.FromString(value)
            elif key.startswith(NODES):
                nodes.append(_node_row(store_pb2.StoredNode.FromString(value)))
            elif key.startswith(PLACEMENTS):
                placements.append(_placement_row(store_pb2.StoredPlacement.FromString(value)))
            elif key.startswith(EVENTS):
                events.append(_event(store_pb2.StoredEvent.FromString(value)))
    except (DecodeError, ValueError) as err:  # ValueError: an enum value this version lacks
        raise FormatError(f"a stored value does not decode ({key}): {err}") from None
    if meta is None:
        return Restored()
    if meta.format > FORMAT:
        raise FormatError(
            f"the stored state has format {meta.format}; this version reads up "
            f"to {FORMAT}: upgrade this scheduler"
        )
    events.sort(key=lambda event: event.revision)
    events = events[-retained:]
    last_event = events[-1].revision if events else 0
    return Restored(
        epoch=meta.epoch,
        revision=max(meta.revision + REVISION_SLACK, last_event),
        nodes=nodes,
        placements=placements,
        events=events,
    )


def _node_row(message: store_pb2.StoredNode) -> NodeRow:
    return NodeRow(
        message.id,
        message.host,
        message.port,
        _from_stored(STATE, message.state),
        message.generation,
        message.last_seen_unix,
    )


def _placement_row(message: store_pb2.StoredPlacement) -> PlacementRow:
    workload = message.workload
    resources = None
    if workload.HasField("resources"):
        resources = Resources(
            **{
                name: getattr(workload.resources, name)
                if workload.resources.HasField(name)
                else None
                for name in ("cpu", "memory", "disk")
            }
        )
    return PlacementRow(
        Workload(
            workload.instance_id,
            workload.image,
            _from_stored(TYPE, workload.type),
            tuple(workload.environment),
            resources,
        ),
        message.node_id,
        message.generation,
        _instance_status(message.latest),
    )


def _instance_status(message: store_pb2.InstanceStatus) -> InstanceStatus:
    usage = message.usage
    return InstanceStatus(
        message.instance_id,
        _from_stored(CODE, message.code),
        message.message if message.HasField("message") else None,
        Usage(usage.cpu, usage.memory, usage.disk),
        message.node_id,
    )


def _event(message: store_pb2.StoredEvent) -> Event:
    if message.HasField("instance"):
        return Event(message.revision, InstanceEvent(_instance_status(message.instance)))
    node = message.node
    return Event(message.revision, NodeEvent(_from_stored(KIND, node.kind), _node_view(node.node)))


def _node_view(message: store_pb2.NodeView) -> NodeView:
    metrics = None
    if message.HasField("metrics"):
        stored = message.metrics
        metrics = NodeMetrics(
            **{name: getattr(stored, name) if stored.HasField(name) else None for name in _METRICS},
            instances=tuple(
                InstanceReport(report.instance_id, _from_stored(CODE, report.code))
                for report in stored.instances
            ),
        )
    return NodeView(
        message.id,
        message.address,
        _from_stored(STATE, message.state),
        metrics,
        tuple(message.instance_ids),
        message.last_seen_unix,
    )
