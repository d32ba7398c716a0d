"""Calls to Agents: channels per node generation, Create attempts and Signals.

The Agent's address is the peer IP of its JoinCluster call and the port it declared. Channels
are opened on first use and closed when the node's generation ends (LEFT, LOST, or a rejoin
from another address); a rejoin from the same address keeps them, and the instance streams.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from ._proto import node_agent_grpc
from .cluster import Node, Session
from .convert import instance_status_from_agent, signal_to_agent, workload_to_agent
from .errors import InvalidArgument, RemoteError, Unavailable
from .grpc_bridge import ClientChannel, PeerRefused, ServerStream
from .model import InstanceStatus, Signal, Workload
from .names import DEFAULT_TRUST_DOMAIN
from .security import IdentityError, verify_agent_peer

log = logging.getLogger(__name__)


class Refused(Exception):
    """An Agent did not accept an instance: the reason, for the Controller's message."""


class InstanceStream:
    """One instance's Create stream from its Agent, in the core's terms.

    `receive()` returns the next `InstanceStatus` (the Agent's own id field is not trusted);
    it raises trio.EndOfChannel when the Agent ends the stream OK, RemoteError when the stream
    fails, InvalidArgument for a status that does not convert. `cancel()` ends the call.
    """

    __slots__ = ("_stream", "instance_id", "node_id")

    def __init__(self, stream: ServerStream, instance_id: str, node_id: str) -> None:
        self._stream = stream
        self.instance_id = instance_id
        self.node_id = node_id

    async def receive(self) -> InstanceStatus:
        wire = await self._stream.receive()
        return instance_status_from_agent(wire, self.instance_id, self.node_id)

    def cancel(self) -> None:
        self._stream.cancel()


STREAMS_PER_CONNECTION = 90  # instance streams per connection: HTTP/2 peers often allow 100


@dataclass(eq=False)
class _Connection:
    """One channel to an Agent and how many instance streams it carries."""

    channel: ClientChannel
    workloads: Any
    streams: int = 0


class AgentLink:
    """The scheduler's channels to the Agent of one node generation.

    Every running instance keeps its Create stream open, and an HTTP/2 peer limits concurrent
    streams per connection (grpclib: 100; beyond that a new call silently waits). So Creates
    spread over as many connections as needed, `STREAMS_PER_CONNECTION` each, and Signals have
    a connection of their own: Stop and Destroy never queue behind instance streams.
    """

    def __init__(
        self,
        node_id: str,
        session: Session,
        ssl_context: ssl.SSLContext | None,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        leading: Callable[[], bool] = lambda: True,
    ) -> None:
        self.node_id = node_id

        def verify(peercert: dict | None) -> None:
            try:
                verify_agent_peer(peercert, trust_domain, node_id)
            except IdentityError as err:
                raise PeerRefused(str(err)) from None

        def connect() -> _Connection:
            channel = ClientChannel(session.host, session.port, ssl_context, verify, leading)
            return _Connection(channel, channel.stub(node_agent_grpc.WorkloadServiceStub))

        self._connect = connect
        self._signals = connect()
        self._creates: list[_Connection] = []

    def create(self, workload: Workload) -> InstanceStream:
        connection = next((c for c in self._creates if c.streams < STREAMS_PER_CONNECTION), None)
        if connection is None:
            connection = self._connect()
            self._creates.append(connection)
        connection.streams += 1

        def ended() -> None:
            connection.streams -= 1

        stream = connection.channel.server_stream(
            connection.workloads.Create, workload_to_agent(workload), ended
        )
        return InstanceStream(stream, workload.instance_id, self.node_id)

    async def signal(self, instance_id: str, signal: Signal, timeout: float) -> None:
        request = signal_to_agent(instance_id, signal)
        await self._signals.channel.unary(self._signals.workloads.Signal, request, timeout=timeout)

    def close(self) -> None:
        for connection in [self._signals, *self._creates]:
            connection.channel.close()


class Agents:
    """The links to every node generation's Agent."""

    def __init__(
        self,
        ssl_context: ssl.SSLContext | None = None,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        leading: Callable[[], bool] = lambda: True,
    ) -> None:
        """`leading()` False: this scheduler's leadership is over, no Agent may be called."""
        self._ssl = ssl_context
        self._trust_domain = trust_domain
        self._leading = leading
        self._links: dict[int, AgentLink] = {}  # node generation -> link

    def link(self, node: Node) -> AgentLink:
        session = node.session
        if session is None:
            raise Unavailable(f"node {node.id} is {node.state.name}: its Agent cannot be called")
        link = self._links.get(node.generation)
        if link is None:
            link = self._links[node.generation] = AgentLink(
                node.id, session, self._ssl, self._trust_domain, self._leading
            )
        return link

    def close(self) -> None:
        """Close every link (shutdown)."""
        for link in self._links.values():
            link.close()
        self._links.clear()

    def generation_ended(self, node: Node, generation: int, why: str) -> None:
        """The channels to that generation's Agent close: nothing more is sent to it."""
        link = self._links.pop(generation, None)
        if link is not None:
            link.close()


async def attempt(
    link: AgentLink, workload: Workload, timeout: float
) -> tuple[InstanceStream, InstanceStatus]:
    """Ask one Agent to create `workload`; its first status within `timeout` is acceptance.

    Raises Refused for a gRPC error, an empty stream or the timeout (the stream is cancelled).
    Cancellation (the Controller went away) cancels the Agent's Create and propagates.
    """
    stream = link.create(workload)
    try:
        with trio.move_on_after(timeout):
            try:
                first = await stream.receive()
            except trio.EndOfChannel:
                raise Refused("ended the stream without a status") from None
            except RemoteError as err:
                raise Refused(f"{err.status}: {err.message}") from None
            except InvalidArgument as err:
                raise Refused(str(err)) from None
            return stream, first
        raise Refused(f"no status within {timeout:g} s")
    except BaseException:
        stream.cancel()
        raise
