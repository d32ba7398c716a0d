"""Placement: pure decisions of where an instance may run (SPEC §2.2 steps 2-3).

No I/O, no event loop: plain data in, plain data out. The cluster state keeps a `NodeTable`
current (nodes, readiness, metrics, instance counts, reservations); `plan` filters it
(`feasible`), ranks what is left (`rank`) and returns a `Plan` to attempt in order.

    dimensions.py    the resource dimensions, one table in one order (memory, cpu, disk)
    table.py         NodeTable: one row per node, numpy columns, O(1) updates, and a log of
                     the rows changed since a decision (what `kept` refreshes)
    requests.py      what feasibility and ranking count for a request (non-zero requests)
    reservations.py  Reservations: what is promised to instances the reports may not show yet
    feasible.py      Reason, reject_reason / reason_codes: who fits and why not;
                     reserve_if_fits: the re-check before each attempt
    rank.py          score / scores / priority_rows (by model.Strategy): who is tried first
                     (nodes without room for the placement last)
    kept.py          Kept: a request's codes and keys kept in the table between decisions,
                     refreshed where the table changed
    plan.py          Plan, plan (over a table: the first 8 nodes by argmin, the rest only if
                     all 8 refuse), plan_candidates (node by node, the reference)
"""

from scheduler.model import Strategy
from scheduler.placement.feasible import Candidate, Reason, node_reason, reserve_if_fits
from scheduler.placement.plan import Plan, plan, plan_candidates
from scheduler.placement.reservations import Reservations
from scheduler.placement.table import NodeTable

__all__ = [
    "Candidate",
    "NodeTable",
    "Plan",
    "Reason",
    "Reservations",
    "Strategy",
    "node_reason",
    "plan",
    "plan_candidates",
    "reserve_if_fits",
]
