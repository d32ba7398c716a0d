from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Resources(_message.Message):
    __slots__ = ("cpu", "memory", "disk")
    CPU_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    DISK_FIELD_NUMBER: _ClassVar[int]
    cpu: int
    memory: int
    disk: int
    def __init__(self, cpu: _Optional[int] = ..., memory: _Optional[int] = ..., disk: _Optional[int] = ...) -> None: ...

class Workload(_message.Message):
    __slots__ = ("instance_id", "type", "image", "environment", "resource_limits")
    class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        CONTAINER: _ClassVar[Workload.Type]
    CONTAINER: Workload.Type
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_LIMITS_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    type: Workload.Type
    image: str
    environment: _containers.RepeatedScalarFieldContainer[str]
    resource_limits: Resources
    def __init__(self, instance_id: _Optional[str] = ..., type: _Optional[_Union[Workload.Type, str]] = ..., image: _Optional[str] = ..., environment: _Optional[_Iterable[str]] = ..., resource_limits: _Optional[_Union[Resources, _Mapping]] = ...) -> None: ...

class Status(_message.Message):
    __slots__ = ("code", "message")
    class StatusCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        WAITING: _ClassVar[Status.StatusCode]
        RUNNING: _ClassVar[Status.StatusCode]
        TERMINATED: _ClassVar[Status.StatusCode]
    WAITING: Status.StatusCode
    RUNNING: Status.StatusCode
    TERMINATED: Status.StatusCode
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: Status.StatusCode
    message: str
    def __init__(self, code: _Optional[_Union[Status.StatusCode, str]] = ..., message: _Optional[str] = ...) -> None: ...

class Empty(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SchedulingRequest(_message.Message):
    __slots__ = ("workload",)
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    workload: Workload
    def __init__(self, workload: _Optional[_Union[Workload, _Mapping]] = ...) -> None: ...

class WorkloadStatus(_message.Message):
    __slots__ = ("instance_id", "status", "resource_usage", "node_id")
    class Resources(_message.Message):
        __slots__ = ("cpu", "memory", "disk")
        CPU_FIELD_NUMBER: _ClassVar[int]
        MEMORY_FIELD_NUMBER: _ClassVar[int]
        DISK_FIELD_NUMBER: _ClassVar[int]
        cpu: int
        memory: int
        disk: int
        def __init__(self, cpu: _Optional[int] = ..., memory: _Optional[int] = ..., disk: _Optional[int] = ...) -> None: ...
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_USAGE_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    status: Status
    resource_usage: WorkloadStatus.Resources
    node_id: str
    def __init__(self, instance_id: _Optional[str] = ..., status: _Optional[_Union[Status, _Mapping]] = ..., resource_usage: _Optional[_Union[WorkloadStatus.Resources, _Mapping]] = ..., node_id: _Optional[str] = ...) -> None: ...

class WorkloadInstance(_message.Message):
    __slots__ = ("instance_id",)
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    def __init__(self, instance_id: _Optional[str] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("epoch", "after_revision")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    AFTER_REVISION_FIELD_NUMBER: _ClassVar[int]
    epoch: str
    after_revision: int
    def __init__(self, epoch: _Optional[str] = ..., after_revision: _Optional[int] = ...) -> None: ...

class Node(_message.Message):
    __slots__ = ("id", "address", "state", "memory_total", "memory_free", "cpu_load", "cpu_cores", "disk_total", "disk_free", "instance_ids", "last_seen_unix")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        READY: _ClassVar[Node.State]
        LEFT: _ClassVar[Node.State]
        LOST: _ClassVar[Node.State]
    READY: Node.State
    LEFT: Node.State
    LOST: Node.State
    ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FREE_FIELD_NUMBER: _ClassVar[int]
    CPU_LOAD_FIELD_NUMBER: _ClassVar[int]
    CPU_CORES_FIELD_NUMBER: _ClassVar[int]
    DISK_TOTAL_FIELD_NUMBER: _ClassVar[int]
    DISK_FREE_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_IDS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_UNIX_FIELD_NUMBER: _ClassVar[int]
    id: str
    address: str
    state: Node.State
    memory_total: int
    memory_free: int
    cpu_load: float
    cpu_cores: int
    disk_total: int
    disk_free: int
    instance_ids: _containers.RepeatedScalarFieldContainer[str]
    last_seen_unix: float
    def __init__(self, id: _Optional[str] = ..., address: _Optional[str] = ..., state: _Optional[_Union[Node.State, str]] = ..., memory_total: _Optional[int] = ..., memory_free: _Optional[int] = ..., cpu_load: _Optional[float] = ..., cpu_cores: _Optional[int] = ..., disk_total: _Optional[int] = ..., disk_free: _Optional[int] = ..., instance_ids: _Optional[_Iterable[str]] = ..., last_seen_unix: _Optional[float] = ...) -> None: ...

class NodeEvent(_message.Message):
    __slots__ = ("kind", "node")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        JOINED: _ClassVar[NodeEvent.Kind]
        STATUS: _ClassVar[NodeEvent.Kind]
        LEFT: _ClassVar[NodeEvent.Kind]
        LOST: _ClassVar[NodeEvent.Kind]
    JOINED: NodeEvent.Kind
    STATUS: NodeEvent.Kind
    LEFT: NodeEvent.Kind
    LOST: NodeEvent.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    kind: NodeEvent.Kind
    node: Node
    def __init__(self, kind: _Optional[_Union[NodeEvent.Kind, str]] = ..., node: _Optional[_Union[Node, _Mapping]] = ...) -> None: ...

class Snapshot(_message.Message):
    __slots__ = ("nodes", "instances")
    NODES_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[Node]
    instances: _containers.RepeatedCompositeFieldContainer[WorkloadStatus]
    def __init__(self, nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ..., instances: _Optional[_Iterable[_Union[WorkloadStatus, _Mapping]]] = ...) -> None: ...

class ClusterEvent(_message.Message):
    __slots__ = ("epoch", "revision", "snapshot", "node", "instance")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    epoch: str
    revision: int
    snapshot: Snapshot
    node: NodeEvent
    instance: WorkloadStatus
    def __init__(self, epoch: _Optional[str] = ..., revision: _Optional[int] = ..., snapshot: _Optional[_Union[Snapshot, _Mapping]] = ..., node: _Optional[_Union[NodeEvent, _Mapping]] = ..., instance: _Optional[_Union[WorkloadStatus, _Mapping]] = ...) -> None: ...

class NodeList(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[Node]
    def __init__(self, nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ...) -> None: ...
