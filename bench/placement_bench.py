"""Micro-benchmark of placement decisions over 100 / 1,000 / 10,000 nodes.

Target (later issue): one decision (filter + rank) over 10,000 nodes with p99 <= 2 ms on a
2-core machine. Each size runs many `plan` calls over a table with random metrics (some
dimensions unknown, some nodes not ready, some reservations) and, as a baseline, the same
decision by the plain per-node `plan_candidates`. Also times the per-status-message update
and adding / removing a node.

    python bench/placement_bench.py

The last line of output is one JSON object: decision_p99_ms_100, decision_p99_ms_1k,
decision_p99_ms_10k.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from scheduler.model import MIB, NodeMetrics, Resources  # noqa: E402
from scheduler.placement import (  # noqa: E402
    Candidate,
    NodeTable,
    Strategy,
    plan,
    plan_candidates,
)

SEED = 20240601  # fixed: runs are comparable
SIZES = {"100": 100, "1k": 1_000, "10k": 10_000}
DECISIONS = {"100": 5_000, "1k": 3_000, "10k": 2_000}  # enough samples for a stable p99
BASELINE_DECISIONS = {"100": 300, "1k": 60, "10k": 20}  # the pure-Python loop is slow
UPDATES = 100_000  # status messages timed on the 10k table
JOINS = 1_000  # nodes added to and removed from the 10k table
STATUSES_BETWEEN = 4  # status reports between two decisions on the table that keeps scores
REQUESTS = [
    Resources(cpu=500, memory=512, disk=1024),
    Resources(cpu=2000, memory=4096),
    Resources(memory=256),
    Resources(),
]


def random_metrics(rng: random.Random) -> NodeMetrics:
    """A node like a mixed fleet's: a quarter are old Agents without cores and disk."""
    memory_total = rng.choice([8, 16, 32, 64]) * 1024 * MIB
    old_agent = rng.random() < 0.25
    disk_total = rng.choice([100, 500]) * 1024 * MIB
    return NodeMetrics(
        memory_total=memory_total,
        memory_free=rng.randrange(memory_total + 1),
        cpu_load=round(rng.uniform(0, 100), 1),
        cpu_cores=None if old_agent else rng.choice([2, 4, 8, 16]),
        disk_total=None if old_agent else disk_total,
        disk_free=None if old_agent else rng.randrange(disk_total + 1),
    )


def build(size: int, rng: random.Random) -> tuple[NodeTable, list[Candidate]]:
    table = NodeTable()
    candidates = []
    for number in range(size):
        node_id = f"node-{rng.getrandbits(40):010x}-{number}"
        metrics = random_metrics(rng) if rng.random() < 0.98 else None
        ready = rng.random() < 0.97
        instances = rng.randrange(8)
        table.upsert(node_id)
        table.set_ready(node_id, ready)
        table.update_metrics(node_id, metrics)
        table.set_instance_count(node_id, instances)
        reservations = ()
        if rng.random() < 0.1:
            reservations = (Resources(cpu=250, memory=256, disk=0),)
            table.reserve(node_id, f"{node_id}/pending", reservations[0])
        candidates.append(Candidate(node_id, ready, metrics, reservations, instances))
    return table, candidates


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def time_decisions(decide, count: int, rng: random.Random, before=None) -> list[float]:
    """Milliseconds per call of decide(request, strategy, max_attempts); `before()` runs
    untimed before each call."""
    samples = []
    for _ in range(count):
        request = rng.choice(REQUESTS)
        strategy = rng.choice(list(Strategy))
        max_attempts = rng.choice([0, 0, 3])  # the default is 0: order every feasible node
        if before is not None:
            before()
        start = time.perf_counter()
        decide(request, strategy, max_attempts)
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def report_some(
    table: NodeTable,
    node_ids: list[str],
    statuses: list[NodeMetrics],
    rng: random.Random,
    count: int = STATUSES_BETWEEN,
) -> None:
    """Status reports of `count` random nodes: what changes between two placements."""
    for _ in range(count):
        table.update_metrics(rng.choice(node_ids), rng.choice(statuses))


def main() -> None:
    rng = random.Random(SEED)
    result = {}
    statuses = [random_metrics(rng) for _ in range(1_000)]
    print(
        f"{'nodes':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'ref p50 ms':>11} {'ratio':>7}"
        f"   after {STATUSES_BETWEEN} status reports: {'p50 ms':>7} {'p99 ms':>7}"
    )
    for label, size in SIZES.items():
        table, candidates = build(size, rng)
        node_ids = table.node_ids()
        plan(table)  # warm-up: ranks node ids once, as the first decision after joins would
        # The bar is for a decision that scores every row: the first for a request, or one
        # after nodes joined or were forgotten (the table keeps no scores then).
        fast = time_decisions(
            lambda r, s, m, t=table: plan(t, r, s, m),
            DECISIONS[label],
            rng,
            before=table.kept.clear,
        )
        kept = time_decisions(
            lambda r, s, m, t=table: plan(t, r, s, m),
            DECISIONS[label],
            rng,
            before=lambda t=table, ids=node_ids: report_some(t, ids, statuses, rng),
        )
        slow = time_decisions(
            lambda r, s, m, c=candidates: plan_candidates(c, r, s, m),
            BASELINE_DECISIONS[label],
            rng,
        )
        p50, p99, ref_p50 = percentile(fast, 0.5), percentile(fast, 0.99), percentile(slow, 0.5)
        print(
            f"{size:>6} {p50:>8.3f} {p99:>8.3f} {max(fast):>8.3f} {ref_p50:>11.3f} "
            f"{ref_p50 / p50:>6.0f}x   {'':>{len(str(STATUSES_BETWEEN)) + 22}}"
            f"{percentile(kept, 0.5):>7.3f} {percentile(kept, 0.99):>7.3f}"
        )
        result[f"decision_p99_ms_{label}"] = round(p99, 4)
        result[f"decision_kept_p99_ms_{label}"] = round(percentile(kept, 0.99), 4)

    start = time.perf_counter()
    for number in range(UPDATES):
        table.update_metrics(node_ids[number % len(node_ids)], statuses[number % len(statuses)])
    per_update_us = (time.perf_counter() - start) / UPDATES * 1e6
    joins = [f"node-late-{number}" for number in range(JOINS)]
    start = time.perf_counter()
    for node_id in joins:
        table.upsert(node_id)
    join_us = (time.perf_counter() - start) / JOINS * 1e6
    start = time.perf_counter()
    for node_id in joins:
        table.remove(node_id)
    remove_us = (time.perf_counter() - start) / JOINS * 1e6
    print(
        f"10k nodes: update_metrics {per_update_us:.2f} µs per status message, "
        f"upsert {join_us:.1f} µs, remove {remove_us:.1f} µs per node"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
