from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StatusCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WAITING: _ClassVar[StatusCode]
    RUNNING: _ClassVar[StatusCode]
    TERMINATED: _ClassVar[StatusCode]
WAITING: StatusCode
RUNNING: StatusCode
TERMINATED: StatusCode

class ConnectionRequest(_message.Message):
    __slots__ = ("id", "port")
    ID_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    id: str
    port: int
    def __init__(self, id: _Optional[str] = ..., port: _Optional[int] = ...) -> None: ...

class DisconnectionNotice(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class Empty(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Memory(_message.Message):
    __slots__ = ("total", "free")
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    FREE_FIELD_NUMBER: _ClassVar[int]
    total: int
    free: int
    def __init__(self, total: _Optional[int] = ..., free: _Optional[int] = ...) -> None: ...

class CpuLoad(_message.Message):
    __slots__ = ("load", "cores")
    LOAD_FIELD_NUMBER: _ClassVar[int]
    CORES_FIELD_NUMBER: _ClassVar[int]
    load: float
    cores: int
    def __init__(self, load: _Optional[float] = ..., cores: _Optional[int] = ...) -> None: ...

class Disk(_message.Message):
    __slots__ = ("total", "free")
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    FREE_FIELD_NUMBER: _ClassVar[int]
    total: int
    free: int
    def __init__(self, total: _Optional[int] = ..., free: _Optional[int] = ...) -> None: ...

class InstanceReport(_message.Message):
    __slots__ = ("instance_id", "code")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    code: StatusCode
    def __init__(self, instance_id: _Optional[str] = ..., code: _Optional[_Union[StatusCode, str]] = ...) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("id", "memory", "cpu_load", "disk", "instances")
    ID_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    CPU_LOAD_FIELD_NUMBER: _ClassVar[int]
    DISK_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    id: str
    memory: Memory
    cpu_load: CpuLoad
    disk: Disk
    instances: _containers.RepeatedCompositeFieldContainer[InstanceReport]
    def __init__(self, id: _Optional[str] = ..., memory: _Optional[_Union[Memory, _Mapping]] = ..., cpu_load: _Optional[_Union[CpuLoad, _Mapping]] = ..., disk: _Optional[_Union[Disk, _Mapping]] = ..., instances: _Optional[_Iterable[_Union[InstanceReport, _Mapping]]] = ...) -> None: ...
