"""The response cache: answers kept in the ledger database, reused for identical requests.

Opt-in (``TaskExecutor(cache=True)`` or an agent's ``cache = true``). The key is a SHA-256
of the provider, the model, the endpoint (its base URL, when it has one: two servers behind
one provider name are two caches) and the request as sent (messages, system prompt,
generation settings), never of a key or of the task's own id, so the same question asked by
another task or another run is a hit. A hit is recorded as an attempt with method ``cache``, cost 0
and ``cached_from`` naming the attempt that paid for the answer.

Only successful, complete answers are stored (not ones cut at ``max_tokens``). With an
output contract, that is the answer its checks accepted, kept under the key of the request
that began the exchange: when a refused answer was asked for again, the accepted one
answered a longer conversation, but it is what that first request ended with. A hit is
checked against the task's contract again, and one the contract refuses is not used.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import anyio
from sqlalchemy import text

from llm_abstractions.types import LlmRequest, Usage
from orchestration.ledger.store import Ledger, Statement

__all__ = ["CacheHit", "ResponseCache", "cache_key"]

_STORE = Statement.insert(
    "response_cache",
    "key provider model output usage finish_reason source_run_id source_task_id "
    "source_attempt created_at".split(),
    " ON CONFLICT (key) DO NOTHING",
)
_LOOKUP = text(
    "SELECT c.output, c.usage, c.finish_reason, c.model, a.id FROM response_cache c "
    "LEFT JOIN attempts a ON a.run_id = c.source_run_id AND a.task_id = c.source_task_id "
    "AND a.attempt = c.source_attempt WHERE c.key = :key"
)


def cache_key(
    provider: str, model: str | None, request: LlmRequest, endpoint: str | None = None
) -> str:
    """The hash that identifies a request to one provider, model and endpoint."""
    sent = request.model_dump(mode="json", exclude={"metadata", "stream", "model"})
    document = json.dumps(
        {"provider": provider, "model": model, "endpoint": endpoint, "request": sent},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(document.encode()).hexdigest()


@dataclass(frozen=True)
class CacheHit:
    """A stored answer."""

    output: str
    usage: Usage
    finish_reason: str | None
    model: str | None
    attempt_id: int | None  # the attempt that paid for it (None: its run was deleted)


class ResponseCache:
    """Reads and writes cached answers in a ledger's database."""

    statement = _STORE

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    async def get(self, key: str) -> CacheHit | None:
        """The stored answer for ``key``, read in a worker thread."""
        return await anyio.to_thread.run_sync(self._get, key)

    def _get(self, key: str) -> CacheHit | None:
        with self.ledger.session() as session:
            row = session.execute(_LOOKUP, {"key": key}).first()
        if row is None:
            return None
        output, usage, finish_reason, model, attempt_id = row
        return CacheHit(output, Usage.model_validate_json(usage), finish_reason, model, attempt_id)
