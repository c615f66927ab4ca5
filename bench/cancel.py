"""Cancelled calls are recorded: calls in flight when a run is cancelled leave attempt rows.

The fault server (``tests/fakes/faults.py``) runs in a child process and answers every call
after 30 s, so every call is still in flight when the run is stopped. N tasks (150 by
default, concurrency N) on one OpenAI agent through the real SDK; once the server's call
log shows all N calls arrived, the run is stopped, three ways:

* ``cancel scope``: in this process, the task group the run is in is cancelled;
* ``SIGINT`` and ``SIGTERM``: to a child process running ``orchestra run FILE.py``
  (``python -m orchestration.cli run``), whose ledger is a temporary SQLite file.

Per scenario: the calls the server saw (all in flight), the attempt rows recorded, how many
of them are ``cancelled``, the run's recorded status, the seconds from the stop to the end
of the run (for the signals: of the process) and the exit code (130 for SIGINT, 143 for
SIGTERM expected).

Run: ``.venv/bin/python bench/cancel.py [--tasks 150]`` (from the repository root)
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import anyio

from orchestration import TaskExecutor
from orchestration.cli.runfile import load_run_file
from orchestration.ledger import Ledger
from orchestration.logs import configure_logging

ROOT = Path(__file__).resolve().parent.parent
LATENCY = 30.0

RUN_FILE = """
from orchestration import AgentRegistry, AgentTask

registry = AgentRegistry()
registry.register_agent(
    "gpt", "openai-gpt", model="gpt-4o-mini", api_key_env="FAULT_KEY", script_fallback=False
)
tasks = [
    AgentTask(task_id=f"c{{i}}", description=f"[[task:c{{i}}]] go", agent="gpt")
    for i in range({count})
]
"""


@dataclass
class Stopped:
    """What one way of stopping a run left behind."""

    calls: int
    attempts: int
    cancelled: int
    status: str
    seconds: float
    exit_code: int | None = None


def start_server(log: Path) -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, "-m", "tests.fakes.faults", "--latency", str(LATENCY)]
    command += ["--log", str(log)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)  # noqa: S603
    assert child.stdout is not None  # noqa: S101 - piped above
    port = int(child.stdout.readline())
    return child, f"http://127.0.0.1:{port}/v1"


def write_run_file(count: int, db: Path) -> Path:
    run_file = db.with_suffix(".py")
    run_file.write_text(RUN_FILE.format(count=count), encoding="utf-8")
    return run_file


def calls(log: Path) -> int:
    """The calls the server logged so far (a half-written last line not counted)."""
    if not log.exists():
        return 0
    return sum(line.endswith("\n") for line in log.open(encoding="utf-8"))


def arrived(log: Path, count: int, child: subprocess.Popen[str] | None = None) -> None:
    """Wait until the server logged ``count`` calls (a minute at most)."""
    deadline = time.monotonic() + 60
    while calls(log) < count:
        if child is not None and child.poll() is not None:
            raise RuntimeError(f"the run ended before its calls arrived: {child.communicate()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {calls(log)} of {count} calls arrived within a minute")
        time.sleep(0.01)


def recorded(db: Path, log: Path, seconds: float, code: int | None = None) -> Stopped:
    with sqlite3.connect(db) as connection:
        statuses = [s for (s,) in connection.execute("SELECT status FROM attempts")]
        runs = [s for (s,) in connection.execute("SELECT status FROM runs")]
    status = ", ".join(runs) if runs else "(no run)"
    return Stopped(calls(log), len(statuses), statuses.count("cancelled"), status, seconds, code)


async def cancel_scope(count: int, db: Path, log: Path) -> Stopped:
    """Cancel the task group the run is in, once every call reached the server."""
    agents, tasks = load_run_file(write_run_file(count, db))  # the same as the CLI's
    ledger = Ledger(f"sqlite:///{db}")
    try:
        executor = TaskExecutor(agents, ledger=ledger, max_concurrency=count)
        async with executor, anyio.create_task_group() as tg:
            tg.start_soon(executor.run, tasks)
            await anyio.to_thread.run_sync(arrived, log, count)
            stopped = time.perf_counter()
            tg.cancel_scope.cancel()
        seconds = time.perf_counter() - stopped
    finally:
        ledger.close()
    return recorded(db, log, seconds)


def signalled(count: int, db: Path, log: Path, url: str, signum: int) -> Stopped:
    """Stop ``orchestra run`` with ``signum`` once every call reached the server."""
    run_file = write_run_file(count, db)
    env = {**os.environ, "ORCHESTRA_DB_URL": f"sqlite:///{db}", "OPENAI_BASE_URL": url}
    command = [sys.executable, "-m", "orchestration.cli", "run", str(run_file)]
    command += ["--max-concurrency", str(count), "--json"]
    child = subprocess.Popen(  # noqa: S603
        command, cwd=db.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        arrived(log, count, child)
        stopped = time.perf_counter()
        child.send_signal(signum)
        child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    return recorded(db, log, time.perf_counter() - stopped, child.returncode)


async def main(count: int) -> None:
    configure_logging(verbose=False)
    os.environ["FAULT_KEY"] = "k"
    results: dict[str, Stopped] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for scenario in ("cancel scope", "SIGINT", "SIGTERM"):
            name = scenario.replace(" ", "-")
            log, db = Path(tmp) / f"{name}.jsonl", Path(tmp) / f"{name}.db"
            server, url = start_server(log)
            print(f"{scenario}: started", file=sys.stderr)
            try:
                if scenario == "cancel scope":
                    os.environ["OPENAI_BASE_URL"] = url
                    results[scenario] = await cancel_scope(count, db, log)
                else:
                    results[scenario] = await anyio.to_thread.run_sync(
                        signalled, count, db, log, url, signal.Signals[scenario]
                    )
            finally:  # its answers are still 30 s away: a clean stop would wait for them
                server.kill()
                server.wait()
    print(f"\n{count} tasks at concurrency {count}, answers after {LATENCY:g} s; each run was")
    print(f"stopped once all {count} calls had reached the server")
    print(
        f"{'scenario':<13} {'in flight':>9} {'attempts':>8} {'cancelled':>9} "
        f"{'run status':>10} {'stop took':>9} {'exit code':>9}"
    )
    for scenario, r in results.items():
        code = "-" if r.exit_code is None else str(r.exit_code)
        print(
            f"{scenario:<13} {r.calls:>9} {r.attempts:>8} {r.cancelled:>9} {r.status:>10} "
            f"{r.seconds:>7.2f} s {code:>9}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=150, help="tasks, all at once")
    anyio.run(main, parser.parse_args().tasks)
