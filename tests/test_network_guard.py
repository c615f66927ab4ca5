"""The guard in conftest must stop connections that leave the machine."""

from __future__ import annotations

import socket
import urllib.request

import pytest

from tests.conftest import NetworkGuardError, _violations


def test_non_loopback_connection_is_refused() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # 192.0.2.0/24 is TEST-NET-1: never routed, and the guard stops us before trying.
        with pytest.raises(NetworkGuardError):
            sock.connect(("192.0.2.1", 80))
    assert _violations == ["('192.0.2.1', 80)"]
    _violations.clear()  # this test provoked it on purpose


def test_swallowed_violation_is_still_recorded() -> None:
    try:
        urllib.request.urlopen("http://192.0.2.1/", timeout=1)  # noqa: S310
    except Exception:  # noqa: BLE001, S110 - code under test may swallow errors like this
        pass
    assert _violations == ["('192.0.2.1', 80)"]
    _violations.clear()


def test_loopback_is_allowed() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=5):
            pass
    assert _violations == []
