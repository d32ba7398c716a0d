"""Protobuf ⇄ domain at the edge: validate what arrives, build what leaves.

Every `*_from_wire` function either returns a domain object or raises `InvalidArgument` naming
the field, so handlers stay thin and the core never sees protobuf.
"""

from __future__ import annotations

import math
from typing import Any

from ._proto import agent_pb2, controller_pb2, node_agent_pb2
from .enum_maps import EnumMap
from .errors import InvalidArgument
from .model import (
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
    Signal,
    Snapshot,
    Usage,
    Workload,
    WorkloadType,
)
from .names import INSTANCE_ID_RULE, NODE_ID_RULE, valid_instance_id, valid_node_id

MAX_REPORTED_INSTANCES = 10_000  # instances one NodeStatus may list; more is not a real node
# The most a real node reports; beyond is a lie that would rank it first. 1 PiB of memory is 20
# times the largest single machine's; 8 PiB of local disk is past any one node's drive bays,
# and 2^53 is where the placement columns (float64) stop holding integers exactly.
MAX_BYTES = {"memory": 1 << 50, "disk": 1 << 53}

# -- enums, member by member (the domain's own values are not the wire's) ----------------------
# The three StatusCode enums (agent.proto, controller.proto, node_agent.proto) are separate types
# that happen to agree; each gets its own map, written out once here.


def _status_codes(name: str, wire: Any) -> EnumMap[InstanceCode, Any]:
    return EnumMap(
        InstanceCode,
        name,
        wire.values(),
        {
            InstanceCode.WAITING: wire.WAITING,
            InstanceCode.RUNNING: wire.RUNNING,
            InstanceCode.TERMINATED: wire.TERMINATED,
        },
    )


AGENT_CODE = _status_codes("agent.StatusCode", agent_pb2.StatusCode)
CONTROLLER_CODE = _status_codes("controller.StatusCode", controller_pb2.Status.StatusCode)
NODE_AGENT_CODE = _status_codes("node_agent.StatusCode", node_agent_pb2.Status.StatusCode)
_State = controller_pb2.Node.State
NODE_STATE = EnumMap(
    NodeState,
    "controller.Node.State",
    _State.values(),
    {NodeState.READY: _State.READY, NodeState.LEFT: _State.LEFT, NodeState.LOST: _State.LOST},
)
_Kind = controller_pb2.NodeEvent.Kind
NODE_EVENT_KIND = EnumMap(
    NodeEventKind,
    "controller.NodeEvent.Kind",
    _Kind.values(),
    {
        NodeEventKind.JOINED: _Kind.JOINED,
        NodeEventKind.STATUS: _Kind.STATUS,
        NodeEventKind.LEFT: _Kind.LEFT,
        NodeEventKind.LOST: _Kind.LOST,
    },
)
_Signal = node_agent_pb2.WorkloadSignal.Signal
SIGNAL = EnumMap(
    Signal,
    "node_agent.WorkloadSignal.Signal",
    _Signal.values(),
    {Signal.STOP: _Signal.STOP, Signal.KILL: _Signal.KILL},
)
_ControllerType = controller_pb2.Workload.Type
CONTROLLER_TYPE = EnumMap(
    WorkloadType,
    "controller.Workload.Type",
    _ControllerType.values(),
    {WorkloadType.CONTAINER: _ControllerType.CONTAINER},
)
_NodeAgentType = node_agent_pb2.Workload.Type
NODE_AGENT_TYPE = EnumMap(
    WorkloadType,
    "node_agent.Workload.Type",
    _NodeAgentType.values(),
    {WorkloadType.CONTAINER: _NodeAgentType.CONTAINER},
)


def node_id_from_wire(value: str, field: str = "id") -> str:
    """A node id as SPEC §2.1 allows, else InvalidArgument naming `field`."""
    if not valid_node_id(value):
        raise InvalidArgument(f"{field} {_shown(value)} is not a valid id: {NODE_ID_RULE}")
    return value


def instance_id_from_wire(value: str, field: str = "instance_id") -> str:
    """An instance id as SPEC §2.2 allows, else InvalidArgument naming `field`."""
    if not valid_instance_id(value):
        raise InvalidArgument(f"{field} {_shown(value)} is not a valid id: {INSTANCE_ID_RULE}")
    return value


def _shown(value: str) -> str:
    """A peer's text quoted for an error message, cut short enough to read."""
    return repr(value if len(value) <= 64 else value[:61] + "...")


def port_from_wire(value: int) -> int:
    if not 1 <= value <= 65535:
        raise InvalidArgument(f"port {value} is out of range: must be 1-65535")
    return value


def _pair(part: Any, name: str) -> tuple[int | None, int | None]:
    """(total, free) of a Memory/Disk submessage; unknown when absent or total is 0 (an absent
    submessage reads as one with total 0: no HasField needed, on the ingest hot path)."""
    total = part.total
    if not total:
        return None, None
    free = part.free
    if total > MAX_BYTES[name]:
        raise InvalidArgument(
            f"{name}.total ({total} bytes) exceeds {MAX_BYTES[name]} "
            f"({MAX_BYTES[name] >> 50} PiB): no node has that much"
        )
    if free > total:
        raise InvalidArgument(f"{name}.free ({free}) exceeds {name}.total ({total})")
    return total, free


def node_status_from_wire(
    message: agent_pb2.NodeStatus,
) -> tuple[str, NodeMetrics, tuple[InstanceReport, ...]]:
    """Validate one NodeStatus; return (node id, metrics, instance reports). Unreported
    dimensions stay None; the metrics hold no reports (see `Cluster.report`)."""
    node_id = node_id_from_wire(message.id)
    memory_total, memory_free = _pair(message.memory, "memory")
    disk_total, disk_free = _pair(message.disk, "disk")
    cpu_load = cpu_cores = None
    if message.HasField("cpu_load"):
        cpu = message.cpu_load
        load = cpu.load
        if not (math.isfinite(load) and 0.0 <= load <= 100.0):
            raise InvalidArgument(f"cpu_load.load {load!r} is not a percentage between 0 and 100")
        cpu_load = load
        cpu_cores = cpu.cores or None
    reports = message.instances
    instances: tuple[InstanceReport, ...] = ()
    if reports:
        if len(reports) > MAX_REPORTED_INSTANCES:
            raise InvalidArgument(
                f"instances lists {len(reports)} entries; "
                f"at most {MAX_REPORTED_INSTANCES} are accepted"
            )
        instances = tuple(
            InstanceReport(
                instance_id_from_wire(r.instance_id, "instances.instance_id"), _code(r.code)
            )
            for r in reports
        )
    return (
        node_id,
        NodeMetrics(memory_total, memory_free, cpu_load, cpu_cores, disk_total, disk_free),
        instances,
    )


def _code(value: int) -> InstanceCode:
    code = AGENT_CODE.from_wire(value)
    if code is None:
        raise InvalidArgument(f"instance status code {value} is unknown ({AGENT_CODE.known()})")
    return code


# -- to the Controller -----------------------------------------------------------------------


def node_to_wire(view: NodeView) -> controller_pb2.Node:
    node = controller_pb2.Node(
        id=view.id,
        address=view.address,
        state=NODE_STATE.to_wire(view.state),
        instance_ids=view.instance_ids,
        last_seen_unix=view.last_seen_unix,
    )
    metrics = view.metrics
    if metrics is not None:
        node.memory_total = metrics.memory_total or 0
        node.memory_free = metrics.memory_free or 0
        node.cpu_load = metrics.cpu_load or 0.0
        node.cpu_cores = metrics.cpu_cores or 0
        node.disk_total = metrics.disk_total or 0
        node.disk_free = metrics.disk_free or 0
    return node


def instance_status_to_wire(status: InstanceStatus) -> controller_pb2.WorkloadStatus:
    wire = controller_pb2.WorkloadStatus(instance_id=status.instance_id, node_id=status.node_id)
    wire.status.code = CONTROLLER_CODE.to_wire(status.code)
    if status.message is not None:
        wire.status.message = status.message
    usage = wire.resource_usage
    usage.cpu, usage.memory, usage.disk = status.usage.cpu, status.usage.memory, status.usage.disk
    return wire


def event_to_wire(epoch: str, event: Event) -> controller_pb2.ClusterEvent:
    wire = controller_pb2.ClusterEvent(epoch=epoch, revision=event.revision)
    body = event.body
    if isinstance(body, NodeEvent):
        wire.node.kind = NODE_EVENT_KIND.to_wire(body.kind)
        wire.node.node.CopyFrom(node_to_wire(body.node))
    elif isinstance(body, InstanceEvent):
        wire.instance.CopyFrom(instance_status_to_wire(body.status))
    else:
        assert isinstance(body, Snapshot)
        wire.snapshot.nodes.extend(node_to_wire(view) for view in body.nodes)
        wire.snapshot.instances.extend(instance_status_to_wire(s) for s in body.instances)
    return wire


# -- workloads (Controller → scheduler → Agent) ---------------------------------------------

MAX_IMAGE_CHARS = 4096  # longer than any real image reference
MAX_ENV_ENTRIES = 1024  # environment entries per workload
MAX_ENV_ENTRY_CHARS = 32 * 1024  # one entry (KEY=VALUE by convention, passed on as given)


def workload_from_wire(request: controller_pb2.SchedulingRequest) -> Workload:
    """Validate a SchedulingRequest (SPEC §2.2 step 1); InvalidArgument names the field."""
    if not request.HasField("workload"):
        raise InvalidArgument("workload is missing")
    wire = request.workload
    instance_id = instance_id_from_wire(wire.instance_id, "workload.instance_id")
    if not wire.image:
        raise InvalidArgument("workload.image is empty: name the image to run")
    if len(wire.image) > MAX_IMAGE_CHARS:
        raise InvalidArgument(
            f"workload.image is {len(wire.image)} characters; "
            f"at most {MAX_IMAGE_CHARS} are accepted"
        )
    workload_type = CONTROLLER_TYPE.from_wire(wire.type)
    if workload_type is None:
        raise InvalidArgument(f"workload.type {wire.type} is unknown ({CONTROLLER_TYPE.known()})")
    if len(wire.environment) > MAX_ENV_ENTRIES:
        raise InvalidArgument(
            f"workload.environment has {len(wire.environment)} entries; "
            f"at most {MAX_ENV_ENTRIES} are accepted"
        )
    for index, entry in enumerate(wire.environment):
        if not entry:
            raise InvalidArgument(f"workload.environment[{index}] is empty")
        if len(entry) > MAX_ENV_ENTRY_CHARS:
            raise InvalidArgument(
                f"workload.environment[{index}] is {len(entry)} characters; "
                f"at most {MAX_ENV_ENTRY_CHARS} are accepted"
            )
    resources = None
    if wire.HasField("resource_limits"):
        limits = wire.resource_limits
        values = {}
        for name in ("cpu", "memory", "disk"):
            if limits.HasField(name):
                value = getattr(limits, name)
                if value < 0:
                    raise InvalidArgument(
                        f"workload.resource_limits.{name} is {value}; must be >= 0"
                    )
                values[name] = value
        resources = Resources(**values)
    return Workload(instance_id, wire.image, workload_type, tuple(wire.environment), resources)


def workload_to_agent(workload: Workload) -> node_agent_pb2.Workload:
    wire = node_agent_pb2.Workload(
        instance_id=workload.instance_id,
        type=NODE_AGENT_TYPE.to_wire(workload.type),
        image=workload.image,
        environment=workload.environment,
    )
    if workload.resources is not None:
        limits = wire.resource_limits
        limits.SetInParent()
        for name in ("cpu", "memory", "disk"):
            value = getattr(workload.resources, name)
            if value is not None:
                setattr(limits, name, value)
    return wire


def instance_status_from_agent(
    wire: node_agent_pb2.WorkloadStatus, instance_id: str, node_id: str
) -> InstanceStatus:
    """An Agent's WorkloadStatus for `instance_id`; the Agent's own id field is not trusted."""
    code = NODE_AGENT_CODE.from_wire(wire.status.code)
    if code is None:
        raise InvalidArgument(
            f"Agent on {node_id} sent unknown status code {wire.status.code} for {instance_id}"
        )
    usage = wire.resource_usage
    return InstanceStatus(
        instance_id=instance_id,
        code=code,
        message=wire.status.message if wire.status.HasField("message") else None,
        usage=Usage(usage.cpu, usage.memory, usage.disk),
        node_id=node_id,
    )


def signal_to_agent(instance_id: str, signal: Signal) -> node_agent_pb2.WorkloadSignal:
    return node_agent_pb2.WorkloadSignal(instance_id=instance_id, signal=SIGNAL.to_wire(signal))
