from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import structlog
import structlog.testing

from llm_abstractions import LlmFactory, LlmRequest, LLMServerError, Usage
from llm_abstractions.testing import FunctionLlm
from orchestration import AgentRegistry, AgentTask, RetryPolicy, TaskExecutor, TaskStatus
from orchestration.ledger import Ledger, LedgerError, default_db_url
from orchestration.ledger.accounting import cost_of, redact

pytestmark = pytest.mark.anyio
CANARY = "sk-canary-4c1d9e77aa"
ROOT = Path(__file__).resolve().parent.parent


def db_path() -> Path:
    return Path(default_db_url().removeprefix("sqlite:///"))


def rows(query: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(db_path()) as connection:
        return connection.execute(query).fetchall()


def registry_answering(handler: Any, api_key: str | None = None) -> AgentRegistry:
    llm = FunctionLlm(handler)
    keys = ("RECORDED_API_KEY",) if api_key else ()
    LlmFactory.register_provider("recorded", lambda **_: llm, env_keys=keys, replace=True)
    registry = AgentRegistry()
    registry.register_agent("worker", "recorded", api_key=api_key)
    return registry


def task(task_id: str, *deps: str) -> AgentTask:
    return AgentTask(task_id=task_id, description=f"do {task_id}", agent="worker", depends_on=deps)


async def test_rows_match_what_happened_attempt_by_attempt() -> None:
    def handler(request: LlmRequest) -> str:
        if request.metadata["task_id"] == "b":
            raise LLMServerError("upstream exploded", status_code=503)
        return "fine"

    executor = TaskExecutor(registry=registry_answering(handler), retry=RetryPolicy.never())
    run = await executor.run([task("a"), task("b", "a"), task("c", "b"), task("d")], name="demo")
    await executor.aclose()
    assert rows("SELECT id, name, status, task_count FROM runs") == [
        (run.run_id, "demo", "failed", 4)
    ]
    statuses = {row[0]: row[1] for row in rows("SELECT task_id, status FROM task_runs")}
    assert statuses == {"a": "succeeded", "b": "failed", "c": "skipped", "d": "succeeded"}
    attempts = rows(
        "SELECT task_id, attempt, execution_method, provider, status, error_type, "
        "input_tokens, output_tokens FROM attempts ORDER BY task_id"
    )
    assert attempts == [
        ("a", 1, "llm_factory", "recorded", "succeeded", None, 3, 1),
        ("b", 1, "llm_factory", "recorded", "failed", "LLMServerError", None, None),
        ("d", 1, "llm_factory", "recorded", "succeeded", None, 3, 1),
    ]
    definitions = rows("SELECT task_id, position FROM run_tasks ORDER BY position")
    assert definitions == [("a", 0), ("b", 1), ("c", 2), ("d", 3)]
    assert rows("SELECT name FROM schema_migrations") == [
        ("001_initial_tables",),
        ("002_resilience",),
        ("003_run_budget",),
        ("004_checked_output",),
        ("005_agent_keys",),
        ("006_tool_calls",),
        ("007_attempt_details",),
    ]
    assert rows("PRAGMA journal_mode") == [("wal",)]


async def test_execute_is_recorded_as_a_one_task_run() -> None:
    executor = TaskExecutor(registry=registry_answering(lambda request: "ok"))
    result = await executor.execute(AgentTask(task_id="T1", description="hi"), agent="worker")
    await executor.aclose()
    assert result.status is TaskStatus.SUCCEEDED
    assert rows("SELECT task_id, agent, status, output FROM task_runs") == [
        ("T1", "worker", "succeeded", "ok")
    ]


async def test_canary_key_never_reaches_the_ledger_or_the_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)

    def leaky(request: LlmRequest) -> str:
        raise LLMServerError(f"bad request with key {CANARY} and sk-other-abcdefghijk")

    executor = TaskExecutor(
        registry=registry_answering(leaky, api_key=CANARY), retry=RetryPolicy.never()
    )
    with structlog.testing.capture_logs() as events:
        run = await executor.run([task("a")])
    await executor.aclose()
    assert [(e["event"], e["task"], e["status"]) for e in events] == [("attempt", "a", "failed")]
    assert CANARY not in repr(events)
    assert run.results["a"].status is TaskStatus.FAILED
    assert CANARY not in (run.results["a"].error or "")
    for file in db_path().parent.iterdir():  # the database, its WAL and shared memory
        assert CANARY.encode() not in file.read_bytes(), file.name
    assert rows("SELECT error_message FROM attempts") == [
        ("LLMServerError: bad request with key [REDACTED] and [REDACTED]",)
    ]
    assert CANARY not in caplog.text


QUIET = """
import anyio, logging, sys
from llm_abstractions import LlmFactory
from llm_abstractions.testing import FunctionLlm
from orchestration import AgentRegistry, AgentTask, TaskExecutor
if sys.argv[1] == "logging":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
LlmFactory.register_provider("echo", lambda **_: FunctionLlm(lambda r: "ok"))
registry = AgentRegistry()
registry.register_agent("w", "echo")
async def main():
    async with TaskExecutor(registry=registry, record=False) as executor:
        assert (await executor.run([AgentTask(task_id="t", description="x", agent="w")])).ok
anyio.run(main)
"""


@pytest.mark.parametrize("setup", ["none", "logging"])
def test_attempt_events_follow_the_applications_logging(setup: str, tmp_path: Path) -> None:
    """A library user who set up nothing sees nothing; one who set up logging sees events."""
    ran = subprocess.run(  # noqa: S603 - our interpreter, our code
        [sys.executable, "-c", QUIET, setup], capture_output=True, text=True, cwd=tmp_path
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == ""
    if setup == "none":
        assert ran.stderr == ""
    else:
        assert "INFO:orchestra:event='attempt'" in ran.stderr and "task='t'" in ran.stderr


def test_attempt_events_are_built_only_for_a_logger_that_emits_them() -> None:
    """An unconfigured structlog logger answers any attribute: the check must not ask it."""
    from orchestration.logs import configure_logging, get_logger
    from orchestration.runtime.scheduler import _enabled

    library = logging.getLogger("orchestra")
    structlog.reset_defaults()  # as a library user who set up nothing has it
    try:
        library.setLevel(logging.WARNING)
        assert not _enabled(get_logger().bind(run="r"), logging.INFO)
        assert _enabled(get_logger().bind(run="r"), logging.WARNING)
        library.setLevel(logging.INFO)
        assert _enabled(get_logger().bind(run="r"), logging.INFO)
        configure_logging(verbose=False)
        assert not _enabled(get_logger().bind(run="r"), logging.INFO)
        configure_logging(verbose=True)
        assert _enabled(get_logger().bind(run="r"), logging.INFO)
    finally:
        library.setLevel(logging.NOTSET)
        structlog.reset_defaults()


async def test_unwritable_ledger_stops_before_spending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "ro.db"
    Ledger(f"sqlite:///{path}").close()  # create and migrate it
    read_only = Ledger(f"sqlite:///file:{path}?mode=ro&uri=true")
    calls: list[str] = []

    def spend(request: LlmRequest) -> str:
        calls.append(request.prompt_text())
        return "x"

    executor = TaskExecutor(
        registry=registry_answering(spend), ledger=read_only, retry=RetryPolicy.never()
    )
    with pytest.raises(LedgerError, match="Could not write to the run ledger"):
        await executor.run([task("a")])
    read_only.close()
    assert calls == []
    assert read_only.path == path.resolve()
    assert not (tmp_path / "file:").exists()  # a URI is not a directory to create


def test_passwords_never_show_in_messages() -> None:
    with pytest.raises(LedgerError) as info:
        Ledger("postgresql://user:hunter2@127.0.0.1:1/orchestra")
    assert "hunter2" not in str(info.value)
    assert "***" in str(info.value)


async def test_a_closed_ledger_refuses_writes(tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'c.db'}")
    ledger.close()
    with pytest.raises(LedgerError, match="is closed"):
        await ledger.write([])


def test_costs_local_known_and_unknown(caplog: pytest.LogCaptureFixture) -> None:
    usage = Usage(input_tokens=1000, output_tokens=100)
    assert cost_of("local", "SmolLM2", usage) == (0.0, "local")
    assert cost_of("ollama", "llama3", usage) == (0.0, "local")
    cost, source = cost_of("openai-gpt", "gpt-4o-mini", usage)
    assert source == "genai-prices" and cost is not None and 0 < cost < 0.01
    with caplog.at_level(logging.WARNING):
        assert cost_of("openai-gpt", "no-such-model-xyz", usage)[0] is None
    assert "no price for openai-gpt model no-such-model-xyz" in caplog.text
    assert cost_of("openai-gpt", "gpt-4o-mini", Usage())[0] is None  # counts unknown


def test_flat_prices_agree_with_genai_prices_for_every_catalog_model() -> None:
    """The per-token fast path must give genai-prices' own answer, to the last digit."""
    import random

    from genai_prices import Usage as PriceUsage
    from genai_prices import calc_price, data_snapshot

    from orchestration.ledger import accounting

    rng = random.Random(5)
    flat = compared = 0
    for ours, theirs in accounting._PRICE_PROVIDER.items():
        try:
            models = data_snapshot.get_snapshot().find_provider(None, theirs, None).models
        except LookupError:  # genai-prices has no prices for this provider
            continue
        for model in models:
            for _ in range(3):
                cache_read, cache_write = rng.randrange(5000), rng.randrange(5000)
                counts = (
                    cache_read + cache_write + rng.randrange(300_000),
                    rng.randrange(20_000),
                    cache_read,
                    cache_write,
                )
                try:
                    expected = calc_price(
                        PriceUsage(**dict(zip(_FIELDS, counts, strict=True))),
                        model_ref=model.id,
                        provider_id=theirs,
                    ).total_price
                except Exception:  # noqa: BLE001, S112 - genai-prices cannot price these counts
                    continue
                cost, source = cost_of(
                    ours, model.id, Usage(**dict(zip(_FIELDS, counts, strict=True)))
                )
                assert (cost, source) == (float(expected), "genai-prices"), (ours, model.id)
                compared += 1
            flat += accounting._linear.get((theirs, model.id)) is not None
    assert compared > 300 and flat > 100  # the fast path is taken, and checked, widely


_FIELDS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")


def test_redact_masks_known_secrets_and_key_shapes() -> None:
    assert redact("key=abcd1234 and Bearer abcdefghijklmnop", ["abcd1234"]) == (
        "key=[REDACTED] and [REDACTED]"
    )
    assert redact(None) is None


@pytest.mark.parametrize(
    "key",
    [
        "sk-abcdefgh12345",
        "sk-ant-abcdefgh12345",
        "AIza" + "b" * 20,
        "hf_abcdefghij",
        "Bearer abcdefghijklmnop",
        "BEARER\tabcdefghijklmnop",
        "bEaReR abcdefghijklmnop",
    ],
)
@pytest.mark.parametrize("secrets", [[], ["some-other-secret-value"]])
def test_redact_masks_every_key_shape_without_being_told_the_key(
    key: str, secrets: list[str]
) -> None:
    assert redact(f"said {key} once", secrets) == "said [REDACTED] once"
    assert redact("sk- AIza hf_ bearer: no key here", secrets) == (
        "sk- AIza hf_ bearer: no key here"
    )


WRITER = """
import anyio, sys
from llm_abstractions import LlmFactory
from llm_abstractions.testing import FunctionLlm
from orchestration import AgentRegistry, AgentTask, TaskExecutor
LlmFactory.register_provider("echo", lambda **_: FunctionLlm(lambda r: "ok"))
registry = AgentRegistry()
registry.register_agent("w", "echo")
async def main():
    executor = TaskExecutor(registry=registry, max_concurrency=8)
    tasks = [AgentTask(task_id=f"t{i}", description="x", agent="w") for i in range(60)]
    for _ in range(3):
        run = await executor.run(tasks)
        assert run.ok, run
    await executor.aclose()
anyio.run(main)
"""


def test_two_processes_writing_one_ledger_lose_no_rows() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER], env=env, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    for writer in writers:
        _, err = writer.communicate(timeout=240)
        assert writer.returncode == 0, err.decode()[-2000:]
    assert rows("SELECT COUNT(*) FROM runs") == [(6,)]
    assert rows("SELECT COUNT(*) FROM attempts WHERE status = 'succeeded'") == [(360,)]
    assert rows("PRAGMA integrity_check") == [("ok",)]


def test_rows_follow_the_statement_columns_whatever_the_sql_order() -> None:
    from orchestration.ledger.store import Statement, _compile

    ledger = Ledger()
    try:
        statement = Statement("UPDATE runs SET status = :status WHERE id = :id", ("id", "status"))
        sql, convert = _compile(statement, ledger.engine)
        assert sql == "UPDATE runs SET status = ? WHERE id = ?"
        assert convert is not None and convert(("run-1", "failed")) == ("failed", "run-1")
        insert = Statement.insert("runs", ["id", "status"])
        assert insert.sql == "INSERT INTO runs (id, status) VALUES (:id, :status)"
        assert _compile(insert, ledger.engine) == (
            "INSERT INTO runs (id, status) VALUES (?, ?)",
            None,
        )
    finally:
        ledger.close()


@pytest.mark.anyio
async def test_a_job_that_cannot_be_written_fails_alone_and_the_writer_recovers(
    tmp_path: Path,
) -> None:
    from llm_abstractions.threads import LoopCompletion
    from orchestration.ledger.store import Statement, _Job

    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    insert = Statement.insert("runs", ["id", "status", "task_count", "started_at"])
    when = "2026-01-01 00:00:00.000000"
    good = _Job([(0, insert, [("good", "running", 1, when)])], LoopCompletion())
    bad = _Job([(0, insert, [("bad", None, 1, when)])], LoopCompletion())
    try:
        connection = ledger._commit(None, [good, bad])  # one batch, as the writer takes them
        await good.done.wait()
        with pytest.raises(LedgerError, match="NOT NULL"):
            await bad.done.wait()
        assert connection is None  # the connection that saw a failure was dropped
        await ledger.write([(0, insert, [("later", "running", 1, when)])])
    finally:
        ledger.close()
    with sqlite3.connect(tmp_path / "l.db") as db:
        assert db.execute("SELECT id FROM runs ORDER BY id").fetchall() == [("good",), ("later",)]


@pytest.mark.anyio
async def test_a_lost_write_nobody_awaited_is_the_error_of_its_own_run(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from orchestration.ledger.recording import Recorder
    from orchestration.model.tasks import TaskResult

    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    recorder = Recorder(ledger)
    try:
        await recorder.start_run("r1", None, [task("a")], datetime.now(UTC))
        skipped = TaskResult(task_id="a", status=TaskStatus.SKIPPED, error="not run")
        recorder.task_ended_without_running("no-such-run", "a", "w", skipped)  # breaks the FK
        with pytest.raises(LedgerError, match="FOREIGN KEY"):
            await recorder.finish_run("r1", "failed", datetime.now(UTC))
        other = Recorder(ledger)  # another run on the same ledger is not blamed
        await other.start_run("r2", None, [task("a")], datetime.now(UTC))
        await other.finish_run("r2", "succeeded", datetime.now(UTC))
    finally:
        ledger.close()


async def test_while_another_connection_holds_the_lock_commits_wait_off_the_event_loop(
    tmp_path: Path,
) -> None:
    """A commit on the event loop never waits for the lock: the writer thread does.

    The lock is released by a coroutine on the same loop once a job has gone to the thread;
    had the loop waited for the lock itself, nothing could release it (the run would fail
    after the busy timeout).
    """
    import anyio

    path = tmp_path / "l.db"
    ledger = Ledger(f"sqlite:///{path}")
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # another process, say, writing
    executor = TaskExecutor(registry=registry_answering(lambda _: "ok"), ledger=ledger)
    released = False

    async def release_once_queued() -> None:
        nonlocal released
        while not ledger._on_thread:  # noqa: ASYNC110 - the writer thread's state, polled
            await anyio.sleep(0.01)
        holder.execute("COMMIT")
        released = True

    try:
        with anyio.fail_after(20):
            async with anyio.create_task_group() as group:
                group.start_soon(release_once_queued)
                run = await executor.run([task("a"), task("b", "a")])
        await executor.aclose()
    finally:
        holder.close()
        ledger.close()
    assert released and run.ok
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT task_id, status FROM task_runs ORDER BY task_id").fetchall() == [
            ("a", "succeeded"),
            ("b", "succeeded"),
        ]


async def test_a_task_s_running_row_is_stored_while_it_runs_though_nothing_waits_for_it(
    tmp_path: Path,
) -> None:
    import anyio

    path = tmp_path / "l.db"
    ledger = Ledger(f"sqlite:///{path}")
    answer = anyio.Event()

    async def slow(_: LlmRequest) -> str:
        await answer.wait()
        return "done"

    executor = TaskExecutor(registry=registry_answering(slow), ledger=ledger)

    def stored() -> list[tuple[str, str]]:
        with sqlite3.connect(path) as db:
            return db.execute("SELECT task_id, status FROM task_runs").fetchall()

    async def watch() -> None:
        while stored() != [("a", "running")]:  # noqa: ASYNC110 - another connection, polled
            await anyio.sleep(0.005)
        answer.set()

    try:
        with anyio.fail_after(20):
            async with anyio.create_task_group() as group:
                group.start_soon(watch)
                run = await executor.run([task("a")])
        await executor.aclose()
    finally:
        ledger.close()
    assert run.ok and stored() == [("a", "succeeded")]


async def test_the_wal_is_checkpointed_while_commits_are_made_on_the_event_loop(
    tmp_path: Path,
) -> None:
    path = tmp_path / "l.db"
    ledger = Ledger(f"sqlite:///{path}")
    wal = Path(f"{path}-wal")
    sizes = []

    def handler(_: LlmRequest) -> str:
        sizes.append(wal.stat().st_size if wal.exists() else 0)
        return "ok"

    executor = TaskExecutor(registry=registry_answering(handler), ledger=ledger)
    chain = [task("t0")] + [task(f"t{i}", f"t{i - 1}") for i in range(1, 1500)]
    try:
        run = await executor.run(chain)  # a commit for each task, each on the loop
        await executor.aclose()
    finally:
        ledger.close()
    assert run.ok
    # Each commit adds pages to the WAL (about 20 KB here); without checkpoints it would
    # pass 25 MB by the end.
    assert max(sizes) < 8_000_000, max(sizes)
