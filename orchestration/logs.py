"""Logging: the library's logger, and the set-up programs built on Orchestra use.

The library emits structlog events (one per attempt). Where they go is the application's
business: once it configures structlog, they follow that configuration; until then they go
to the standard library's ``orchestra`` logger, which, like any library's, shows nothing
below WARNING unless the application sets up ``logging``. (structlog's own default would
print every event to stdout.) ``configure_logging`` is the set-up the CLI and demos use.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

__all__ = ["configure_logging", "get_logger"]


def get_logger() -> Any:
    """The logger for the library's events, as described above."""
    import structlog

    if structlog.is_configured():
        return structlog.get_logger("orchestra")
    return structlog.wrap_logger(
        logging.getLogger("orchestra"),
        processors=[structlog.processors.KeyValueRenderer(key_order=["event"])],
        wrapper_class=structlog.BoundLogger,
    )


def configure_logging(verbose: bool = False) -> None:
    """Send structlog events to stderr, warnings only unless ``verbose``.

    Logs go to stderr so that stdout stays clean for tables and ``--json``.
    """
    import structlog

    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.INFO if verbose else logging.WARNING
        ),
        # Resolved at each use: whatever sys.stderr is then (test runners swap it).
        logger_factory=lambda *_: structlog.PrintLogger(sys.stderr),
    )
