"""A fake standby scheduler: a real grpclib server on 127.0.0.1 that answers every
`scheduler.agent.*` and `scheduler.controller.*` call UNAVAILABLE with the trailing metadata
`orka-leader: <leader>` (none while `leader` is ""), as SPEC §4.1 says a standby does.

Plain asyncio, no trio: the simulator's driver processes use it directly, the trio tests
through `trio_asyncio.aio_as_trio`.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from grpclib.const import Status
from grpclib.server import Server

from scheduler._proto import agent_grpc, controller_grpc
from scheduler.follow import LEADER_METADATA

SERVICES = (
    agent_grpc.LifecycleServiceBase,
    agent_grpc.StatusUpdateServiceBase,
    controller_grpc.SchedulingServiceBase,
    controller_grpc.ClusterServiceBase,
)


class _AnyMethod:
    """Stands in for a servicer when reading a generated base's method table."""

    def __getattr__(self, name: str) -> None:
        return None


class FakeStandby:
    """Answers every call of the scheduler's own services UNAVAILABLE, naming `leader`.

    `leader` may change at any time (the election moved on); `calls` counts the calls
    answered, by method name ("JoinCluster", "WatchEvents", ...).
    """

    def __init__(self, leader: str = "") -> None:
        self.leader = leader
        self.calls: Counter[str] = Counter()
        self.port = 0
        self._server: Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __mapping__(self):
        return {
            path: handler._replace(func=self._refuse(path.rsplit("/", 1)[1]))
            for service in SERVICES
            for path, handler in service.__mapping__(_AnyMethod()).items()
        }

    def _refuse(self, method: str):
        async def refuse(stream) -> None:
            self.calls[method] += 1
            leader = self.leader
            await stream.send_trailing_metadata(
                status=Status.UNAVAILABLE,
                status_message=f"standby: not the leader; leader at {leader or '(none yet)'}",
                metadata={LEADER_METADATA: leader} if leader else None,
            )

        return refuse

    async def start(self, port: int = 0) -> int:
        """Serve on 127.0.0.1:`port` (0: any) in the running asyncio loop; return the port."""
        self._server = Server([self])
        await self._server.start("127.0.0.1", port)
        self.port = self._server._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None
