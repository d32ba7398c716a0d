"""The standard gRPC services on our port: grpc.health.v1 and server reflection.

Health answers SERVING while the scheduler accepts work and NOT_SERVING once it drains, so
load balancers and `grpc_health_probe` see a shutdown coming. Reflection lets `grpcurl` list
and call our services without the .proto files. Both are open to any client with a valid
certificate (SPEC §3).
"""

from __future__ import annotations

from grpclib.health.check import ServiceStatus
from grpclib.health.service import OVERALL, Health
from grpclib.reflection.service import ServerReflection


def health_service() -> tuple[Health, ServiceStatus]:
    """The Health servable and the status that drives it (set True once listening)."""
    status = ServiceStatus()
    return Health({OVERALL: [status]}), status


def with_reflection(servables: list) -> list:
    """`servables` plus the reflection service that describes them."""
    return ServerReflection.extend(servables)
