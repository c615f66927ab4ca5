"""The run ledger: every run, task and attempt, in SQLite (or any SQLAlchemy database).

Writes go through one writer thread per ledger. A write is a list of operations (a rank, a
SQL statement, its parameters); callers queue one and await its commit. The writer takes
every write queued so far and commits them in one transaction (group commit): operations
are ordered by rank (stable, so a task's "running" row always precedes its result) and
each statement runs once with all its parameter sets (``executemany``). Many tasks
finishing together cost one transaction and a few statements, and the event loop never
blocks on the database. On SQLite the database is in WAL mode with a busy timeout, and each
transaction starts with ``BEGIN IMMEDIATE`` so that two writing processes queue for the
lock instead of failing on upgrade. Schema migrations run when the ledger opens.

Location: ``url=``, else ``ORCHESTRA_DB_URL`` (any SQLAlchemy URL), else
``.orchestra/runs.db`` under the working directory.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine.url import make_url
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlmodel import Session

from llm_abstractions.threads import LoopCompletion
from orchestration.errors import LedgerError
from orchestration.ledger_schema import migrate

__all__ = ["DEFAULT_DB_PATH", "Ledger", "LedgerError", "default_db_url", "sqlite_file"]

DEFAULT_DB_PATH = Path(".orchestra") / "runs.db"
BUSY_TIMEOUT_S = 30.0
Operation = tuple[int, Any, dict[str, Any] | list[dict[str, Any]]]
Write = list[Operation]


def default_db_url() -> str:
    """``ORCHESTRA_DB_URL``, else SQLite at ``.orchestra/runs.db`` in the working directory."""
    return os.environ.get("ORCHESTRA_DB_URL") or f"sqlite:///{DEFAULT_DB_PATH}"


@dataclass
class _Job:
    write: Write
    done: LoopCompletion[None] | None


class Ledger:
    """A run ledger; open it once per process and share it.

    Args:
        url: SQLAlchemy URL; see the module docstring for the default.

    Raises:
        LedgerError: The database cannot be opened or migrated.
    """

    def __init__(self, url: str | None = None) -> None:
        self.url = url or default_db_url()
        # What messages show: never the password a database URL may carry.
        self.shown_url = make_url(self.url).render_as_string(hide_password=True)
        try:
            self.engine = _make_engine(self.url)
        except (ImportError, SQLAlchemyError, ValueError) as exc:
            raise LedgerError(
                f"Cannot open the run ledger at {self.shown_url}: {exc} (is the URL right, "
                "and its database driver installed?)"
            ) from exc
        self._closed = False
        self._migrate()
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._failure: LedgerError | None = None
        self._thread = threading.Thread(target=self._serve, name="orchestra-ledger", daemon=True)
        self._thread.start()

    def _migrate(self) -> None:
        # Switching a new SQLite file to WAL can answer "locked" at once, without waiting on
        # the busy timeout, when another process opens it at the same moment: retry briefly.
        for attempt in range(8):
            try:
                with self.engine.begin() as connection:
                    migrate(connection)
                return
            except OperationalError as exc:
                if "locked" not in str(exc) or attempt == 7:
                    raise LedgerError(
                        f"Cannot open the run ledger at {self.shown_url}: {exc}"
                    ) from exc
                time.sleep(0.05 * 2**attempt)
            except SQLAlchemyError as exc:
                raise LedgerError(f"Cannot open the run ledger at {self.shown_url}: {exc}") from exc

    @property
    def path(self) -> Path | None:
        """The SQLite file, or None for other databases."""
        return sqlite_file(self.url)

    async def write(self, write: Write) -> None:
        """Queue ``write`` and wait until it is committed.

        Raises:
            LedgerError: The transaction it was part of failed; nothing in it was stored.
        """
        done: LoopCompletion[None] = LoopCompletion()
        self._submit(_Job(write, done))
        await done.wait()

    def write_soon(self, write: Write) -> None:
        """Queue ``write`` without waiting; a failure surfaces on the next ``write``."""
        self._submit(_Job(write, None))

    def session(self) -> Session:
        """A session for reading (the CLI, tests); it does not take the write lock."""
        return Session(self.engine)

    def close(self) -> None:
        """Commit what is queued, stop the writer and release the database."""
        if self._closed:
            return
        self._closed = True
        self._jobs.put(None)
        self._thread.join(timeout=60)
        self.engine.dispose()

    def _submit(self, job: _Job) -> None:
        if self._closed:
            raise LedgerError(f"The run ledger at {self.shown_url} is closed.")
        if self._failure is not None:
            error, self._failure = self._failure, None
            raise error
        self._jobs.put(job)

    def _serve(self) -> None:
        while True:
            first = self._jobs.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while True:  # group commit: take everything queued so far
                try:
                    more = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list[_Job]) -> None:
        operations = sorted(
            (op for job in batch for op in job.write), key=lambda op: op[0]
        )  # stable: equal ranks keep their queue order
        try:
            with Session(self.engine.execution_options(orchestra_writer=True)) as session:
                for statement, params in _grouped(operations):
                    session.execute(statement, params)
                session.commit()
        except Exception as exc:  # any failure loses the whole batch; tell every writer
            error = LedgerError(f"Could not write to the run ledger at {self.shown_url}: {exc}")
            waited = [job.done for job in batch if job.done is not None]
            if len(waited) < len(batch):
                self._failure = error
            for done in waited:
                done.set_exception(error)
            return
        for job in batch:
            if job.done is not None:
                job.done.set_result(None)


def _grouped(operations: list[Operation]) -> list[tuple[Any, list[dict[str, Any]]]]:
    """Consecutive operations on one statement, merged into one executemany call."""
    groups: list[tuple[Any, list[dict[str, Any]]]] = []
    for _, statement, params in operations:
        rows = params if isinstance(params, list) else [params]
        if groups and groups[-1][0] is statement:
            groups[-1][1].extend(rows)
        else:
            groups.append((statement, list(rows)))
    return [(statement, rows) for statement, rows in groups if rows]


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (plain path or ``file:`` URI), or None."""
    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    if database.startswith("file:"):
        database = database.removeprefix("file:").partition("?")[0]
    return Path(database).resolve()


def _make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, hide_parameters=True)
    path = sqlite_file(url)
    if path is not None and not (parsed.database or "").startswith("file:"):
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        connect_args={"timeout": BUSY_TIMEOUT_S, "check_same_thread": False},
        hide_parameters=True,  # row values (outputs, errors) stay out of error messages
    )
    # pysqlite's own transaction handling would start transactions late and deferred; take
    # control so that every transaction is BEGIN IMMEDIATE (SQLAlchemy's documented recipe).

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # The writer takes the write lock up front; readers must not wait for it.
        writer = connection.get_execution_options().get("orchestra_writer")
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")

    return engine
