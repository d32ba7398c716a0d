"""The reservation ledger: resources promised to instances that node reports may not show yet.

An Agent reports its free memory some time after an instance starts; until then, a second
decision would see the old numbers and could place twice on the same headroom. The caller
reserves on the chosen node *before* calling the Agent and releases on refusal, so every later
decision subtracts what is already promised (SPEC §2.2 step 2: no overcommit). Pure data, no
clock: when a reservation ends is the caller's policy.

Each reservation holds two amounts, taken and given back together: the request as declared
(what feasibility subtracts) and the request as ranking counts it (`ranking_request`: an
instance without limits still takes room), so ranking sees every instance placed on a node that
its reports may not show yet, and feasibility never refuses more than was really promised.
"""

from __future__ import annotations

from scheduler.model import Resources
from scheduler.placement.dimensions import ZERO, Amounts, amounts
from scheduler.placement.dimensions import resources as resources_of
from scheduler.placement.requests import ranking_request


def _amounts(resources: Resources) -> Amounts:
    """Each dimension in request units, `None` as 0: a dimension not requested reserves nothing."""
    held = amounts(resources)
    if min(held) < 0:
        raise ValueError(f"cannot reserve negative resources: {resources}")
    return held


def _plus(total: Amounts, more: Amounts, sign: int = 1) -> Amounts:
    return tuple(a + sign * b for a, b in zip(total, more, strict=True))


class Reservations:
    """Who holds what on which node: at most one reservation per instance."""

    __slots__ = ("_by_instance", "_by_node", "_totals")

    def __init__(self) -> None:
        # instance id -> (node id, declared amounts, ranking amounts)
        self._by_instance: dict[str, tuple[str, Amounts, Amounts]] = {}
        self._by_node: dict[str, dict[str, None]] = {}  # insertion-ordered set of instance ids
        self._totals: dict[str, tuple[Amounts, Amounts]] = {}  # node id -> (declared, ranking)

    def __len__(self) -> int:
        return len(self._by_instance)

    def __contains__(self, instance_id: object) -> bool:
        return instance_id in self._by_instance

    def reserve(self, node_id: str, instance_id: str, resources: Resources) -> None:
        """Promise `resources` on `node_id` to `instance_id`; seen by every later decision.

        Raises ValueError if the instance already holds a reservation (release it first) or a
        dimension is negative.
        """
        if instance_id in self._by_instance:
            held_on = self._by_instance[instance_id][0]
            raise ValueError(f"instance {instance_id!r} already holds a reservation on {held_on!r}")
        declared = _amounts(resources)
        ranking = _amounts(ranking_request(resources))
        self._by_instance[instance_id] = (node_id, declared, ranking)
        self._by_node.setdefault(node_id, {})[instance_id] = None
        total_declared, total_ranking = self._totals.get(node_id, (ZERO, ZERO))
        self._totals[node_id] = (_plus(total_declared, declared), _plus(total_ranking, ranking))

    def release(self, instance_id: str) -> bool:
        """Drop the instance's reservation. False if it held none (releasing twice is harmless)."""
        held = self._by_instance.pop(instance_id, None)
        if held is None:
            return False
        node_id, declared, ranking = held
        instances = self._by_node[node_id]
        del instances[instance_id]
        if instances:
            total_declared, total_ranking = self._totals[node_id]
            self._totals[node_id] = (
                _plus(total_declared, declared, -1),
                _plus(total_ranking, ranking, -1),
            )
        else:
            del self._by_node[node_id]
            del self._totals[node_id]
        return True

    def node_of(self, instance_id: str) -> str | None:
        """The node the instance holds a reservation on, if any."""
        held = self._by_instance.get(instance_id)
        return held[0] if held is not None else None

    def node_total(self, node_id: str) -> Resources:
        """Everything reserved on the node as declared (cpu millicores, memory and disk MiB)."""
        return resources_of(self._totals.get(node_id, (ZERO, ZERO))[0])

    def node_ranking_total(self, node_id: str) -> Resources:
        """Everything reserved on the node as ranking counts it (`ranking_request`)."""
        return resources_of(self._totals.get(node_id, (ZERO, ZERO))[1])

    def instances_on(self, node_id: str) -> tuple[str, ...]:
        """Instances holding a reservation on the node, in the order they reserved."""
        return tuple(self._by_node.get(node_id, ()))
