"""The shape of the code: no import circles, and imports that point down only.

Every import counts, those under ``TYPE_CHECKING`` and inside functions too: a circle that
only the type checker or a late import walks is still two modules that cannot be read (or
moved) one without the other. The graph is read from the source with ``ast``, so a module
that no test imports is checked as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("llm_abstractions", "orchestration", "agents")  # each imports only those before it
WINGS = ("model", "ledger", "runtime", "cli")  # orchestration's, bottom to top


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict[str, Path]:
    return {
        _module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")
    }


def _imported(module: str, path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``module`` imports (the longest known prefix of each)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            targets += [f"{base}.{alias.name}" for alias in node.names] or [base]
    found = set()
    for target in targets:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != module:
            found.add(target)
    return found


def _graph() -> nx.DiGraph[str]:
    sources = _sources()
    graph: nx.DiGraph[str] = nx.DiGraph()
    graph.add_nodes_from(sources)
    for module, path in sources.items():
        graph.add_edges_from((module, target) for target in _imported(module, path, set(sources)))
    return graph


def test_the_graph_is_read() -> None:
    graph = _graph()
    assert "orchestration.runtime.executor" in graph
    assert graph.has_edge("orchestration.runtime.executor", "orchestration.runtime.scheduler")
    assert graph.has_edge("orchestration.cli.main", "orchestration.ledger.store")  # in a function
    assert graph.has_edge("agents.specialists", "agents.routing")


def test_no_import_circles() -> None:
    circles = [sorted(c) for c in nx.strongly_connected_components(_graph()) if len(c) > 1]
    assert circles == []


def test_packages_import_only_the_packages_below() -> None:
    wrong = [
        f"{source} imports {target}"
        for source, target in _graph().edges
        if PACKAGES.index(target.split(".")[0]) > PACKAGES.index(source.split(".")[0])
    ]
    assert wrong == []


def _wing(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "orchestration" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in WINGS else None


def test_each_wing_imports_only_the_wings_below_it() -> None:
    """model < ledger < runtime < cli; ``logs`` serves runtime and cli and imports none."""
    reachable = {wing: set(WINGS[: WINGS.index(wing) + 1]) for wing in WINGS}
    wrong = []
    for source, target in _graph().edges:
        if not source.startswith("orchestration") or not target.startswith("orchestration"):
            continue
        wing, target_wing = _wing(source), _wing(target)
        if source == "orchestration.logs":
            wrong.append(f"{source} imports {target}")
        elif wing is None:
            continue  # the package's lazy names and the thin re-exports users import
        elif target == "orchestration.logs":
            if wing not in ("runtime", "cli"):
                wrong.append(f"{source} imports {target}")
        elif target_wing is None or target_wing not in reachable[wing]:
            wrong.append(f"{source} ({wing}) imports {target} ({target_wing or 'no wing'})")
    assert wrong == []


def test_every_module_of_orchestration_lives_in_a_wing() -> None:
    loose = {
        module
        for module in _sources()
        if module.startswith("orchestration") and _wing(module) is None
    }
    assert loose == {"orchestration", "orchestration.agent_registry", "orchestration.logs"}
