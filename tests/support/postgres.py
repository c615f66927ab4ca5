"""A throwaway PostgreSQL server for tests: a cluster in a temporary directory.

``initdb`` and ``pg_ctl`` (PostgreSQL's server binaries) make and start a cluster that
listens only on a Unix socket in the same directory, with trust authentication, no fsync,
and nothing kept after the session. PostgreSQL refuses to run as root, so as root (CI) the
server runs as the ``postgres`` system user through ``runuser``; the tests connect as its
``postgres`` role. ``PostgresServer.database()`` creates a fresh database for one test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from contextlib import closing
from pathlib import Path

__all__ = ["PostgresServer", "server_binaries_missing"]

PORT = 55432  # on a Unix socket only: no TCP port is opened


def server_binaries_missing() -> str | None:
    """Why a throwaway server cannot be started here, or None."""
    for binary in ("initdb", "pg_ctl"):
        if shutil.which(binary) is None:
            return f"no {binary} on PATH (PostgreSQL's server binaries: apt-get install postgresql)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser, and PostgreSQL refuses to run as root"
    return None


class PostgresServer:
    """A cluster made and started in a temporary directory, until ``stop``."""

    def __init__(self, *, durable: bool = False) -> None:
        """``durable``: fsync as a production server does (benchmarks); tests go without."""
        self.directory = Path(tempfile.mkdtemp(prefix="orchestra-pg-"))
        self.directory.chmod(0o755)
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.directory, user="postgres")
        data = self.directory / "data"
        self._run(["initdb", "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"])
        options = f"-p {PORT} -k {self.directory} -c listen_addresses=''"
        if not durable:
            options += " -c fsync=off"
        log = str(self.directory / "server.log")
        self._run(["pg_ctl", "-D", str(data), "-o", options, "-l", log, "-w", "start"])
        self._data = data
        self._databases = 0

    def _run(self, argv: list[str]) -> None:
        command = ["runuser", "-u", "postgres", "--", *argv] if self._as_postgres else argv
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {done.stdout[-1000:]}{done.stderr[-1000:]}")

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL of a database of this server (psycopg 3, over the socket)."""
        return f"postgresql+psycopg://postgres@/{database}?host={self.directory}&port={PORT}"

    def database(self) -> str:
        """A new, empty database; its URL."""
        import psycopg

        self._databases += 1
        name = f"orchestra_{self._databases}"
        with closing(
            psycopg.connect(host=str(self.directory), port=PORT, user="postgres", autocommit=True)
        ) as admin:
            admin.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        """Stop the server at once and remove its directory."""
        try:
            self._run(["pg_ctl", "-D", str(self._data), "-m", "immediate", "stop"])
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)
