"""A small etcd v3 client for trio: KV, Lease and Election, over the bridge's grpclib channels.

Stubs are generated from etcd's own protos (protos/etcd/), so there is one gRPC stack in the
process. Every call carries a deadline (`CALL_TIMEOUT`): when etcd loses its own leader, calls
without one hang for seconds. A call that fails for want of an answer (UNAVAILABLE, a deadline,
a broken connection) is tried on the next endpoint, each endpoint once; when none answered,
`StoreUnavailable`. Writes retried this way are idempotent puts and deletes, so a write that
was applied but whose answer was lost does no harm when applied again.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ._proto.etcd import kv_pb2, rpc_grpc, rpc_pb2, v3election_grpc, v3election_pb2
from .errors import RemoteError
from .grpc_bridge import ClientChannel, ServerStream
from .store import StoreUnavailable

log = logging.getLogger(__name__)

CALL_TIMEOUT = 1.0  # s per call and endpoint; etcd answers in ~1 ms, or hangs while leaderless
RETRYABLE = ("UNAVAILABLE", "DEADLINE_EXCEEDED")  # no answer: another endpoint may give one
RANGE_PAGE = 1_000  # keys per Range response while loading (etcd answers at most ~1.5 MiB well)

T = TypeVar("T")


class EtcdError(Exception):
    """etcd answered, and the answer was no (not a question of reaching it)."""


def range_end(prefix: bytes) -> bytes:
    """The end of the key range of everything starting with `prefix` (etcd's convention)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


class EtcdClient:
    """Calls to an etcd cluster, tried on each endpoint in turn."""

    def __init__(
        self, addresses: tuple[tuple[str, int], ...], ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self._channels = [ClientChannel(host, port, ssl_context) for host, port in addresses]
        self._current = 0

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    @property
    def endpoint(self) -> str:
        return self._channels[self._current].target

    def _stub(self, stub_class: type) -> Any:
        return self._channels[self._current].stub(stub_class)

    async def _call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """`call()` on the current endpoint, then on each other one until one answers."""
        errors = []
        for _ in range(len(self._channels)):
            used = self._current
            try:
                return await call()
            except RemoteError as err:
                if err.status not in RETRYABLE:
                    raise EtcdError(f"{what}: {err.status}: {err.message}") from None
                errors.append(f"{self._channels[used].target}: {err.message}")
                if self._current == used:  # not moved on already by a concurrent call
                    self._current = (used + 1) % len(self._channels)
        raise StoreUnavailable(f"etcd did not answer {what} ({'; '.join(errors)})")

    async def _unary(
        self, stub_class: type, method: str, request: Any, timeout: float | None = CALL_TIMEOUT
    ) -> Any:
        async def call() -> Any:
            channel = self._channels[self._current]
            return await channel.unary(
                getattr(channel.stub(stub_class), method), request, timeout=timeout
            )

        return await self._call(method, call)

    # -- KV ------------------------------------------------------------------------------------

    async def txn(self, request: rpc_pb2.TxnRequest) -> rpc_pb2.TxnResponse:
        return await self._unary(rpc_grpc.KVStub, "Txn", request)

    async def load(self, prefix: bytes) -> tuple[list[kv_pb2.KeyValue], int]:
        """Every key under `prefix` at one revision, page by page; and that revision."""
        items: list[kv_pb2.KeyValue] = []
        key, end, revision = prefix, range_end(prefix), 0
        while True:
            response = await self._unary(
                rpc_grpc.KVStub,
                "Range",
                rpc_pb2.RangeRequest(key=key, range_end=end, limit=RANGE_PAGE, revision=revision),
            )
            revision = revision or response.header.revision
            items.extend(response.kvs)
            if not response.more or not response.kvs:
                return items, revision
            key = response.kvs[-1].key + b"\0"

    def watch(self, prefix: bytes, start_revision: int) -> ServerStream:
        """Every change under `prefix` from `start_revision` on (the current endpoint)."""
        channel = self._channels[self._current]
        request = rpc_pb2.WatchRequest(
            create_request=rpc_pb2.WatchCreateRequest(
                key=prefix, range_end=range_end(prefix), start_revision=start_revision
            )
        )
        return channel.server_stream(channel.stub(rpc_grpc.WatchStub).Watch, request)

    def next_endpoint(self) -> None:
        """Move on after a stream from the current endpoint broke."""
        self._current = (self._current + 1) % len(self._channels)

    # -- Lease ---------------------------------------------------------------------------------

    async def grant(self, ttl: int) -> int:
        response = await self._unary(
            rpc_grpc.LeaseStub, "LeaseGrant", rpc_pb2.LeaseGrantRequest(TTL=ttl)
        )
        if response.error:
            raise EtcdError(f"LeaseGrant: {response.error}")
        return response.ID

    async def keep_alive(self, lease: int) -> int:
        """Renew `lease` once; its remaining TTL (0: it expired or was revoked).

        One short LeaseKeepAlive stream per renewal (send one, half-close, read one): renewals
        are seconds apart, and each then has a deadline and moves to another endpoint on its
        own, which one long stream would not."""
        response = await self._unary(
            rpc_grpc.LeaseStub, "LeaseKeepAlive", rpc_pb2.LeaseKeepAliveRequest(ID=lease)
        )
        return response.TTL

    async def revoke(self, lease: int) -> None:
        """Best effort: a lease that cannot be revoked expires by itself."""
        try:
            await self._unary(
                rpc_grpc.LeaseStub, "LeaseRevoke", rpc_pb2.LeaseRevokeRequest(ID=lease)
            )
        except (EtcdError, StoreUnavailable) as err:  # NOT_FOUND: it expired already
            log.info("lease %x not revoked (%s); it expires by itself", lease, err)

    # -- Election ------------------------------------------------------------------------------

    async def campaign(self, name: bytes, lease: int, value: bytes) -> v3election_pb2.LeaderKey:
        """Wait until this campaigner leads `name` (no deadline: it waits for the leader)."""
        response = await self._unary(
            v3election_grpc.ElectionStub,
            "Campaign",
            v3election_pb2.CampaignRequest(name=name, lease=lease, value=value),
            timeout=None,
        )
        return response.leader

    async def resign(self, leader: v3election_pb2.LeaderKey) -> bool:
        """Best effort: False if etcd did not answer (the lease then expires by itself)."""
        try:
            await self._unary(
                v3election_grpc.ElectionStub, "Resign", v3election_pb2.ResignRequest(leader=leader)
            )
            return True
        except (EtcdError, StoreUnavailable) as err:
            log.warning("resigning failed (%s); the leadership ends with its lease", err)
            return False
