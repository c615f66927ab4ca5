"""A key echoed in an error body never reaches the ledger, even when a length limit cuts it.

Known keys are masked whole, and so is any run of 8 or more characters of a known key of 12
characters or more: a body cut at a length limit keeps a piece of the key, which no longer
matches it whole. The bundled script masks its own key before it cuts an error body.
"""

from __future__ import annotations

import random
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from orchestration import AgentRegistry, AgentTask, RetryPolicy, TaskExecutor, TaskStatus
from orchestration.ledger import default_db_url
from orchestration.ledger.accounting import redact
from orchestration.runtime.attempts import BUNDLED_SCRIPT
from orchestration.runtime.subprocess_runner import ScriptError, run_script
from tests.fakes.openai_api import openai_app
from tests.fakes.server import LoopbackServer, Scripted, loopback_fixtures

# 44 characters shaped like no known vendor's key: only knowing it can catch it.
KEY = "Xq7vB2mK9pL4tR8wZ3nC6hJ1yF5dG0sA2eU7iO4kM9qT"
FILLER = "the request was refused because the credentials are not valid; " * 100
WINDOW = 2000  # what the script fallback and ScriptError keep of a long text

server, api = loopback_fixtures(openai_app)


def pieces(secret: str, size: int = 8) -> set[str]:
    return {secret[i : i + size] for i in range(len(secret) - size + 1)}


def leaked(text: str | None, secret: str = KEY) -> list[str]:
    """The 8-character pieces of ``secret`` found in ``text``."""
    return sorted(piece for piece in pieces(secret) if piece in (text or ""))


def body_echoing(at: int, size: int = 3000) -> str:
    """An error body of ``size`` characters that echoes ``KEY`` at position ``at``."""
    return (FILLER[:at] + KEY + FILLER)[:size]


def test_the_key_shape_is_unknown() -> None:
    assert redact(KEY) == KEY  # what follows is caught by knowing the key, not by its shape


@pytest.mark.parametrize("kept", [8, 9, 20, 40, 43])
def test_a_key_cut_at_the_end_of_the_window_is_caught(kept: int) -> None:
    window = body_echoing(WINDOW - kept)[:WINDOW]
    assert window.endswith(KEY[:kept])
    redacted = redact(window, [KEY])
    assert leaked(redacted) == []
    assert redacted == window[:-kept] + "[REDACTED]"


@pytest.mark.parametrize("kept", [8, 9, 20, 40, 43])
def test_a_key_cut_at_the_start_of_the_window_is_caught(kept: int) -> None:
    body = body_echoing(3000 - WINDOW - (len(KEY) - kept))
    window = body[-WINDOW:]
    assert window.startswith(KEY[-kept:])
    redacted = redact(window, [KEY])
    assert leaked(redacted) == []
    assert redacted == "[REDACTED]" + window[kept:]


def test_the_whole_body_keeps_everything_but_the_key() -> None:
    body = body_echoing(1000)
    assert redact(body, [KEY]) == body.replace(KEY, "[REDACTED]")
    piece = f"key ...{KEY[10:30]}... was refused"
    assert redact(piece, [KEY]) == "key ...[REDACTED]... was refused"


def test_pieces_shorter_than_8_and_pieces_of_short_secrets_stay() -> None:
    # 7 characters of a random key are as likely in any text as not: masking them would
    # mask innocent text, and they tell an attacker little.
    assert redact(f"a {KEY[5:12]} b", [KEY]) == f"a {KEY[5:12]} b"
    # Of a secret shorter than 12 characters, 8 are most of it, and may well be a word.
    assert redact("pass1234567 and pass1234", ["pass1234567"]) == "[REDACTED] and pass1234"
    assert redact("pass12345678 and pass1234", ["pass12345678"]) == "[REDACTED] and [REDACTED]"


def test_a_100_kb_text_with_three_secrets() -> None:
    rng = random.Random(7)
    alphabet = "abcdefghijkmnopqrstuvwxyzABCDEFGH0123456789"
    secrets = ["".join(rng.choices(alphabet, k=n)) for n in (24, 44, 100)]
    words = ["".join(rng.choices("etaoinshrdlu", k=rng.randint(2, 9))) for _ in range(20_000)]
    expected = list(words)
    for i, secret in enumerate(secrets):  # each one whole, and pieces of it from both ends
        for at, piece in ((100, secret), (5_000, secret[:9]), (9_000, secret[-12:])):
            words.insert(at + 7 * i, piece)
            expected.insert(at + 7 * i, "[REDACTED]")
    text = " ".join(words)
    assert len(text) > 100_000
    redacted = redact(text, secrets)
    for secret in secrets:
        assert leaked(redacted, secret) == []
    assert redacted == " ".join(expected)  # the rest of the text is untouched


def test_overlapping_runs_are_masked_once() -> None:
    assert redact("a" * 100_000, ["a" * 20]) == "[REDACTED]"
    assert redact(f"{KEY}{KEY[:30]}!", [KEY]) == "[REDACTED]!"


@pytest.fixture
def openai_url(api: LoopbackServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    url = f"{api.url}/v1"
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    yield url


@pytest.mark.anyio
async def test_the_bundled_script_masks_its_key_before_it_cuts_the_body(
    api: LoopbackServer, openai_url: str
) -> None:
    api.script(Scripted(status=401, body=body_echoing(WINDOW - 40).encode()))
    payload = {"provider": "openai-gpt", "model": "gpt-4o-mini", "messages": []}
    env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": openai_url}
    with pytest.raises(ScriptError) as caught:
        await run_script(
            [sys.executable, "-I", str(BUNDLED_SCRIPT)],
            payload,
            timeout_s=30,
            max_output_bytes=100_000,
            env=env,
        )
    assert caught.value.kind == "http_401"
    assert api.headers[0]["Authorization"] == f"Bearer {KEY}"
    assert leaked(str(caught.value)) == []  # before anything downstream redacts it


@pytest.mark.anyio
async def test_a_key_echoed_past_the_cut_never_reaches_the_ledger(
    api: LoopbackServer, openai_url: str
) -> None:
    # The provider cannot serve (a 503, echoing the key whole), so the bundled script
    # stands in; its call is refused with a long body that echoes the key across the cut.
    api.script(
        Scripted(status=503, body={"error": {"message": f"overloaded ({KEY})", "type": "x"}}),
        Scripted(status=401, body=body_echoing(WINDOW - 40).encode()),
    )
    registry = AgentRegistry()
    registry.register_agent("gpt", "openai-gpt", model="gpt-4o-mini", api_key=KEY)
    executor = TaskExecutor(registry=registry, retry=RetryPolicy.never())
    with structlog.testing.capture_logs() as events:
        result = await executor.execute(AgentTask(task_id="T", description="hi"), agent="gpt")
    await executor.aclose()
    assert result.status is TaskStatus.FAILED
    assert result.metadata["execution_method"] == "script"
    assert result.metadata["error_type"] == "script:http_401"
    assert leaked(result.error) == []
    assert leaked(repr(events)) == []
    ledger = Path(default_db_url().removeprefix("sqlite:///"))
    with sqlite3.connect(ledger) as db:
        errors = [row[0] for row in db.execute("SELECT error_message FROM attempts")]
    assert len(errors) == 2 and all(leaked(error) == [] for error in errors)
    assert "[REDACTED]" in errors[1]
    for file in ledger.parent.iterdir():  # the database, its WAL and shared memory
        assert leaked(file.read_bytes().decode("latin-1")) == [], file.name
