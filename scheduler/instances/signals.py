"""Stop and Destroy: signalling an instance's Agent, and forgetting a destroyed instance."""

from __future__ import annotations

import logging

from ..errors import NotFound, RemoteError, Unavailable
from ..model import NodeState, Signal
from .book import Book, Instance

log = logging.getLogger(__name__)


class Signals(Book):
    """stop() and destroy()."""

    async def stop(self, instance_id: str) -> None:
        if not await self._signal_reported(instance_id, Signal.STOP):
            await self._signal(instance_id, Signal.STOP)
        log.info("instance %s: STOP sent", instance_id)

    async def destroy(self, instance_id: str) -> None:
        """KILL the instance and forget it. An Agent that answers NOT_FOUND no longer runs it,
        which is what Destroy wants: the placement is forgotten all the same."""
        if await self._signal_reported(instance_id, Signal.KILL):
            log.info(
                "instance %s: KILL sent to node %s, whose Agent reports it (no placement "
                "of it was recorded)",
                instance_id,
                self._unknown_where[instance_id].id,
            )
            return
        try:
            instance = await self._signal(instance_id, Signal.KILL)
        except RemoteError as err:
            known = self._instances.get(instance_id)
            if err.status != "NOT_FOUND" or known is None:
                raise
            instance = known
            log.info(
                "instance %s: the Agent on %s does not know it (%s); forgetting it",
                instance_id,
                instance.node.id,
                err.message,
            )
        self._forget(instance, "destroyed")
        if self.store is not None:  # durable before Destroy is acknowledged
            await self.store.commit_durably()
        log.info("instance %s destroyed on node %s", instance_id, instance.node.id)

    async def _signal_reported(self, instance_id: str, signal: Signal) -> bool:
        """Signal an instance that an Agent reports but no placement records (announced);
        False if there is none. Its Agent's next reports tell the Controller how it ends."""
        node = self._unknown_where.get(instance_id)
        if node is None or instance_id in self._instances:
            return False
        try:
            await self.agents.link(node).signal(instance_id, signal, self.attempt_timeout)
        except RemoteError as err:
            if signal is not Signal.KILL or err.status != "NOT_FOUND":
                raise  # for a KILL, an Agent that does not know it no longer runs it
        return True

    async def _signal(self, instance_id: str, signal: Signal) -> Instance:
        instance = self._instances.get(instance_id)
        if instance is None:
            raise NotFound(f"instance {instance_id} is not known to this scheduler")
        node = instance.node
        if not instance.node_current:
            state = (
                node.state.name
                if node.state is not NodeState.READY
                else "rejoined from another address"
            )
            raise Unavailable(
                f"instance {instance_id} was on node {node.id}, which is {state}: "
                "its Agent cannot be signalled"
            )
        await self.agents.link(node).signal(instance_id, signal, self.attempt_timeout)
        return instance
