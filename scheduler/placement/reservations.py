"""The reservation ledger: resources promised to instances that node reports may not show yet.

An Agent reports its free memory some time after an instance starts; until then, a second
decision would see the old numbers and could place twice on the same headroom. The caller
reserves on the chosen node *before* calling the Agent and releases on refusal, so every later
decision subtracts what is already promised (SPEC §2.2 step 2: no overcommit). Pure data, no
clock: when a reservation ends is the caller's policy.
"""
from __future__ import annotations

from scheduler.model import Resources

_ZERO = (0, 0, 0)  # (cpu millicores, memory MiB, disk MiB) of a node with nothing reserved


def _amounts(resources: Resources) -> tuple[int, int, int]:
    """(cpu, memory, disk) with `None` as 0: a dimension not requested reserves nothing."""
    amounts = (resources.cpu or 0, resources.memory or 0, resources.disk or 0)
    if min(amounts) < 0:
        raise ValueError(f"cannot reserve negative resources: {resources}")
    return amounts


class Reservations:
    """Who holds what on which node: at most one reservation per instance."""

    __slots__ = ("_by_instance", "_by_node", "_totals")

    def __init__(self) -> None:
        self._by_instance: dict[str, tuple[str, tuple[int, int, int]]] = {}
        self._by_node: dict[str, dict[str, None]] = {}  # insertion-ordered set of instance ids
        self._totals: dict[str, tuple[int, int, int]] = {}

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
        amounts = _amounts(resources)
        self._by_instance[instance_id] = (node_id, amounts)
        self._by_node.setdefault(node_id, {})[instance_id] = None
        cpu, memory, disk = self._totals.get(node_id, _ZERO)
        self._totals[node_id] = (cpu + amounts[0], memory + amounts[1], disk + amounts[2])

    def release(self, instance_id: str) -> bool:
        """Drop the instance's reservation. False if it held none (releasing twice is harmless)."""
        held = self._by_instance.pop(instance_id, None)
        if held is None:
            return False
        node_id, (cpu, memory, disk) = held
        instances = self._by_node[node_id]
        del instances[instance_id]
        if instances:
            total_cpu, total_memory, total_disk = self._totals[node_id]
            self._totals[node_id] = (total_cpu - cpu, total_memory - memory, total_disk - disk)
        else:
            del self._by_node[node_id]
            del self._totals[node_id]
        return True

    def node_of(self, instance_id: str) -> str | None:
        """The node the instance holds a reservation on, if any."""
        held = self._by_instance.get(instance_id)
        return held[0] if held is not None else None

    def node_total(self, node_id: str) -> Resources:
        """Everything reserved on the node (cpu millicores, memory and disk MiB; 0 if nothing)."""
        cpu, memory, disk = self._totals.get(node_id, _ZERO)
        return Resources(cpu=cpu, memory=memory, disk=disk)

    def instances_on(self, node_id: str) -> tuple[str, ...]:
        """Instances holding a reservation on the node, in the order they reserved."""
        return tuple(self._by_node.get(node_id, ()))
