"""Logging set-up for programs built on Orchestra (the CLI, the demos).

The library only emits structlog events (one per attempt); configuring where they go is the
application's business. This is the configuration the CLI and the demos use.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["configure_logging"]


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
