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

class WorkloadStatus(_message.Message):
    __slots__ = ("instance_id", "status", "resource_usage")
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
    instance_id: str
    status: Status
    resource_usage: WorkloadStatus.Resources
    def __init__(self, instance_id: _Optional[str] = ..., status: _Optional[_Union[Status, _Mapping]] = ..., resource_usage: _Optional[_Union[WorkloadStatus.Resources, _Mapping]] = ...) -> None: ...

class WorkloadSignal(_message.Message):
    __slots__ = ("instance_id", "signal")
    class Signal(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STOP: _ClassVar[WorkloadSignal.Signal]
        KILL: _ClassVar[WorkloadSignal.Signal]
    STOP: WorkloadSignal.Signal
    KILL: WorkloadSignal.Signal
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    signal: WorkloadSignal.Signal
    def __init__(self, instance_id: _Optional[str] = ..., signal: _Optional[_Union[WorkloadSignal.Signal, str]] = ...) -> None: ...

class Empty(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
