"""The Todo demo script (``demos/todo_app.py``) as a module, for tests that call into it."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

DEMO = Path(__file__).resolve().parents[2] / "demos" / "todo_app.py"


def load_demo() -> ModuleType:
    """A fresh copy of the demo module (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location("todo_app_demo", DEMO)
    assert spec is not None and spec.loader is not None
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    return demo
