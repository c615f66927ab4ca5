"""Shared fixtures: a clean environment, a fresh factory, and the network guard.

The guard wraps ``socket.connect`` for the whole session. A connection to anything but a
loopback address (or a Unix socket) raises ``NetworkGuardError`` *and* is recorded, and the
autouse fixture fails the test afterwards even if the code under test swallowed the error.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from llm_abstractions import LlmFactory

pytest_plugins = ("tests.support.ledger_rows",)

# Variables that change which provider or model the code under test picks.
PROVIDER_ENV = (
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_BASE_URL",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",
    "HF_TOKEN",
    "OLLAMA_HOST",
    # A proxy would route loopback probes elsewhere.
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
)


class NetworkGuardError(ConnectionRefusedError):
    """A test tried to reach a non-loopback address.

    An OSError, so that socket helpers clean up as for any refused connection; the attempt
    is recorded all the same and fails the test.
    """


_violations: list[str] = []
_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _is_allowed(sock: socket.socket, address: Any) -> bool:
    if sock.family == getattr(socket, "AF_UNIX", object()):
        return True
    host = address[0] if isinstance(address, tuple) else address
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


def _check(sock: socket.socket, address: Any) -> None:
    if not _is_allowed(sock, address):
        _violations.append(repr(address))
        raise NetworkGuardError(f"test tried to connect to non-loopback address {address!r}")


def _guarded_connect(sock: socket.socket, address: Any) -> None:
    _check(sock, address)
    _real_connect(sock, address)


def _guarded_connect_ex(sock: socket.socket, address: Any) -> int:
    _check(sock, address)
    return _real_connect_ex(sock, address)


def pytest_configure(config: pytest.Config) -> None:
    socket.socket.connect = _guarded_connect  # type: ignore[method-assign, assignment]
    socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign, assignment]


@pytest.fixture(autouse=True)
def _no_network_escape() -> Iterator[None]:
    _violations.clear()
    yield
    if _violations:
        found = ", ".join(_violations)
        _violations.clear()
        pytest.fail(f"non-loopback connection attempted: {found}")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Remove provider keys and ORCHESTRA_* settings so tests see a fresh machine.

    OLLAMA_HOST points at a closed loopback port, so "is Ollama running?" is answered by
    the test, not by whatever runs on the developer's machine.
    """
    for var in PROVIDER_ENV:
        monkeypatch.delenv(var, raising=False)
    for var in list(os.environ):
        if var.startswith("ORCHESTRA_"):
            monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OLLAMA_HOST", f"http://127.0.0.1:{_closed_port()}")
    # Every test gets its own ledger, never the working directory's .orchestra/runs.db.
    ledger_dir = tmp_path_factory.mktemp("ledger")
    monkeypatch.setenv("ORCHESTRA_DB_URL", f"sqlite:///{ledger_dir / 'runs.db'}")
    # Nor the user's model cache: a test that wants a pulled model pulls it here.
    monkeypatch.setenv("ORCHESTRA_HOME", str(ledger_dir / "home"))
    monkeypatch.setenv("ORCHESTRA_LMSTUDIO_URL", f"http://127.0.0.1:{_closed_port()}/v1")
    # The script fallback runs in a subprocess, out of the socket guard's reach: point every
    # provider it can call at a closed loopback port so that no test can leave the machine.
    for var in ("ANTHROPIC_BASE_URL", "ORCHESTRA_GEMINI_BASE_URL"):
        monkeypatch.setenv(var, f"http://127.0.0.1:{_closed_port()}")
    for var in ("OPENAI_BASE_URL", "ORCHESTRA_HF_BASE_URL"):
        monkeypatch.setenv(var, f"http://127.0.0.1:{_closed_port()}/v1")


@pytest.fixture(autouse=True)
def fresh_factory() -> Iterator[None]:
    LlmFactory.reset()
    yield
    LlmFactory.reset()
    structlog.reset_defaults()  # the CLI configures logging for the whole process


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _closed_port() -> int:
    """A loopback port nothing listens on (bound then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
