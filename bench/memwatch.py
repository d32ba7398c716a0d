"""Run the scheduler with a thread that records where its memory is (experiments only).

    python bench/soak.py --minutes 8 --events-retained 5000 --wrap bench/memwatch.py
    MEMWATCH_TRACE=8 MEMWATCH_SNAPSHOTS=200,480 python bench/soak.py ... --wrap bench/memwatch.py

Nothing of this is in the scheduler itself: this script starts the thread, then runs
`scheduler.cli.main` as `python -m scheduler` would. Files go to MEMWATCH_DIR (default
./memwatch-<pid>):
- `samples.jsonl`, every MEMWATCH_EVERY s (15): RSS (anonymous and file-backed), glibc's heap
  (`mallinfo2`: arena, in use, free, mmapped), pymalloc's blocks in use, the collector's
  tracked objects, collections per generation and what they freed, threads; with tracemalloc,
  the traced total. If the traced total (or pymalloc's blocks) is flat while RSS climbs, it is
  the allocator, not a Python object.
- at each of MEMWATCH_SNAPSHOTS (s after start): `types_<t>.json`, the live objects by type and
  what one full collection (`gc.DEBUG_SAVEALL`) found only in reference cycles;
  `departed_<t>.json`, what a LEFT/LOST node holds, per attribute; glibc's `malloc_info` and
  pymalloc's `sys._debugmallocstats()`; with MEMWATCH_TRACE=<depth>, a tracemalloc snapshot
  taken after that collection (`python bench/memwatch.py compare A B` lists the difference by
  allocation site). Tracing slows the scheduler ~2x, and snapshots add to its RSS: read RSS
  from a run without it.
- with MEMWATCH_TRIM=<s>, glibc's `malloc_trim(0)` every <s> seconds: it gives free pages inside
  glibc's heap back to the system, so what then still climbs is not glibc's free memory (in the
  soak it changed nothing: glibc's heap is mostly in use).
"""

from __future__ import annotations

import collections
import ctypes
import gc
import json
import os
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
        )
    ]


class Watch:
    def __init__(self, out: Path, every: float, snapshots: list[float]) -> None:
        self.out = out
        self.every = every
        self.snapshots = snapshots
        self.started = time.monotonic()
        self.freed = [0, 0, 0]  # objects each generation's collections freed
        self.libc = ctypes.CDLL("libc.so.6")
        self.libc.mallinfo2.restype = _MallInfo2
        self.libc.fopen.restype = ctypes.c_void_p
        gc.callbacks.append(self._collected)

    def _collected(self, phase: str, info: dict) -> None:
        if phase == "stop":
            self.freed[info["generation"]] += info["collected"]

    def now(self) -> float:
        return round(time.monotonic() - self.started, 1)

    def sample(self, tag: str = "") -> None:
        with open("/proc/self/status") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
        heap = self.libc.mallinfo2()
        line: dict[str, Any] = {
            "t": self.now(),
            "tag": tag,
            **{k: int(fields[k].split()[0]) for k in ("VmRSS", "RssAnon", "RssFile")},
            "threads": int(fields["Threads"]),
            "glibc_arena_kib": heap.arena >> 10,
            "glibc_used_kib": heap.uordblks >> 10,
            "glibc_free_kib": heap.fordblks >> 10,
            "glibc_mmap_kib": heap.hblkhd >> 10,
            "pymalloc_blocks": sys.getallocatedblocks(),
            **_retained(gc.get_objects()),
            "collections": [s["collections"] for s in gc.get_stats()],
            "freed": list(self.freed),
        }
        if tracemalloc.is_tracing():
            line["traced_kib"] = tracemalloc.get_traced_memory()[0] >> 10
        else:
            line.update(self._pymalloc())
        line.update(_anonymous_rss())
        with open(self.out / "samples.jsonl", "a") as samples:
            samples.write(json.dumps(line) + "\n")

    def snapshot(self) -> None:
        at = f"{self.now():.0f}"
        self.sample(f"snapshot {at}")
        (self.out / f"departed_{at}.json").write_text(json.dumps(departed_nodes()))
        live = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        in_cycles = collections.Counter(type(o).__qualname__ for o in gc.garbage)
        gc.set_debug(0)
        gc.garbage.clear()
        gc.collect()
        self.sample(f"after a full collection {at}")
        (self.out / f"types_{at}.json").write_text(
            json.dumps({"live": live.most_common(150), "in_cycles": in_cycles.most_common(80)})
        )
        self._allocator_stats(at)
        if tracemalloc.is_tracing():
            tracemalloc.take_snapshot().dump(str(self.out / f"trace_{at}.pickle"))

    def _pymalloc(self) -> dict[str, int]:
        """pymalloc's arenas (current, high-water, reclaimed) and bytes in them by use."""
        text = self._debugmallocstats(self.out / "pymalloc_last.txt").decode(errors="replace")
        wanted = {
            "# arenas allocated current": "arenas",
            "# arenas highwater mark": "arenas_highwater",
            "# arenas reclaimed": "arenas_reclaimed",
            "# bytes in allocated blocks": "pymalloc_used_kib",
            "# bytes in available blocks": "pymalloc_free_blocks_kib",
        }
        found: dict[str, int] = {}
        for line in text.splitlines():
            key, _, value = line.partition("=")
            name = wanted.get(key.strip())
            if name is not None:
                number = int(value.strip().replace(",", ""))
                found[name] = number >> 10 if name.endswith("_kib") else number
            elif "unused pools *" in key:
                found["pymalloc_unused_pools_kib"] = int(value.strip().replace(",", "")) >> 10
        return found

    def _debugmallocstats(self, path: Path) -> bytes:
        saved = os.dup(2)
        with open(path, "wb") as target:
            os.dup2(target.fileno(), 2)  # it prints to the C stderr
            try:
                sys._debugmallocstats()
            finally:
                os.dup2(saved, 2)
                os.close(saved)
        return path.read_bytes()

    def _allocator_stats(self, at: str) -> None:
        stream = self.libc.fopen(str(self.out / f"malloc_info_{at}.xml").encode(), b"w")
        self.libc.malloc_info(0, ctypes.c_void_p(stream))
        self.libc.fclose(ctypes.c_void_p(stream))
        if tracemalloc.is_tracing():
            return  # pymalloc's statistics are not kept under tracemalloc's hooks
        self._debugmallocstats(self.out / f"pymalloc_{at}.txt")

    def run(self) -> None:
        try:
            self._run()
        except BaseException:  # say so: a silent thread reads as a scheduler that stopped
            import traceback

            traceback.print_exc()
            raise

    def _run(self) -> None:
        pending = sorted(self.snapshots)
        next_sample = 0.0
        trim_every = float(os.environ.get("MEMWATCH_TRIM", "0"))
        next_trim = trim_every
        while True:
            if trim_every and self.now() >= next_trim:  # what glibc's own high-water costs
                self.libc.malloc_trim(0)
                next_trim = self.now() + trim_every
            if pending and self.now() >= pending[0]:
                pending.pop(0)
                self.snapshot()
            if self.now() >= next_sample:
                self.sample()
                next_sample = self.now() + self.every
            time.sleep(1.0)


def _retained(objects: list[object]) -> dict[str, int]:
    """The collector's tracked objects, and the records the scheduler keeps up to a bound:
    instances (running or finished) and nodes (READY or departed), events in the log."""
    counts = collections.Counter(type(o).__qualname__ for o in objects)
    return {
        "tracked": len(objects),
        "instances": counts["Instance"],
        "nodes": counts["Node"],
        "events": counts["Event"],
    }


def _anonymous_rss() -> dict[str, int]:
    """Resident KiB of glibc's main heap ([heap]) and of the other anonymous mappings (pymalloc's
    arenas, glibc's mmapped chunks, thread heaps and stacks), from /proc/self/smaps."""
    heap = other = 0
    name = ""
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            first = line.split(maxsplit=6)
            if "-" in first[0] and len(first) >= 5:  # a mapping's header line
                name = first[5].strip() if len(first) > 5 else ""
            elif first[0] == "Rss:":
                if name == "[heap]":
                    heap += int(first[1])
                elif name == "":
                    other += int(first[1])
    return {"heap_rss_kib": heap, "anon_mmap_rss_kib": other}


def departed_nodes() -> dict[str, Any]:
    """How many LEFT and LOST nodes the registry keeps, and their bytes per node by attribute
    (each attribute's objects, not counting other nodes, instances or sessions)."""
    import enum

    from scheduler.cluster.registry import Node, Session
    from scheduler.instances.book import Instance

    stop = (Node, Instance, Session, enum.Enum, type)
    nodes = [o for o in gc.get_objects() if type(o) is Node and o.state.name != "READY"]
    per_attribute: collections.Counter[str] = collections.Counter()
    for node in nodes:
        per_attribute["(the node itself)"] += sys.getsizeof(node)
        for name in Node.__slots__:
            per_attribute[name] += _size(getattr(node, name), stop)
    count = max(1, len(nodes))
    return {
        "departed": len(nodes),
        "bytes_per_node": sum(per_attribute.values()) // count,
        "by_attribute": {k: v // count for k, v in per_attribute.most_common()},
    }


def _size(root: object, stop: tuple[type, ...]) -> int:
    seen: set[int] = set()
    todo, total = [root], 0
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, stop) or obj is None:
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, dict):
            todo.extend(obj.keys())
            todo.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            todo.extend(obj)
        elif not callable(obj):
            todo.extend(gc.get_referents(obj))
    return total


def compare(first: str, second: str, lines: int = 30) -> None:
    """The growth from one tracemalloc snapshot to the next, by allocation site."""
    before, after = tracemalloc.Snapshot.load(first), tracemalloc.Snapshot.load(second)
    total = sum(s.size for s in after.statistics("filename")) - sum(
        s.size for s in before.statistics("filename")
    )
    print(f"traced: {total / 2**20:+.2f} MiB")
    for stat in after.compare_to(before, "lineno")[:lines]:
        print(f"{stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+8d}  {stat.traceback[0]}")


def main() -> None:
    if sys.argv[1:2] == ["compare"]:
        compare(sys.argv[2], sys.argv[3])
        return
    out = Path(os.environ.get("MEMWATCH_DIR", f"memwatch-{os.getpid()}")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    depth = int(os.environ.get("MEMWATCH_TRACE", "0"))
    if depth:
        tracemalloc.start(depth)
    snapshots = [float(t) for t in os.environ.get("MEMWATCH_SNAPSHOTS", "").split(",") if t]
    watch = Watch(out, float(os.environ.get("MEMWATCH_EVERY", "15")), snapshots)
    threading.Thread(target=watch.run, daemon=True, name="memwatch").start()
    sys.path.insert(0, str(ROOT))
    from scheduler.cli import main as scheduler_main

    sys.exit(scheduler_main(sys.argv[1:]))


if __name__ == "__main__":
    main()
