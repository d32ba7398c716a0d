"""Refusals: a request the scheduler answers with a gRPC status and a message a person can act on.

Raised anywhere in the core; only the bridge turns them into grpclib's `GRPCError`, so the core
does not depend on grpclib.
"""

from __future__ import annotations


class Refusal(Exception):
    """Base: `status` is the name of the gRPC status code the caller receives."""

    status = "UNKNOWN"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(Refusal):
    status = "INVALID_ARGUMENT"


class NotFound(Refusal):
    status = "NOT_FOUND"


class AlreadyExists(Refusal):
    status = "ALREADY_EXISTS"


class PermissionDenied(Refusal):
    status = "PERMISSION_DENIED"


class Unauthenticated(Refusal):
    status = "UNAUTHENTICATED"


class FailedPrecondition(Refusal):
    status = "FAILED_PRECONDITION"


class ResourceExhausted(Refusal):
    status = "RESOURCE_EXHAUSTED"


class Aborted(Refusal):
    status = "ABORTED"


class Unavailable(Refusal):
    status = "UNAVAILABLE"


class RemoteError(Refusal):
    """A call to another component (an Agent) failed; keeps that call's status and message."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
