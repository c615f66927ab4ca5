"""What faults cost: the same DAG at 0% and 30% injected faults, and resuming after kill -9.

The fault-injecting server (``tests/fakes/faults.py``) runs in a child process and answers
every call after 20 ms. The DAG: 1000 tasks in 20 layers of 50, each depending on two tasks
of the layer before, on one OpenAI agent through the real SDK, at concurrency 64, with the
ledger on. At 30%, faults are spread evenly over 429 (Retry-After 0.1 s), 500, 529,
connection reset, a read timeout (the task's timeout is 1 s) and a cut answer, at most three
per task; the retry policy allows six attempts and no backoff beyond what Retry-After asks,
so the makespan shows the faults' own cost, not our waiting.

Resume: the 0% run in a child process, killed with SIGKILL once half its tasks succeeded,
then ``TaskExecutor.resume`` here; its time is compared with the time the full run spent
per task.

Run: ``.venv/bin/python bench/faults.py [--repeat 3]`` (from the repository root)
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
from pathlib import Path

import anyio

from orchestration import AgentRegistry, AgentTask, RetryPolicy, TaskExecutor
from orchestration.ledger import Ledger
from orchestration.logs import configure_logging

LAYERS, WIDTH, CAP = 20, 50, 64
ROOT = Path(__file__).resolve().parent.parent


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


def executor(ledger: Ledger) -> TaskExecutor:
    return TaskExecutor(
        registry(),
        ledger=ledger,
        max_concurrency=CAP,
        retry=RetryPolicy(max_attempts=6, base_delay_s=0.0),
        breakers=False,  # at 30% a breaker would rightly open: measured here is retrying
    )


def start_server(rate: float, log: Path) -> tuple[subprocess.Popen[str], str]:
    command = [
        sys.executable,
        "-m",
        "tests.fakes.faults",
        "--rate",
        str(rate),
        "--latency",
        "0.02",
        "--retry-after",
        "0.1",
        "--hang",
        "5",
        "--max-faults-per-key",
        "3",
        "--seed",
        "11",
        "--log",
        str(log),
    ]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)  # noqa: S603
    assert child.stdout is not None  # noqa: S101 - piped above
    port = int(child.stdout.readline())
    return child, f"http://127.0.0.1:{port}/v1"


async def timed_run(db: Path) -> tuple[float, int, bool]:
    """Seconds for the whole DAG, attempts recorded, whether every task succeeded."""
    ledger = Ledger(f"sqlite:///{db}")
    try:
        async with executor(ledger) as running:
            started = time.perf_counter()
            run = await running.run(dag())
            elapsed = time.perf_counter() - started
    finally:
        ledger.close()
    with sqlite3.connect(db) as connection:
        attempts = connection.execute("SELECT COUNT(*) FROM attempts").fetchone()[0]
    return elapsed, attempts, run.ok


CHILD = """
import anyio, sys
sys.path.insert(0, {bench!r})
from faults import dag, executor
from orchestration.ledger import Ledger
from orchestration.logs import configure_logging

configure_logging(verbose=False)

async def main():
    async with executor(Ledger(sys.argv[1])) as running:
        await running.run(dag(), run_id="killed")

anyio.run(main)
"""


def kill_at_half(db: Path) -> int:
    """Run the DAG in a child process, SIGKILL it at half; return the tasks it finished."""
    url = f"sqlite:///{db}"
    code = CHILD.format(bench=str(ROOT / "bench"))
    child = subprocess.Popen([sys.executable, "-c", code, url], cwd=ROOT)  # noqa: S603
    try:
        while True:
            if child.poll() is not None:
                raise RuntimeError("the run ended before it could be killed")
            try:
                with sqlite3.connect(db) as connection:
                    done = connection.execute(
                        "SELECT COUNT(*) FROM task_runs WHERE status = 'succeeded'"
                    ).fetchone()[0]
            except sqlite3.OperationalError:
                done = 0
            if done >= LAYERS * WIDTH // 2:
                break
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    with sqlite3.connect(db) as connection:
        kept: int = connection.execute(
            "SELECT COUNT(*) FROM task_runs WHERE status = 'succeeded'"
        ).fetchone()[0]
    return kept


async def kill_then_resume(db: Path) -> tuple[float, int, bool]:
    """Seconds ``resume`` took after a kill at half, the tasks it ran, whether all succeeded."""
    kept = await anyio.to_thread.run_sync(kill_at_half, db)
    ledger = Ledger(f"sqlite:///{db}")
    try:
        async with executor(ledger) as running:
            started = time.perf_counter()
            run = await running.resume("killed")
            elapsed = time.perf_counter() - started
    finally:
        ledger.close()
    return elapsed, LAYERS * WIDTH - kept, run.ok


async def main(repeat: int) -> None:
    configure_logging(verbose=False)
    os.environ["FAULT_KEY"] = "k"
    results: dict[str, list[tuple[float, int, bool]]] = {"0%": [], "30%": [], "resume": []}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(repeat):
            for label, rate in (("0%", 0.0), ("30%", 0.3)):  # interleaved: noise hits both
                child, url = start_server(rate, Path(tmp) / f"{label}-{round_}.jsonl")
                os.environ["OPENAI_BASE_URL"] = url
                try:
                    results[label].append(await timed_run(Path(tmp) / f"{label}-{round_}.db"))
                    if rate == 0.0:
                        db = Path(tmp) / f"resume-{round_}.db"
                        results["resume"].append(await kill_then_resume(db))
                finally:
                    child.send_signal(signal.SIGTERM)
                    child.wait()
    tasks = LAYERS * WIDTH
    clean = statistics.median(r[0] for r in results["0%"])
    faulty = statistics.median(r[0] for r in results["30%"])
    print(f"\n{tasks}-task layered DAG, 20 ms latency, concurrency {CAP}, median of {repeat}")
    for label in ("0%", "30%"):
        runs = results[label]
        print(
            f"  {label:>4} faults: makespan {statistics.median(r[0] for r in runs):6.2f} s, "
            f"{statistics.median(r[1] for r in runs) / tasks:.2f} attempts/task, "
            f"all succeeded: {all(r[2] for r in runs)}"
        )
    print(f"  makespan ratio 30% / 0%: {faulty / clean:.2f}")
    resumed = results["resume"]
    seconds = statistics.median(r[0] for r in resumed)
    ran = statistics.median(r[1] for r in resumed)
    print(
        f"  resume after kill -9 at half: {seconds:.2f} s for {ran:.0f} tasks "
        f"({seconds / ran * 1000:.1f} ms/task against {clean / tasks * 1000:.1f} in the "
        f"full run: ratio {seconds / ran / (clean / tasks):.2f}); "
        f"all succeeded: {all(r[2] for r in resumed)}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    anyio.run(main, parser.parse_args().repeat)
