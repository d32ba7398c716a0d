from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NodeState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    READY: _ClassVar[NodeState]
    LEFT: _ClassVar[NodeState]
    LOST: _ClassVar[NodeState]

class InstanceCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WAITING: _ClassVar[InstanceCode]
    RUNNING: _ClassVar[InstanceCode]
    TERMINATED: _ClassVar[InstanceCode]
READY: NodeState
LEFT: NodeState
LOST: NodeState
WAITING: InstanceCode
RUNNING: InstanceCode
TERMINATED: InstanceCode

class StoredMeta(_message.Message):
    __slots__ = ("format", "epoch", "revision")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    format: int
    epoch: str
    revision: int
    def __init__(self, format: _Optional[int] = ..., epoch: _Optional[str] = ..., revision: _Optional[int] = ...) -> None: ...

class StoredTerm(_message.Message):
    __slots__ = ("leader", "since_unix")
    LEADER_FIELD_NUMBER: _ClassVar[int]
    SINCE_UNIX_FIELD_NUMBER: _ClassVar[int]
    leader: str
    since_unix: float
    def __init__(self, leader: _Optional[str] = ..., since_unix: _Optional[float] = ...) -> None: ...

class StoredNode(_message.Message):
    __slots__ = ("id", "host", "port", "state", "generation", "last_seen_unix")
    ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_UNIX_FIELD_NUMBER: _ClassVar[int]
    id: str
    host: str
    port: int
    state: NodeState
    generation: int
    last_seen_unix: float
    def __init__(self, id: _Optional[str] = ..., host: _Optional[str] = ..., port: _Optional[int] = ..., state: _Optional[_Union[NodeState, str]] = ..., generation: _Optional[int] = ..., last_seen_unix: _Optional[float] = ...) -> None: ...

class StoredPlacement(_message.Message):
    __slots__ = ("workload", "node_id", "generation", "latest")
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    LATEST_FIELD_NUMBER: _ClassVar[int]
    workload: Workload
    node_id: str
    generation: int
    latest: InstanceStatus
    def __init__(self, workload: _Optional[_Union[Workload, _Mapping]] = ..., node_id: _Optional[str] = ..., generation: _Optional[int] = ..., latest: _Optional[_Union[InstanceStatus, _Mapping]] = ...) -> None: ...

class Workload(_message.Message):
    __slots__ = ("instance_id", "image", "type", "environment", "resources")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    image: str
    type: int
    environment: _containers.RepeatedScalarFieldContainer[str]
    resources: Resources
    def __init__(self, instance_id: _Optional[str] = ..., image: _Optional[str] = ..., type: _Optional[int] = ..., environment: _Optional[_Iterable[str]] = ..., resources: _Optional[_Union[Resources, _Mapping]] = ...) -> None: ...

class Resources(_message.Message):
    __slots__ = ("cpu", "memory", "disk")
    CPU_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    DISK_FIELD_NUMBER: _ClassVar[int]
    cpu: int
    memory: int
    disk: int
    def __init__(self, cpu: _Optional[int] = ..., memory: _Optional[int] = ..., disk: _Optional[int] = ...) -> None: ...

class InstanceStatus(_message.Message):
    __slots__ = ("instance_id", "code", "message", "usage", "node_id")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    code: InstanceCode
    message: str
    usage: Usage
    node_id: str
    def __init__(self, instance_id: _Optional[str] = ..., code: _Optional[_Union[InstanceCode, str]] = ..., message: _Optional[str] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., node_id: _Optional[str] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("cpu", "memory", "disk")
    CPU_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    DISK_FIELD_NUMBER: _ClassVar[int]
    cpu: int
    memory: int
    disk: int
    def __init__(self, cpu: _Optional[int] = ..., memory: _Optional[int] = ..., disk: _Optional[int] = ...) -> None: ...

class StoredEvent(_message.Message):
    __slots__ = ("revision", "node", "instance")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    revision: int
    node: NodeEvent
    instance: InstanceStatus
    def __init__(self, revision: _Optional[int] = ..., node: _Optional[_Union[NodeEvent, _Mapping]] = ..., instance: _Optional[_Union[InstanceStatus, _Mapping]] = ...) -> None: ...

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
    node: NodeView
    def __init__(self, kind: _Optional[_Union[NodeEvent.Kind, str]] = ..., node: _Optional[_Union[NodeView, _Mapping]] = ...) -> None: ...

class NodeView(_message.Message):
    __slots__ = ("id", "address", "state", "metrics", "instance_ids", "last_seen_unix")
    ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_IDS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_UNIX_FIELD_NUMBER: _ClassVar[int]
    id: str
    address: str
    state: NodeState
    metrics: NodeMetrics
    instance_ids: _containers.RepeatedScalarFieldContainer[str]
    last_seen_unix: float
    def __init__(self, id: _Optional[str] = ..., address: _Optional[str] = ..., state: _Optional[_Union[NodeState, str]] = ..., metrics: _Optional[_Union[NodeMetrics, _Mapping]] = ..., instance_ids: _Optional[_Iterable[str]] = ..., last_seen_unix: _Optional[float] = ...) -> None: ...

class NodeMetrics(_message.Message):
    __slots__ = ("memory_total", "memory_free", "cpu_load", "cpu_cores", "disk_total", "disk_free", "instances")
    MEMORY_TOTAL_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FREE_FIELD_NUMBER: _ClassVar[int]
    CPU_LOAD_FIELD_NUMBER: _ClassVar[int]
    CPU_CORES_FIELD_NUMBER: _ClassVar[int]
    DISK_TOTAL_FIELD_NUMBER: _ClassVar[int]
    DISK_FREE_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    memory_total: int
    memory_free: int
    cpu_load: float
    cpu_cores: int
    disk_total: int
    disk_free: int
    instances: _containers.RepeatedCompositeFieldContainer[InstanceReport]
    def __init__(self, memory_total: _Optional[int] = ..., memory_free: _Optional[int] = ..., cpu_load: _Optional[float] = ..., cpu_cores: _Optional[int] = ..., disk_total: _Optional[int] = ..., disk_free: _Optional[int] = ..., instances: _Optional[_Iterable[_Union[InstanceReport, _Mapping]]] = ...) -> None: ...

class InstanceReport(_message.Message):
    __slots__ = ("instance_id", "code")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    code: InstanceCode
    def __init__(self, instance_id: _Optional[str] = ..., code: _Optional[_Union[InstanceCode, str]] = ...) -> None: ...
