"""Who leads: etcd's election (v3election) with a lease that the campaigner keeps alive.

A *term* is one leadership. It runs inside a cancel scope whose deadline is the renew
deadline: the send time of the last keep-alive that etcd answered, plus `DEADLINE_FRACTION` of
the lease. etcd expires the lease no earlier than `lease_ttl` after it received that keep-alive,
which is after we sent it; so the term ends, by itself, at least a third of the lease before
etcd can let another scheduler win (client-go's leaderelection: a leader that cannot renew
stops itself, it never waits to be told). A term also ends when a fenced write is refused, when
etcd says the lease is gone, and at shutdown (then it resigns, so a standby takes over at once).

After a term, the lease is revoked (or left to expire) and a new campaign starts with a new
lease: the next term's leader key, and so its fence, is a new one, so a write of an old term
still in flight somewhere can never pass the new fence.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from ._proto.etcd import v3election_pb2
from .etcd import EtcdClient, EtcdError
from .logs import Repeating
from .store import StoreUnavailable

log = logging.getLogger(__name__)

RENEW_FRACTION = 1 / 3  # keep-alive every third of the lease
DEADLINE_FRACTION = 2 / 3  # renew deadline after the last answered keep-alive (client-go: 10/15)
RETRY_INTERVAL = 0.5  # s between attempts to reach etcd while no campaign can start
RESIGN_TIMEOUT = 1.0  # s for Resign or LeaseRevoke on the way out


@dataclass(eq=False)
class Term:
    """One leadership: its leader key (the fence) and the scope that ends it."""

    leader: v3election_pb2.LeaderKey
    scope: trio.CancelScope
    ended: str = ""  # why it ended; "" while it lasts
    started: float = field(default_factory=trio.current_time)

    def valid(self) -> bool:
        """Still leading: not ended, renew deadline not passed (checked before every effect)."""
        scope = self.scope
        return not scope.cancel_called and trio.current_time() < scope.deadline

    def end(self, why: str) -> None:
        """End the term now (from anywhere in the process)."""
        if not self.ended:
            self.ended = why
        self.scope.cancel()


Lead = Callable[[Term], Awaitable[None]]
"""Serve one term; returns only at shutdown (the term is then resigned)."""


class Election:
    """Campaigns, leads while elected, campaigns again; until cancelled or `lead` returns."""

    def __init__(self, client: EtcdClient, name: bytes, lease_ttl: float, advertise: str) -> None:
        self._client = client
        self._name = name
        self._lease_ttl = lease_ttl
        self._advertise = advertise.encode()
        self.changes = 0  # terms won, for /metrics
        self._unreachable = Repeating(log)

    async def run(self, lead: Lead) -> None:
        while True:
            try:
                lease = await self._client.grant(math.ceil(self._lease_ttl))
            except (StoreUnavailable, EtcdError) as err:
                self._unreachable.occurred("cannot campaign: %s; retrying", err)
                await trio.sleep(RETRY_INTERVAL)
                continue
            self._unreachable.over("etcd answers again: campaigning")
            try:
                if await self._campaign_and_lead(lease, lead):
                    return
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(RESIGN_TIMEOUT):
                    await self._client.revoke(lease)

    async def _campaign_and_lead(self, lease: int, lead: Lead) -> bool:
        """One lease: campaign, then lead until the term ends; True once `lead` returned."""
        window = self._lease_ttl * DEADLINE_FRACTION
        scope = trio.CancelScope(deadline=trio.current_time() + window)
        term: Term | None = None
        lease_gone: list[bool] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._keep_alive, lease, scope, lease_gone)
            with scope:
                leader = await self._client.campaign(self._name, lease, self._advertise)
                term = Term(leader, scope)
                self.changes += 1
                await lead(term)
                with trio.CancelScope(shield=True), trio.move_on_after(RESIGN_TIMEOUT):
                    if await self._client.resign(leader):
                        log.info("resigned the leadership")
                nursery.cancel_scope.cancel()
                return True
            nursery.cancel_scope.cancel()
        why = (
            term.ended
            if term is not None and term.ended
            else "etcd says the lease is gone"
            if lease_gone
            else f"lease not renewed for {window:g} s (renew deadline)"
        )
        if term is not None:
            log.warning("stepped down: %s", why)
        else:
            log.info("campaign ended: %s", why)
        return False

    async def _keep_alive(
        self, lease: int, scope: trio.CancelScope, lease_gone: list[bool]
    ) -> None:
        """Renew every RENEW_FRACTION of the lease; each answered renewal moves the deadline."""
        interval = self._lease_ttl * RENEW_FRACTION
        window = self._lease_ttl * DEADLINE_FRACTION
        while True:
            sent = trio.current_time()
            try:
                ttl = await self._client.keep_alive(lease)
            except (StoreUnavailable, EtcdError) as err:
                log.warning("lease keep-alive failed: %s", err)
                await trio.sleep(min(interval, RETRY_INTERVAL))
                continue
            if ttl <= 0:
                lease_gone.append(True)
                scope.cancel()
                return
            scope.deadline = max(scope.deadline, sent + window)
            await trio.sleep_until(sent + interval)
