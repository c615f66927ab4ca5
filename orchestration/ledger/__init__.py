"""The run ledger: what runs, tasks and attempts left behind, and what they cost.

The store and its schema, what a run records, costs and redaction, the response cache, and
reading runs back.

Imports only ``model``. ``Ledger``, ``LedgerError`` and ``default_db_url`` resolve here on
first use, as they did before the ledger was a package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llm_abstractions.lazy import lazy_exports

if TYPE_CHECKING:
    from orchestration.ledger.store import Ledger, default_db_url
    from orchestration.model.errors import LedgerError

_LAZY = {
    "Ledger": "orchestration.ledger.store",
    "LedgerError": "orchestration.model.errors",
    "default_db_url": "orchestration.ledger.store",
}

__all__ = ["Ledger", "LedgerError", "default_db_url"]

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
