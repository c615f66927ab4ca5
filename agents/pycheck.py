"""Static checks of generated Python: does a test file use only what the module under test has?

Small models write tests against the module they imagine: ``server.TODO_FILE`` patched where
the backend reads ``DATA_FILE`` (so every test writes the app's real data file, and they fail
on each other's data), or ``server.complete`` for ``complete_todo``. The test log then shows
failing assertions, not the cause, and a repair round rarely finds it. Read statically, the
mistake is plain, and the answer can be refused with the names that exist.
"""

from __future__ import annotations

import ast
import difflib

__all__ = ["module_names", "unknown_uses"]


def module_names(source: str) -> set[str] | None:
    """The names a module defines at its top level, or None when that cannot be told.

    Functions, classes, assignments (tuples unpacked), imports, and names functions declare
    ``global``; statements under ``if``, ``try``, ``with`` and loops at the top level count.
    None for a module that does not parse or star-imports (``from x import *``).
    """
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    names: set[str] = set()
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
            names.update(g for n in ast.walk(node) if isinstance(n, ast.Global) for g in n.names)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign | ast.For):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, ast.Import):
            names.update((a.asname or a.name).partition(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if any(a.name == "*" for a in node.names):
                return None
            names.update(a.asname or a.name for a in node.names)
        if isinstance(node, ast.With | ast.AsyncWith):
            names.update(
                n.id
                for item in node.items
                if item.optional_vars is not None
                for n in ast.walk(item.optional_vars)
                if isinstance(n, ast.Name)
            )
        for field in ("body", "orelse", "finalbody", "handlers"):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                pending.extend(getattr(node, field, []))
    return names


def unknown_uses(tests: str, module: str, source: str) -> list[str]:
    """Where ``tests`` uses a name of ``module`` (imported by that name) its ``source`` lacks.

    Checks ``module.name`` (read or assigned) after ``import module [as alias]``, and
    ``from module import name``. Dunder names (``__file__``...) are never reported. Returns
    one ``line N: module.name`` entry per name, at its first use; nothing when either file
    does not parse or the module's names cannot be told.
    """
    defined = module_names(source)
    try:
        tree = ast.parse(tests)
    except SyntaxError:
        return []
    if defined is None:
        return []
    aliases = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
        if alias.name == module
    }
    used: dict[str, int] = {}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
        ):
            used.setdefault(node.attr, node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == module:
            for alias in node.names:
                used.setdefault(alias.name, node.lineno)
    return [
        f"line {line}: {module}.{name}{_did_you_mean(module, name, defined)}"
        for name, line in sorted(used.items(), key=lambda item: item[1])
        if name not in defined and not name.startswith("__")
    ]


def _did_you_mean(module: str, name: str, defined: set[str]) -> str:
    """`` (use module.X)`` for the defined name closest to ``name``, if one is close."""
    by_case = {candidate.lower(): candidate for candidate in defined}
    close = difflib.get_close_matches(name.lower(), list(by_case), n=1, cutoff=0.6)
    return f" (use {module}.{by_case[close[0]]})" if close else ""
