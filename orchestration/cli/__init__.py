"""The ``orchestra`` command (``cli.main``), run files, and run reports.

The top wing: it may import every other. ``app``, the typer application, resolves here on
first use, so importing the package does not load typer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llm_abstractions.lazy import lazy_exports

if TYPE_CHECKING:
    from orchestration.cli.main import app

__all__ = ["app"]

__getattr__, __dir__ = lazy_exports(__name__, {"app": "orchestration.cli.main"}, __all__)
