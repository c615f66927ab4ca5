"""What faults cost with the executor's default policies, and resuming after kill -9.

The fault-injecting server (``tests/fakes/faults.py``) runs in a child process and answers
every call after 20 ms. The DAG: 1000 tasks in 20 layers of 50, each depending on two of the
layer before, on one OpenAI agent through the real SDK, at concurrency 64, ledger on. Faults
(at 0%, 30%, 60% of calls by default) are spread evenly over 429 and 529 (both with
Retry-After 0.1 s), 500, connection reset, a read timeout (the task's timeout is 1 s) and a
cut answer, at most three per task. The executor keeps its defaults (``RetryPolicy()``,
``BreakerPolicy()``): every task should succeed at 30%, and at 60% all should within
``max_total_s`` or fail saying why. At 60% the breaker opens and tasks wait out its 30 s
cool-downs: minutes (progress goes to stderr). ``--tuned`` runs what was measured before:
six attempts, no backoff beyond Retry-After, breakers off.

Per rate: tasks succeeded, failed and skipped; the makespan and its ratio to the 0% one of
the same round; attempts recorded against calls the server logged (equal when every call is
recorded); how often the breaker opened; why failed tasks failed. Resume: the 0% run in a
child process, killed with SIGKILL once half its tasks succeeded, then
``TaskExecutor.resume`` here; its time per task against the full run's.

Run: ``.venv/bin/python bench/faults.py [--repeat 3] [--rates 0,0.3,0.6] [--tuned]``
(from the repository root)
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from orchestration import (
    AgentRegistry,
    AgentTask,
    RetryPolicy,
    TaskExecutor,
    TaskResult,
    TaskStatus,
)
from orchestration.ledger import Ledger
from orchestration.logs import configure_logging
from orchestration.runtime.resilience import BreakerState, CircuitBreaker

LAYERS, WIDTH, CAP = 20, 50, 64
TASKS = LAYERS * WIDTH
ROOT = Path(__file__).resolve().parent.parent
SUCCEEDED = "SELECT COUNT(*) FROM task_runs WHERE status = 'succeeded'"


def dag() -> list[AgentTask]:
    tasks = []
    for layer in range(LAYERS):
        for i in range(WIDTH):
            deps = () if layer == 0 else (f"L{layer - 1}-{i}", f"L{layer - 1}-{(i + 1) % WIDTH}")
            tid = f"L{layer}-{i}"
            tasks.append(
                AgentTask(
                    task_id=tid,
                    description=f"[[task:{tid}]] go",
                    agent="gpt",
                    depends_on=deps,
                    timeout=1.0,
                )
            )
    return tasks


def registry() -> AgentRegistry:
    agents = AgentRegistry()
    agents.register_agent(
        "gpt", "openai-gpt", model="gpt-4o-mini", api_key_env="FAULT_KEY", script_fallback=False
    )
    return agents


def executor(ledger: Ledger, tuned: bool = False) -> TaskExecutor:
    """The default policies; or, ``tuned``, six attempts without backoff and no breakers."""
    retry = RetryPolicy(max_attempts=6, base_delay_s=0.0) if tuned else None
    return TaskExecutor(
        registry(), ledger=ledger, max_concurrency=CAP, retry=retry, breakers=not tuned
    )


def start_server(rate: float, log: Path) -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, "-m", "tests.fakes.faults", "--rate", str(rate)]
    command += ["--latency", "0.02", "--retry-after", "0.1", "--retry-after-kinds", "429,529"]
    command += ["--hang", "5", "--max-faults-per-key", "3", "--seed", "11", "--log", str(log)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)  # noqa: S603
    assert child.stdout is not None  # noqa: S101 - piped above
    port = int(child.stdout.readline())
    return child, f"http://127.0.0.1:{port}/v1"


@dataclass
class Outcome:
    """One run of the DAG at one fault rate."""

    seconds: float = 0.0
    statuses: Counter[str] = field(default_factory=Counter)
    attempts: int = 0
    calls: int = 0
    opened: int = 0
    errors: Counter[str] = field(default_factory=Counter)


async def report_progress(label: str, outcome: Outcome, started: float) -> None:
    while True:
        await anyio.sleep(10)
        done, seconds = outcome.statuses.total(), time.perf_counter() - started
        opened = f"breaker opened {outcome.opened}x"
        print(f"  {label}: {done}/{TASKS} tasks ended, {seconds:.0f} s, {opened}", file=sys.stderr)


async def timed_run(db: Path, log: Path, label: str, tuned: bool) -> Outcome:
    """Run the DAG once against the server that logs to ``log``; what happened."""
    outcome = Outcome()

    def ended(result: TaskResult) -> None:
        outcome.statuses[result.status.value] += 1
        if result.status is TaskStatus.FAILED:
            outcome.errors[(result.error or "")[:100]] += 1

    ledger = Ledger(f"sqlite:///{db}")
    try:
        async with executor(ledger, tuned) as running, anyio.create_task_group() as tg:
            recorded = running.runner.on_breaker_change

            def changed(breaker: CircuitBreaker) -> None:
                outcome.opened += breaker.state is BreakerState.OPEN
                if recorded is not None:
                    recorded(breaker)  # the ledger's breakers table still learns of it

            running.runner.on_breaker_change = changed
            started = time.perf_counter()
            tg.start_soon(report_progress, label, outcome, started)
            await running.run(dag(), on_task_done=ended)
            outcome.seconds = time.perf_counter() - started
            tg.cancel_scope.cancel()
    finally:
        ledger.close()
    with sqlite3.connect(db) as connection:
        outcome.attempts = connection.execute("SELECT COUNT(*) FROM attempts").fetchone()[0]
    outcome.calls = sum(line.endswith("\n") for line in log.open(encoding="utf-8"))
    return outcome


CHILD = """
import anyio, sys
sys.path.insert(0, {bench!r})
from faults import dag, executor
from orchestration.ledger import Ledger
from orchestration.logs import configure_logging

configure_logging(verbose=False)

async def main():
    async with executor(Ledger(sys.argv[1]), sys.argv[2] == "tuned") as running:
        await running.run(dag(), run_id="killed")

anyio.run(main)
"""


def succeeded(db: Path) -> int:
    try:
        with sqlite3.connect(db) as connection:
            return int(connection.execute(SUCCEEDED).fetchone()[0])
    except sqlite3.OperationalError:  # no tables yet
        return 0


def kill_at_half(db: Path, tuned: bool) -> int:
    """Run the DAG in a child process, SIGKILL it at half; return the tasks it finished."""
    code = CHILD.format(bench=str(ROOT / "bench"))
    mode = "tuned" if tuned else "defaults"
    argv = [sys.executable, "-c", code, f"sqlite:///{db}", mode]
    child = subprocess.Popen(argv, cwd=ROOT)  # noqa: S603
    try:
        while succeeded(db) < TASKS // 2:
            if child.poll() is not None:
                raise RuntimeError("the run ended before it could be killed")
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    return succeeded(db)


async def kill_then_resume(db: Path, tuned: bool) -> tuple[float, int, bool]:
    """Seconds ``resume`` took after a kill at half, the tasks it ran, whether all succeeded."""
    kept = await anyio.to_thread.run_sync(kill_at_half, db, tuned)
    ledger = Ledger(f"sqlite:///{db}")
    try:
        async with executor(ledger, tuned) as running:
            started = time.perf_counter()
            run = await running.resume("killed")
            elapsed = time.perf_counter() - started
    finally:
        ledger.close()
    return elapsed, TASKS - kept, run.ok


def print_round(round_: int, outcomes: dict[float, Outcome]) -> None:
    clean = outcomes.get(0.0)
    print(f"\nround {round_ + 1}")
    print(
        f"{'faults':>6} {'succeeded':>9} {'failed':>6} {'skipped':>7} {'makespan':>9} "
        f"{'ratio':>6} {'attempts':>8} {'calls':>6} {'equal':>5} {'opened':>6}"
    )
    for rate, o in outcomes.items():
        ratio = f"{o.seconds / clean.seconds:6.2f}" if clean else f"{'-':>6}"
        s = o.statuses
        print(
            f"{rate:>6.0%} {s['succeeded']:>9} {s['failed']:>6} {s['skipped']:>7} "
            f"{o.seconds:>7.2f} s {ratio} {o.attempts:>8} {o.calls:>6} "
            f"{'yes' if o.attempts == o.calls else 'NO':>5} {o.opened:>6}"
        )
    for rate, o in outcomes.items():
        if o.errors:
            print(f"failed at {rate:.0%}, by reason (first 100 characters):")
            for error, count in o.errors.most_common():
                print(f"  {count:>5}  {error}")


def print_resume(resumed: tuple[float, int, bool], clean: Outcome) -> None:
    seconds, ran, ok = resumed
    per_task = clean.seconds / TASKS
    print(
        f"resume after kill -9 at half (0%): {seconds:.2f} s for {ran} tasks "
        f"({seconds / ran * 1000:.1f} ms/task against {per_task * 1000:.1f} in the full run: "
        f"ratio {seconds / ran / per_task:.2f}); all succeeded: {ok}"
    )


async def main(repeat: int, rates: list[float], tuned: bool) -> None:
    configure_logging(verbose=False)
    os.environ["FAULT_KEY"] = "k"
    policies = "6 attempts, no backoff, no breakers (--tuned)" if tuned else "default policies"
    print(f"{TASKS}-task layered DAG, 20 ms latency, concurrency {CAP}, {policies}")
    print("attempts: rows in the ledger; calls: what the server logged; opened: the breaker")
    rounds: list[dict[float, Outcome]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(repeat):
            outcomes: dict[float, Outcome] = {}
            rounds.append(outcomes)
            resumed = None
            for rate in rates:  # interleaved: noise hits every rate
                name = f"{rate:.0%}-{round_}"
                log = Path(tmp) / f"{name}.jsonl"
                child, url = start_server(rate, log)
                os.environ["OPENAI_BASE_URL"] = url
                print(f"round {round_ + 1}, {rate:.0%} faults: started", file=sys.stderr)
                try:
                    db = Path(tmp) / f"{name}.db"
                    outcomes[rate] = await timed_run(db, log, f"{rate:.0%}", tuned)
                    if rate == 0.0:
                        db = Path(tmp) / f"resume-{round_}.db"
                        resumed = await kill_then_resume(db, tuned)
                finally:
                    child.send_signal(signal.SIGTERM)
                    child.wait()
            print_round(round_, outcomes)
            if resumed is not None:
                print_resume(resumed, outcomes[0.0])
    if repeat > 1:
        print(f"\nmedian of {repeat} rounds")
        for rate in rates:
            seconds = statistics.median(r[rate].seconds for r in rounds)
            ratios = [r[rate].seconds / r[0.0].seconds for r in rounds if 0.0 in r]
            ratio = f", ratio to 0% {statistics.median(ratios):.2f}" if ratios else ""
            print(f"{rate:>6.0%}: makespan {seconds:.2f} s{ratio}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--rates", default="0,0.3,0.6", help="fault rates, comma-separated")
    parser.add_argument("--tuned", action="store_true", help="the old tuned configuration")
    args = parser.parse_args()
    rates = [float(rate) for rate in args.rates.split(",")]
    anyio.run(main, args.repeat, rates, args.tuned)
