"""Requests as placement counts them: what feasibility subtracts, and what ranking counts.

Feasibility counts what a workload declares: a dimension it leaves unset or 0 fits anywhere.
Ranking counts what placing it will take (SPEC §2.2 step 3): an instance without limits still
runs and uses something, so ranking counts such a dimension as kube-scheduler's non-zero
request. Without that, every instance without limits would go to the node whose last report
looked freest until that node's report caught up, and binpack would never leave its first node.
"""

from __future__ import annotations

from collections.abc import Iterable

from scheduler.model import Resources
from scheduler.placement.dimensions import ZERO, amounts, resources

NONZERO_CPU_MILLICORES = 100  # ranking's cpu for a workload without a cpu limit (kube-scheduler)
NONZERO_MEMORY_MIB = 128  # ranking's memory for a workload without a memory limit (SPEC §2.2)


def ranking_request(request: Resources) -> Resources:
    """What ranking counts for `request`: unset or 0 cpu and memory count as the non-zero
    amounts; disk counts as declared (an instance need not write to disk)."""
    return Resources(
        cpu=request.cpu or NONZERO_CPU_MILLICORES,
        memory=request.memory or NONZERO_MEMORY_MIB,
        disk=request.disk or 0,
    )


def summed(requests: Iterable[Resources]) -> Resources:
    """The sum of several requests per dimension (None counts 0)."""
    return resources([sum(column) for column in zip(ZERO, *map(amounts, requests), strict=True)])
