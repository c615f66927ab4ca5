"""The run ledger: every run, task and attempt, in SQLite (or any SQLAlchemy database).

A write is a list of operations (a rank, a ``Statement``, its rows as tuples). Every write
made during one event-loop iteration (all the tasks that just finished) becomes one job,
committed in one transaction after the iteration; callers await its commit (or not).
Operations are ordered by rank (stable, so a task's "running" row always precedes its
result) and each statement runs once with all its rows (``executemany``).

Where a job is committed:

- On a SQLite file, on the event loop itself, when that can be done at once: the job is
  small, the writer thread holds no job (those go first, in order) and the write lock is
  free (this connection never waits for it). A commit there costs the SQLite work alone
  (0.1 ms for one task's rows); handing it to a thread and back cost 0.4 ms more on two
  cores, in GIL hand-offs. WAL checkpoints, which fsync, run on the writer thread.
- Otherwise on the writer thread, which takes every job queued so far and commits them in
  one transaction (group commit), waiting for the lock as long as the busy timeout. The
  event loop never blocks on the database there.

Durability: WAL with ``synchronous=NORMAL``. A commit survives the process being killed
(kill -9) at any moment; after a power loss or an operating-system crash the last commits
before it may be rolled back (SQLite syncs the WAL at checkpoints, not at every commit):
a resume then runs again, and pays again for, the tasks whose results were lost.

Both paths use one driver connection each and run SQL compiled once per statement for the
dialect: SQLAlchemy's per-row parameter handling cost more than SQLite's own work (112
against 47 us for a task's three rows).

On SQLite the database is in WAL mode with a busy timeout, and each transaction starts with
``BEGIN IMMEDIATE`` so that two writing processes queue for the lock instead of failing on
upgrade. Schema migrations run when the ledger opens; reads use ordinary sessions.

``Ledger(read_only=True)`` (the read commands') writes nothing: no WAL switch, no migration,
no writer. SQLite opens the file with ``mode=ro``, plus ``immutable=1`` when its directory is
not writable (a WAL reader needs a ``-shm`` file beside it). A database that holds no ledger,
or an older schema (``LedgerOutdatedError``: run a write command once), is refused.

Location: ``url=``, else ``ledger.location.default_db_url()``: ``ORCHESTRA_DB_URL``, the
nearest ``.orchestra/`` walking up from the working directory, or the user's own ledger. A
value without a ``scheme:`` is a path to a SQLite file (``runs.db`` is
``sqlite:///runs.db``). Opening for writing creates the file's directory when its parent
exists, never a chain of directories (but for the user's own ledger's).
What cannot be opened (a malformed URL, an unknown database, a directory, a file that is
not SQLite or is read-only, an unwritable directory) raises ``LedgerError``: one line saying
what is wrong and what to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from anyio.lowlevel import EventLoopToken
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine.url import URL, make_url
from sqlalchemy.exc import DBAPIError, NoSuchModuleError, OperationalError, SQLAlchemyError
from sqlmodel import Session

from llm_abstractions.threads import LoopCompletion, loop_token
from orchestration.ledger.location import default_db_url, ledger_url, user_ledger
from orchestration.ledger.schema import migrate, pending
from orchestration.model.errors import LedgerError

__all__ = [
    "Ledger",
    "LedgerError",
    "LedgerOutdatedError",
    "Commit",
    "Statement",
    "default_db_url",
    "ledger_url",
    "sqlite_file",
]

BUSY_TIMEOUT_S = 30.0
INLINE_ROWS = 400  # a bigger batch is committed on the writer thread, not the event loop
CHECKPOINT_EVERY = 100  # commits on the event loop between two WAL checkpoints
CHECKPOINT_WAIT_MS = 50  # how long a checkpoint waits for readers to leave the WAL
Row = tuple[Any, ...]
Commit = LoopCompletion[None]  # one group commit, awaited by every writer in it


@dataclass(frozen=True, eq=False)
class Statement:
    """A fixed SQL statement with ``:name`` parameters; rows give them in ``columns`` order."""

    sql: str
    columns: tuple[str, ...]

    @classmethod
    def insert(cls, table: str, columns: Sequence[str], after_values: str = "") -> Statement:
        """``INSERT INTO table (columns) VALUES (...)``, then ``after_values``."""
        head = f"INSERT INTO {table} ({', '.join(columns)})"  # noqa: S608 - our own names
        values = ", ".join(":" + c for c in columns)
        return cls(f"{head} VALUES ({values}){after_values}", tuple(columns))


Operation = tuple[int, Statement, list[Row]]
Write = list[Operation]
_Group = tuple[Statement, list[Row]]


_PASSWORD = re.compile(r"(://[^/:@]*:)[^/@]*@")
_ADVICE = "point ORCHESTRA_DB_URL at a new or existing ledger file"
_URL_HINT = "write sqlite:///PATH (or a plain path) for a SQLite file, or a SQLAlchemy URL"


class LedgerOutdatedError(LedgerError):
    """A ledger opened read-only has a schema older than this version's."""


@dataclass
class _Job:
    """Writes gathered during one event-loop iteration, committed together."""

    write: Write
    done: LoopCompletion[None]


_CHECKPOINT = "checkpoint"  # asks the writer thread to checkpoint the WAL


class Ledger:
    """A run ledger; open it once per process and share it.

    Args:
        url: SQLAlchemy URL; see the module docstring for the default.

    Raises:
        LedgerError: The database cannot be opened or migrated.
    """

    def __init__(self, url: str | None = None, *, read_only: bool = False) -> None:
        self.url = ledger_url(url or default_db_url())
        self.read_only = read_only
        # What messages show: never the password a database URL may carry.
        self.shown_url = _PASSWORD.sub(r"\1***@", self.url)
        try:
            parsed = make_url(self.url)
            if parsed.get_backend_name() != "sqlite":
                self.shown_url = parsed.render_as_string(hide_password=True)
            self.engine = _make_engine(parsed, read_only)
        except LedgerError as exc:
            raise self._cannot_open(str(exc)) from None
        except (ImportError, OSError, SQLAlchemyError, ValueError) as exc:
            raise self._cannot_open(_reason(exc)) from exc
        self._closed = False
        try:
            self._check_schema() if read_only else self._migrate()
        except LedgerError:
            self.engine.dispose()
            raise
        self._sqlite = self.engine.dialect.name == "sqlite"
        self._statements: dict[Statement, tuple[str, Callable[[Row], Any] | None]] = {}
        self._jobs: queue.SimpleQueue[_Job | str | None] = queue.SimpleQueue()
        # The job each event loop is gathering, by loop (its token's hash costs 1 us).
        self._gathering: dict[object, _Job] = {}
        self._lock = threading.Lock()
        # Committing on the event loop itself (a SQLite file): its own connection, and how
        # many jobs the writer thread holds (while it holds any, they go first, in order).
        self._here = self._sqlite and self.path is not None
        self._here_connection: Any = None
        self._on_thread = 0
        self._since_checkpoint = 0
        self._thread = threading.Thread(target=self._serve, name="orchestra-ledger", daemon=True)
        if not read_only:
            self._thread.start()

    def _cannot_open(self, reason: str) -> LedgerError:
        return LedgerError(f"cannot open the run ledger at {self.shown_url}: {reason}")

    def _check_schema(self) -> None:
        """Refuse, read-only, a database that holds no ledger or an older schema than ours."""
        try:
            with self.engine.connect() as connection:
                missing = pending(connection)
        except SQLAlchemyError as exc:
            raise self._cannot_open(_reason(exc)) from exc
        if missing is None:
            raise self._cannot_open(f"it holds no run ledger; run something first, or {_ADVICE}")
        if missing:
            raise LedgerOutdatedError(
                f"the run ledger at {self.shown_url} predates this version of orchestra (it "
                f"lacks {', '.join(missing)}); run a write command (orchestra run or resume) "
                "on it once with write access, then it can be read read-only"
            )

    def _migrate(self) -> None:
        # Switching a new SQLite file to WAL can answer "locked" at once, without waiting on
        # the busy timeout, when another process opens it at the same moment: retry briefly.
        for attempt in range(8):
            try:
                writer = self.engine.execution_options(orchestra_writer=True)
                with writer.begin() as connection:
                    migrate(connection)
                return
            except OperationalError as exc:
                if "locked" not in str(exc) or attempt == 7:
                    raise self._cannot_open(_reason(exc)) from exc
                time.sleep(0.05 * 2**attempt)
            except SQLAlchemyError as exc:
                raise self._cannot_open(_reason(exc)) from exc

    @property
    def path(self) -> Path | None:
        """The SQLite file, or None for other databases."""
        return sqlite_file(self.url)

    async def write(self, write: Write) -> None:
        """Queue ``write`` and wait until it is committed.

        Raises:
            LedgerError: The transaction it was part of failed; nothing in it was stored.
        """
        await self.write_soon(write).wait()

    def write_soon(self, write: Write) -> Commit:
        """Queue ``write`` without waiting; await the returned commit to learn how it went.

        Every write of one event-loop iteration (all the tasks that just finished) goes to
        the database as one job, committed after the iteration.

        Raises:
            LedgerError: The ledger is closed.
        """
        token = loop_token()
        with self._lock:
            if self._closed:
                raise LedgerError(f"The run ledger at {self.shown_url} is closed.")
            if self.read_only:
                raise LedgerError(f"The run ledger at {self.shown_url} is open read-only.")
            job = self._gathering.get(token.native_token)
            if job is None:
                job = self._gathering[token.native_token] = _Job([], LoopCompletion())
                loop = token.native_token
                if isinstance(loop, asyncio.AbstractEventLoop):  # on it: no wake-up to send
                    loop.call_soon(self._hand_over, token)
                else:
                    token.backend_class.run_sync_soon(self._hand_over, (token,), loop)
            job.write.extend(write)
        return job.done

    def commit_now(self, commit: Commit) -> None:
        """Hand ``commit`` over at once if it is still gathering, not after this iteration.

        For a writer that knows nothing else will join it in this iteration (the only task
        of a run in flight): a commit made here, on the loop, completes before this returns,
        and what waits for it goes on in the same turn of the loop instead of two later.
        """
        token = loop_token()
        job = self._gathering.get(token.native_token)
        if job is not None and job.done is commit:
            self._hand_over(token)  # the hand-over already scheduled finds nothing left

    def _hand_over(self, token: EventLoopToken) -> None:
        """Commit the iteration's job here, on the loop, or hand it to the writer thread.

        Here when it can be done at once: a SQLite file, a small job, nothing queued on the
        thread (which would have to go first), and the write lock free (this connection
        does not wait for it: another process holding it sends the job to the thread,
        which does). That saves the thread's round trip: two GIL hand-offs, about 0.4 ms
        on two busy cores, against 0.1-0.2 ms of SQLite work a batch.
        """
        with self._lock:  # never after close() has queued the writer's stop
            job = self._gathering.pop(token.native_token, None)
            if job is None:
                return
            rows = sum(len(rows) for _, _, rows in job.write)
            small = rows <= INLINE_ROWS
            if not (self._here and not self._on_thread and small and self._commit_here(job)):
                self._on_thread += 1
                self._jobs.put(job)
                return
        job.done.set_result(None)  # outside the lock: what it wakes may write again

    def _commit_here(self, job: _Job) -> bool:
        """Commit ``job`` on this thread, without waiting for the lock; whether it was."""
        connection = self._here_connection
        try:
            if connection is None:
                connection = self._here_connection = self._open_here()
            self._transaction(connection, [job])
        except Exception as exc:  # the lock is held, or worse: the thread tries, and reports
            if not _busy(exc):  # a connection that failed otherwise is not trusted again
                self._here_connection = None
                _close(connection)
            return False
        self._since_checkpoint += 1
        if self._since_checkpoint >= CHECKPOINT_EVERY:
            self._since_checkpoint = 0
            self._jobs.put(_CHECKPOINT)
        return True

    def _open_here(self) -> Any:
        """The event loop's own connection: it never waits for a lock or checkpoints.

        Checkpoints (copying the WAL into the database, with an fsync) would stall the
        loop for milliseconds: the writer thread runs them, every ``CHECKPOINT_EVERY``
        commits made here.
        """
        connection = self.engine.raw_connection()
        connection.detach()  # its settings are its own, never handed to the pool's users
        cursor = connection.cursor()
        try:
            cursor.execute("PRAGMA busy_timeout=0")
            cursor.execute("PRAGMA wal_autocheckpoint=0")
        finally:
            cursor.close()
        return connection

    def has_run(self, run_id: str) -> bool:
        """Whether a run with this id is recorded (blocking: call it from a thread)."""
        with self.session() as session:
            found = session.execute(text("SELECT 1 FROM runs WHERE id = :id"), {"id": run_id})
            return found.first() is not None

    def session(self) -> Session:
        """A session for reading (the CLI, tests); it does not take the write lock."""
        return Session(self.engine)

    def close(self) -> None:
        """Commit what is queued, stop the writer and release the database."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for loop in list(self._gathering):
                self._on_thread += 1
                self._jobs.put(self._gathering.pop(loop))
            self._jobs.put(None)
            _close(self._here_connection)
            self._here_connection = None
        if self._thread.is_alive():
            self._thread.join(timeout=60)
        self.engine.dispose()

    def _serve(self) -> None:
        connection: Any = None
        while (batch := self._next_batch()) is not None:
            jobs = [job for job in batch if isinstance(job, _Job)]
            if jobs:
                connection = self._commit(connection, jobs)
                with self._lock:
                    self._on_thread -= len(jobs)
            if len(jobs) < len(batch):
                connection = self._checkpoint(connection)
        if connection is not None:
            connection.close()

    def _next_batch(self) -> list[_Job | str] | None:
        """Every job queued so far (group commit); None once the ledger is closed."""
        first = self._jobs.get()
        if first is None:
            return None
        batch = [first]
        while True:
            try:
                more = self._jobs.get_nowait()
            except queue.Empty:
                return batch
            if more is None:  # closing: commit this batch, then stop
                self._jobs.put(None)
                return batch
            batch.append(more)

    def _checkpoint(self, connection: Any) -> Any:
        """Copy the WAL into the database and start it over, if readers allow at once.

        ``RESTART`` holds the write lock while it copies: commits on the event loop, which
        never wait for the lock, come to this thread meanwhile and wait here, in order.
        (A ``PASSIVE`` checkpoint racing a writer that commits every few hundred
        microseconds never catches up, and the WAL grew by 20 KB a commit.) It waits for
        readers ``CHECKPOINT_WAIT_MS`` at most; then it is partial, and the next one goes on.
        """
        try:
            connection = connection or self.engine.raw_connection()
            cursor = connection.cursor()
            try:
                cursor.execute(f"PRAGMA busy_timeout={CHECKPOINT_WAIT_MS}")
                cursor.execute("PRAGMA wal_checkpoint(RESTART)")
                cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            finally:
                cursor.close()
        except Exception:  # the next one will try again; writes do not depend on it
            _discard(connection)
            return None
        return connection

    def _commit(self, connection: Any, batch: list[_Job]) -> Any:
        """Commit ``batch`` in one transaction, or else each job in its own.

        A job that cannot be written (a duplicate key, a value the driver refuses) then
        fails alone instead of taking other runs' rows with it. A connection that saw a
        failure is dropped and the next batch opens a new one: a database server that
        restarted, or an idle connection it closed, does not fail every later write.

        Returns:
            The connection for the next batch (None: open a new one).
        """
        connection, error = self._try(connection, batch)
        if error is None:
            return connection
        if len(batch) == 1:
            batch[0].done.set_exception(error)
            return connection
        for job in batch:
            connection, alone = self._try(connection, [job])
            if alone is not None:
                job.done.set_exception(alone)
        return connection

    def _try(self, connection: Any, jobs: list[_Job]) -> tuple[Any, LedgerError | None]:
        """Commit ``jobs`` together and tell them; on failure, return the error instead."""
        try:
            connection = connection or self.engine.raw_connection()
            self._transaction(connection, jobs)
        except Exception as exc:
            error = LedgerError(f"Could not write to the run ledger at {self.shown_url}: {exc}")
            _discard(connection)
            return None, error
        for job in jobs:
            job.done.set_result(None)
        return connection, None

    def _transaction(self, connection: Any, jobs: list[_Job]) -> None:
        operations = sorted(
            (op for job in jobs for op in job.write), key=lambda op: op[0]
        )  # stable: equal ranks keep their queue order
        cursor = connection.cursor()
        try:
            if self._sqlite:  # the driver is in autocommit mode: open the transaction here
                cursor.execute("BEGIN IMMEDIATE")
            for statement, rows in _grouped(operations):
                sql, convert = self._compiled(statement)
                cursor.executemany(sql, rows if convert is None else [convert(r) for r in rows])
            connection.commit()
        except Exception:
            _rollback(connection)
            raise
        finally:
            cursor.close()

    def _compiled(self, statement: Statement) -> tuple[str, Callable[[Row], Any] | None]:
        """The driver's SQL for ``statement``, and how to turn a row into its parameters."""
        compiled = self._statements.get(statement)
        if compiled is None:
            compiled = _compile(statement, self.engine)
            self._statements[statement] = compiled
        return compiled


def _compile(statement: Statement, engine: Engine) -> tuple[str, Callable[[Row], Any] | None]:
    compiled = text(statement.sql).compile(dialect=engine.dialect)
    order = compiled.positiontup
    if order is None:  # a named paramstyle: the driver wants a mapping per row
        columns = statement.columns
        return compiled.string, lambda row: dict(zip(columns, row, strict=True))
    if tuple(order) == statement.columns:
        return compiled.string, None
    index = [statement.columns.index(name) for name in order]
    return compiled.string, lambda row: tuple(row[i] for i in index)


def _rollback(connection: Any) -> None:
    try:
        connection.rollback()
    except Exception:  # noqa: S110 - the commit's own error is the one worth reporting
        pass


def _busy(exc: Exception) -> bool:
    """Whether ``exc`` is SQLite saying another connection holds the lock."""
    return isinstance(exc, sqlite3.OperationalError) and (
        "locked" in str(exc) or "busy" in str(exc)
    )


def _close(connection: Any) -> None:
    """Close the event loop's connection (detached from the pool), if there is one."""
    if connection is not None:
        with contextlib.suppress(Exception):  # it is being thrown away anyway
            connection.close()


def _discard(connection: Any) -> None:
    """Close a connection that saw a failure, and take it out of the pool."""
    if connection is not None:
        with contextlib.suppress(Exception):  # it is being thrown away anyway
            connection.invalidate()


def _grouped(operations: list[Operation]) -> list[_Group]:
    """Consecutive operations on one statement, merged into one executemany call."""
    groups: list[_Group] = []
    for _, statement, rows in operations:
        if groups and groups[-1][0] is statement:
            groups[-1][1].extend(rows)
        else:
            groups.append((statement, list(rows)))
    return [(statement, rows) for statement, rows in groups if rows]


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (plain path or ``file:`` URI), or None (also for a bad URL)."""
    try:
        parsed = make_url(ledger_url(url))
    except (SQLAlchemyError, ValueError):
        return None
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    if database.startswith("file:"):
        database = database.removeprefix("file:").partition("?")[0]
    return Path(database).resolve()


def location_problem(path: Path, create: bool = True) -> str | None:
    """Why a run could not record at ``path`` (None: as far as can be told, it can).

    The file's directory may be missing if its parent exists: ``create`` makes it then.
    """
    if path.is_dir():
        return f"it is a directory; point ORCHESTRA_DB_URL at a file, e.g. {path / 'runs.db'}"
    folder = path.parent
    if create and path == user_ledger():
        folder.mkdir(parents=True, exist_ok=True)  # the user's data directory may be new
    if not folder.is_dir():
        if not folder.parent.is_dir():
            return f"its directory {folder} does not exist; create it, or {_ADVICE}"
        if not create:
            return None  # a run would make it
        try:
            folder.mkdir()
        except OSError as exc:
            return f"cannot create its directory {folder} ({exc.strerror or exc}); {_ADVICE}"
    if path.exists() and not os.access(path, os.W_OK):
        return (
            "the file is read-only; the read commands (orchestra runs, show, attempts, report) "
            "can open it, a run needs write access"
        )
    if not os.access(path.parent, os.W_OK | os.X_OK):
        return (
            f"its directory {path.parent} is not writable (SQLite keeps its journal beside the "
            f"file); {_ADVICE} in a writable directory"
        )
    return None


def _reason(exc: BaseException) -> str:
    """What an error met on opening means, in one line, with what to do."""
    if isinstance(exc, NoSuchModuleError):
        kind = str(exc).rpartition(":")[2].strip()
        return f"{kind!r} is not a kind of database SQLAlchemy knows; {_URL_HINT}"
    if isinstance(exc, ImportError):
        return f"its database driver is not installed ({exc}); install it, or use sqlite:///PATH"
    if isinstance(exc, DBAPIError):
        said = _first_line(exc.orig or exc)
        if "not a database" in said:
            return f"not a SQLite database; {_ADVICE}"
        if "readonly" in said or "read-only" in said:
            return f"it cannot be written ({said}); a run needs write access, or {_ADVICE}"
        if "unable to open" in said:
            return f"SQLite cannot open it ({said}); {_ADVICE} in a writable directory"
        return f"{said}; is the URL right and the database reachable?"
    if isinstance(exc, SQLAlchemyError | ValueError):
        return f"not a database URL; {_URL_HINT}"
    return _first_line(exc)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _make_engine(parsed: URL, read_only: bool) -> Engine:
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, hide_parameters=True)
    path = sqlite_file(parsed.render_as_string(hide_password=False))
    if path is not None and read_only:
        if path.is_dir() or not path.exists():
            missing = f"no ledger file there yet; run something first, or {_ADVICE}"
            raise LedgerError(location_problem(path, create=False) or missing)
        writable = os.access(path.parent, os.W_OK | os.X_OK)
        query = {"mode": "ro", "uri": "true"} | ({} if writable else {"immutable": "1"})
        parsed = URL.create("sqlite", database=f"file:{quote(str(path))}", query=query)
    elif path is not None and not (parsed.database or "").startswith("file:"):
        problem = location_problem(path)
        if problem is not None:
            raise LedgerError(problem)
    engine = create_engine(
        parsed,
        connect_args={"timeout": BUSY_TIMEOUT_S, "check_same_thread": False},
        hide_parameters=True,  # row values (outputs, errors) stay out of error messages
    )
    # pysqlite's own transaction handling would start transactions late and deferred; take
    # control so that every transaction is BEGIN IMMEDIATE (SQLAlchemy's documented recipe).

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        if not read_only:  # switching to WAL writes the file
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Migrations take the write lock up front; readers must not wait for it.
        writer = connection.get_execution_options().get("orchestra_writer")
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")

    return engine
