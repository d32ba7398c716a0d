"""Placement is pure: no module of scheduler/placement may import an event loop or the network."""
import ast
from pathlib import Path

import scheduler.placement

FORBIDDEN = {"trio", "grpclib", "asyncio", "trio_asyncio"}  # I/O and event loops live elsewhere


def imported_modules(source: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_placement_module_imports_io_or_event_loops():
    package = Path(scheduler.placement.__file__).parent
    sources = sorted(package.rglob("*.py"))
    assert {path.name for path in sources} >= {"__init__.py", "table.py", "feasible.py",
                                               "rank.py", "plan.py", "reservations.py"}
    for path in sources:
        roots = {name.split(".")[0] for name in imported_modules(path.read_text())}
        assert not roots & FORBIDDEN, f"{path.name} imports {sorted(roots & FORBIDDEN)}"
        imported_scheduler = {name for name in imported_modules(path.read_text())
                              if name.startswith("scheduler.")}
        allowed = {"scheduler.model"} | {n for n in imported_scheduler
                                         if n.startswith("scheduler.placement")}
        assert imported_scheduler <= allowed, f"{path.name} reaches outside placement"


def test_the_check_sees_every_import_form():
    found = imported_modules("import trio\nfrom grpclib.client import Channel\n"
                             "import asyncio as aio\nfrom . import x\n")
    assert found == {"trio", "grpclib.client", "asyncio"}
