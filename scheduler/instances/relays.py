"""Relaying an accepted instance's statuses from its Agent's Create stream.

The relay task is owned by the service (not by the Controller's call). It reads the Agent's
stream until the instance terminates (a TERMINATED status, or the Agent ends the stream OK), is
destroyed, or its node's generation ends; it publishes every status to the event log and
forwards it to the Controller's Schedule stream while that is still listening.
"""

from __future__ import annotations

import logging

import trio

from ..agents import InstanceStream
from ..errors import InvalidArgument, RemoteError
from ..model import InstanceStatus
from .book import ENDED_BY_AGENT, ENDED_OK, TERMINATED, Book, Instance

log = logging.getLogger(__name__)


class Relays(Book):
    """The relay task of each accepted instance."""

    async def _relay(self, instance: Instance, stream: InstanceStream) -> None:
        """Read the Agent's stream until TERMINATED or its end; publish and forward every status."""
        try:
            with instance.scope:
                try:
                    while instance.latest.code is not TERMINATED:
                        self._update(instance, await stream.receive())
                    instance.ended = "terminated"
                except trio.EndOfChannel:
                    self._ended_by_agent(instance)
                except (RemoteError, InvalidArgument) as err:
                    instance.ended = f"the instance's stream from {instance.node.id} failed: {err}"
        finally:
            stream.cancel()
        if instance.ended == "destroyed" and instance.latest.code is not TERMINATED:
            self._publish(
                instance,
                InstanceStatus(instance.id, TERMINATED, "destroyed", node_id=instance.node.id),
            )
        if instance.ended not in ENDED_OK:
            # Ended with its node's generation (left, lost, rejoined elsewhere): the node's
            # own line said so and named its instances; a leave is planned, not a fault.
            level = logging.WARNING if instance.node_current else logging.INFO
            log.log(level, "instance %s: relay ended: %s", instance.id, instance.ended)
        self._release(instance)
        if instance.latest.code is TERMINATED:
            self._unplace(instance)
            self._retain_finished(instance)
        if instance.follower is not None:
            instance.follower.end()
            instance.follower = None

    def _ended_by_agent(self, instance: Instance) -> None:
        """The Agent ended the instance's stream OK without a TERMINATED status: the Orka node
        agent does so once it has cleaned the instance up, so it is TERMINATED (SPEC §2.2
        step 5). A stream that ends with an error is not this: its instance's fate is unknown.
        A relay already being ended (Destroy, the node's generation ending) keeps its reason."""
        if instance.ended:
            return
        log.info(
            "instance %s terminated: the Agent on %s ended its stream",
            instance.id,
            instance.node.id,
        )
        self._update(
            instance,
            InstanceStatus(instance.id, TERMINATED, ENDED_BY_AGENT, node_id=instance.node.id),
        )
        instance.ended = "terminated"
