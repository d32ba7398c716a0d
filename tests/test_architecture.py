"""The import rules of the architecture, read from the source (AST, relative imports and imports
inside functions included), so that a rule broken by a new import fails here, not in review.

  a. placement/ is pure: no event loop, no network, nothing of the scheduler but `model`.
  b. The tooling (`scheduler.sim`) is outside the product's import graph: only `cli` imports it,
     and only inside the command that runs it.
  c. No import cycle runs through `scheduler.sim`.
  d. The domain core knows nothing of the wire: no grpclib, no generated API code, no
     `convert`, no bridge.

Each rule is also run on a synthetic module with a bad import (absolute and relative), to show
that it can fail.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

import scheduler

PACKAGE = Path(scheduler.__file__).resolve().parent


@dataclass(frozen=True)
class Import:
    name: str  # absolute dotted name of what is imported (a module, or the package it is from)
    lazy: bool  # inside a function: runs only when called


@dataclass(frozen=True)
class Module:
    name: str  # "scheduler.cluster.registry"
    source: str
    is_package: bool  # an __init__.py: its relative imports start from itself


def load_modules() -> dict[str, Module]:
    """Every module of the scheduler package, by dotted name (a fresh dict over cached reads)."""
    return dict(_read_modules())


@cache
def _read_modules() -> dict[str, Module]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ("scheduler",) + path.relative_to(PACKAGE).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        modules[name] = Module(name, path.read_text(), is_package)
    return modules


def imports_of(module: Module, known: set[str]) -> list[Import]:
    """What `module` imports, resolved to absolute names. `from X import n` counts as X.n when
    X.n is a module (in `known`), else as X."""
    return _imports_of(module, frozenset(known))


@cache
def _imports_of(module: Module, known: frozenset[str]) -> list[Import]:
    package = module.name if module.is_package else module.name.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend(Import(alias.name, lazy) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                origin = f"{base}.{node.module}" if node.module else base
            else:
                origin = node.module or ""
            for alias in node.names:
                submodule = f"{origin}.{alias.name}"
                found.append(Import(submodule if submodule in known else origin, lazy))
        inner = lazy or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(ast.parse(module.source), False)
    return found


def within(name: str, prefix: str) -> bool:
    """True if `name` is the module `prefix` or inside it."""
    return name == prefix or name.startswith(prefix + ".")


def import_graph(modules: dict[str, Module]) -> dict[str, dict[str, bool]]:
    """module -> {imported module of the package -> lazy only}."""
    known = set(modules)
    graph: dict[str, dict[str, bool]] = {}
    for module in modules.values():
        edges: dict[str, bool] = {}
        for imported in imports_of(module, known):
            if imported.name in known:
                edges[imported.name] = edges.get(imported.name, True) and imported.lazy
        graph[module.name] = edges
    return graph


# --- a. placement is pure ----------------------------------------------------------------------

IMPURE = (  # I/O
    "trio",
    "trio_asyncio",
    "asyncio",
    "grpclib",
    "h2",
    "hyperframe",
    "socket",
    "ssl",
    "sqlite3",
)
PLACEMENT_MAY_USE = ("scheduler.model", "scheduler.placement")  # of the scheduler's own modules


def placement_violations(modules: dict[str, Module]) -> set[tuple[str, str]]:
    known = set(modules)
    bad = set()
    for module in modules.values():
        if not within(module.name, "scheduler.placement"):
            continue
        for imported in imports_of(module, known):
            if any(within(imported.name, root) for root in IMPURE) or (
                within(imported.name, "scheduler")
                and not any(within(imported.name, ok) for ok in PLACEMENT_MAY_USE)
            ):
                bad.add((module.name, imported.name))
    return bad


# --- b. the tooling is outside the product -----------------------------------------------------

SIM = "scheduler.sim"
SIM_USER = "scheduler.cli"  # the `demo` command, inside its function


def sim_violations(modules: dict[str, Module]) -> set[tuple[str, str]]:
    known = set(modules)
    bad = set()
    for module in modules.values():
        if within(module.name, SIM):
            continue
        for imported in imports_of(module, known):
            if within(imported.name, SIM) and not (module.name == SIM_USER and imported.lazy):
                bad.add((module.name, imported.name))
    return bad


# --- c. no cycle through the tooling -----------------------------------------------------------


def cycles_through(modules: dict[str, Module], prefix: str) -> list[list[str]]:
    """Strongly connected components of more than one module with a module inside `prefix`
    (Tarjan's algorithm over every import, lazy ones included)."""
    graph = import_graph(modules)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [c for c in components if any(within(m, prefix) for m in c)]


# --- d. the core knows nothing of the wire -----------------------------------------------------

CORE = (
    "scheduler.cluster",
    "scheduler.placement",
    "scheduler.events",
    "scheduler.store",
    "scheduler.instances",
    "scheduler.lifecycle",
    "scheduler.security",
    "scheduler.model",
    "scheduler.errors",
    "scheduler.names",
)
WIRE = (
    "grpclib",
    "h2",
    "hyperframe",
    "scheduler._proto",
    "scheduler.convert",
    "scheduler.api",
    "scheduler.grpc_bridge",
    "scheduler.grpc_listener",
)
# The store's own encoding (protos/store.proto) and etcd's API are what the store writes and
# how it talks to etcd, not the Orka wire.
STORE_FORMATS = ("scheduler._proto.store_pb2", "scheduler._proto.etcd")


def core_violations(modules: dict[str, Module]) -> set[tuple[str, str]]:
    known = set(modules)
    bad = set()
    for module in modules.values():
        if not any(within(module.name, core) for core in CORE):
            continue
        for imported in imports_of(module, known):
            if within(module.name, "scheduler.store") and any(
                within(imported.name, ok) for ok in STORE_FORMATS
            ):
                continue
            if any(within(imported.name, wire) for wire in WIRE):
                bad.add((module.name, imported.name))
    return bad


# --- the rules on the real code ----------------------------------------------------------------


def test_every_module_is_read():
    modules = load_modules()
    assert {
        "scheduler.placement.plan",
        "scheduler.sim.demo",
        "scheduler.cli",
        "scheduler.store.codec",
        "scheduler.instances",
    } <= set(modules)


def test_placement_is_pure():
    assert placement_violations(load_modules()) == set()


def test_only_the_demo_command_imports_the_tooling():
    modules = load_modules()
    assert sim_violations(modules) == set()
    assert import_graph(modules)[SIM_USER].get("scheduler.sim.demo") is True  # lazily, as it should


def test_no_import_cycle_runs_through_the_tooling():
    assert cycles_through(load_modules(), SIM) == []


def test_the_core_knows_nothing_of_the_wire():
    assert core_violations(load_modules()) == set()


# --- each rule fails on a bad import -----------------------------------------------------------


def with_module(name: str, source: str, is_package: bool = False) -> dict[str, Module]:
    """The real modules, with `name` added or replaced by `source`."""
    return {**load_modules(), name: Module(name, source, is_package)}


@pytest.mark.parametrize(
    "source, imported",
    [
        ("import trio\n", "trio"),
        ("def later():\n    from grpclib.client import Channel\n", "grpclib.client"),
        ("from scheduler.cluster import Cluster\n", "scheduler.cluster"),
        ("from ..cluster import registry\n", "scheduler.cluster.registry"),
        ("from .. import events\n", "scheduler.events"),
    ],
)
def test_placement_rule_sees_a_bad_import(source, imported):
    modules = with_module("scheduler.placement.bad", source)
    assert placement_violations(modules) == {("scheduler.placement.bad", imported)}


@pytest.mark.parametrize(
    "name, source, imported",
    [
        ("scheduler.app", "from scheduler.sim.demo import main\n", "scheduler.sim.demo"),
        (
            "scheduler.cluster.bad",
            "def f():\n    from ..sim import simulator\n",
            "scheduler.sim.simulator",
        ),
        ("scheduler.bad", "import scheduler.sim\n", "scheduler.sim"),
        # cli, but at import time: every command would load the tooling
        ("scheduler.cli", "from .sim import demo\n", "scheduler.sim.demo"),
    ],
)
def test_tooling_rule_sees_a_bad_import(name, source, imported):
    assert sim_violations(with_module(name, source)) == {(name, imported)}


@pytest.mark.parametrize(
    "name, source",
    [
        ("scheduler.sim.signals", "from .demo import main\n"),  # demo -> simulator -> signals
        ("scheduler.follow", "def f():\n    from scheduler.sim import sim_controller\n"),
    ],
)
def test_cycle_rule_sees_a_cycle(name, source):
    modules = with_module(name, source)
    cycles = cycles_through(modules, SIM)
    assert cycles and any(name in cycle for cycle in cycles), cycles


@pytest.mark.parametrize(
    "name, source, imported",
    [
        ("scheduler.events", "from .convert import node_to_proto\n", "scheduler.convert"),
        (
            "scheduler.cluster.bad",
            "from ..grpc_bridge import ServerStream\n",
            "scheduler.grpc_bridge",
        ),
        ("scheduler.store.bad", "from .._proto import agent_pb2\n", "scheduler._proto.agent_pb2"),
        ("scheduler.placement.bad", "import grpclib.server\n", "grpclib.server"),
        ("scheduler.model", "from scheduler.api import scheduling\n", "scheduler.api.scheduling"),
    ],
)
def test_core_rule_sees_a_bad_import(name, source, imported):
    assert core_violations(with_module(name, source)) == {(name, imported)}


def test_core_rule_lets_the_store_use_its_own_formats_only():
    source = "from .._proto import store_pb2\nfrom .._proto.etcd import kv_pb2\n"
    assert core_violations(with_module("scheduler.store.bad", source)) == set()
    assert ("scheduler.events", "scheduler._proto.store_pb2") in core_violations(
        with_module("scheduler.events", "from ._proto import store_pb2\n")
    )


# --- README's layout lists every module (point 8) ----------------------------------------------

README = PACKAGE.parent / "README.md"
GENERATED = "_proto"  # listed as a package; its modules are generated


def layout_entries(readme: str) -> dict[str, str]:
    """The entries under `scheduler/` in README's layout block: first line's names -> the
    entry's whole text (continuation lines are indented deeper than two spaces)."""
    section = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```\n", 2)[1]
    lines = block.split("scheduler/\n", 1)[1].splitlines()
    entries: dict[str, str] = {}
    current = None
    for line in lines:
        if line.startswith("   ") and current is not None:
            entries[current] += " " + line.strip()
        elif line.startswith("  ") and not line.startswith("   "):
            current = line.strip()
            entries[current] = current
        else:
            break  # the next top-level directory
    return entries


def missing_from_layout(readme: str, package: Path) -> list[str]:
    """Modules of `package` that the layout does not name: a top-level module by its file name
    (`app.py`), a module of a subpackage by its name in the subpackage's entry."""
    entries = layout_entries(readme)
    text = " ".join(entries.values())
    missing = []
    for path in sorted(package.iterdir()):
        if path.suffix == ".py" and path.stem != "__init__":
            if not re.search(rf"(?<![\w/]){re.escape(path.name)}\b", text):
                missing.append(path.name)
        elif path.is_dir() and (path / "__init__.py").exists():
            entry = next(
                (body for head, body in entries.items() if head.startswith(f"{path.name}/")), None
            )
            if entry is None:
                missing.append(f"{path.name}/")
                continue
            if path.name == GENERATED:
                continue
            missing += [
                f"{path.name}/{module.name}"
                for module in sorted(path.glob("*.py"))
                if module.stem != "__init__"
                and not re.search(rf"\b{re.escape(module.stem)}\b", entry)
            ]
    return missing


def test_readme_layout_names_every_module():
    assert missing_from_layout(README.read_text(), PACKAGE) == []


def test_layout_check_sees_a_missing_module(tmp_path):
    package = tmp_path / "scheduler"
    (package / "placement").mkdir(parents=True)
    for name in (
        "__init__.py",
        "app.py",
        "new.py",
        "placement/__init__.py",
        "placement/plan.py",
        "placement/fresh.py",
    ):
        (package / name).write_text("")
    (package / "gone").mkdir()  # not a package: ignored
    readme = (
        "# x\n\n## Layout\n\n```\nscheduler/\n  app.py, newer.py   wiring\n"
        "  placement/          decisions: plan,\n                      and more\n"
        "tests/              tests\n```\n\n## Next\n"
    )
    assert missing_from_layout(readme, package) == ["new.py", "placement/fresh.py"]
    no_package = readme.replace("  placement/ ", "  decisions/ ")
    assert missing_from_layout(no_package, package) == ["new.py", "placement/"]


# --- the layers of scheduler/__init__.py ---------------------------------------------------------


def declared_layers() -> list[set[str]]:
    """The layers scheduler/__init__.py's docstring lists, top first: each line's first column
    (a layer may continue on the next line, which then starts with a name and a comma)."""
    doc = ast.get_docstring(ast.parse((PACKAGE / "__init__.py").read_text())) or ""
    block = doc[doc.index("Layers,") : doc.index("Outside the layers:")].splitlines()[1:]
    layers: list[set[str]] = []
    for line in block:
        if not line.startswith("  ") or line.startswith("   "):
            continue  # blank, or a continued description
        names = line.strip().split("   ")[0]  # the names, before the description's column
        layers.append({f"scheduler.{name.strip()}" for name in names.split(",")})
    return layers


def top_level(name: str) -> str:
    return ".".join(name.split(".")[:2])


def layer_violations(modules: dict[str, Module], layers: list[set[str]]) -> set[tuple[str, str]]:
    """Imports of a module (by its top-level module or package) from its own layer or above.
    The tooling (sim, its own rules) and the generated code are outside the layers."""
    rank = {name: index for index, layer in enumerate(layers) for name in layer}
    graph = import_graph(modules)
    bad = set()
    for module, edges in graph.items():
        source = top_level(module)
        if source in (SIM, "scheduler._proto", "scheduler"):
            continue
        for imported in edges:
            target = top_level(imported)
            if target in (source, "scheduler._proto") or within(target, SIM):
                continue
            if rank.get(target, -1) <= rank.get(source, len(layers)):
                bad.add((module, imported))
    return bad


def test_every_module_has_its_layer():
    layers = declared_layers()
    placed = set().union(*layers)
    tops = {top_level(name) for name in load_modules()} - {"scheduler", SIM, "scheduler._proto"}
    assert tops - placed == set(), "place these in scheduler/__init__.py's layers"
    assert placed - tops == set(), "these layers name modules that do not exist"


def test_each_layer_imports_only_those_below_it():
    assert layer_violations(load_modules(), declared_layers()) == set()


@pytest.mark.parametrize(
    "name, source, imported",
    [
        ("scheduler.cluster.bad", "from ..instances import Instances\n", "scheduler.instances"),
        ("scheduler.model", "def f():\n    from . import events\n", "scheduler.events"),
        ("scheduler.events", "from .placement import plan\n", "scheduler.placement.plan"),  # same
        ("scheduler.grpc_listener", "from .cluster import Node\n", "scheduler.cluster"),
    ],
)
def test_layer_rule_sees_an_upward_import(name, source, imported):
    modules = with_module(name, source)
    assert (name, imported) in layer_violations(modules, declared_layers())
