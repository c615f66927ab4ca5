"""What the ledger costs per task on SQLite and on PostgreSQL, in one process and in four.

One process: TaskExecutor runs a DAG of scripted tasks that answer at once (``FunctionLlm``,
no latency), with no ledger (the baseline), a SQLite file (WAL, ``synchronous=NORMAL``) and
a PostgreSQL 15 database (a throwaway local cluster on a Unix socket, fsync on as a
production server has it), interleaved so that noise hits every mode alike. Reported:
microseconds per task, and the ledger's share (the mode minus the baseline). DAGs: ``wide``
(2000 independent tasks: commits are grouped) and ``chain`` (300 tasks, each waiting for the
commit of the one before: a commit's round trip, task after task).

Four processes: four writers (each a TaskExecutor running 1000 tasks in ten layers of a
hundred, as ``tests/test_ledger_backends.py`` does) start together on one ledger; the wall
time until the last ends, against one such writer alone on the same backend.

Run: ``.venv/bin/python bench/ledger_backends.py [--repeat 3]`` (needs ``initdb`` and
``pg_ctl``: PostgreSQL's server binaries).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llm_abstractions import LlmFactory  # noqa: E402
from llm_abstractions.testing import FunctionLlm  # noqa: E402
from orchestration import AgentRegistry, AgentTask, TaskExecutor  # noqa: E402
from orchestration.ledger import Ledger  # noqa: E402
from orchestration.logs import configure_logging  # noqa: E402
from tests.support.postgres import PostgresServer  # noqa: E402
from tests.support.writers import layers  # noqa: E402

CAP = 64


def wide(n: int = 2000) -> list[AgentTask]:
    return [AgentTask(task_id=f"W{i}", description="w", agent="w") for i in range(n)]


def chain(n: int = 300) -> list[AgentTask]:
    return [
        AgentTask(
            task_id=f"C{i}", description="c", agent="w", depends_on=(f"C{i - 1}",) if i else ()
        )
        for i in range(n)
    ]


def registry() -> AgentRegistry:
    llm = FunctionLlm(lambda request: "ok")
    LlmFactory.register_provider("bench", lambda **_: llm, replace=True)
    agents = AgentRegistry()
    agents.register_agent("w", "bench")
    return agents


async def run_once(tasks: list[AgentTask], url: str | None, run_id: str | None = None) -> float:
    ledger = Ledger(url) if url is not None else None
    executor = TaskExecutor(
        registry(), max_concurrency=CAP, ledger=ledger, record=ledger is not None
    )
    started = time.perf_counter()
    result = await executor.run(tasks, run_id=run_id)
    elapsed = time.perf_counter() - started
    await executor.aclose()
    if ledger is not None:
        ledger.close()
    if not result.ok:
        raise RuntimeError(f"benchmark run failed: {result.status}")
    return elapsed


def writers(url: str, count: int) -> float:
    """Wall time of ``count`` writer processes started together on ``url``."""
    started = time.perf_counter()
    children = [
        subprocess.Popen([sys.executable, __file__, "--writer", url, f"writer-{n}"])  # noqa: S603
        for n in range(count)
    ]
    if any(child.wait() != 0 for child in children):
        raise RuntimeError("a writer failed")
    return time.perf_counter() - started


def main(repeat: int) -> None:
    configure_logging(verbose=False)
    server = PostgresServer(durable=True)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            fresh = iter(range(1_000_000))

            def url(backend: str) -> str | None:
                if backend == "none":
                    return None
                if backend == "sqlite":
                    return f"sqlite:///{Path(tmp) / f'{next(fresh)}.db'}"
                return server.database()

            backends = ["none", "sqlite", "postgres"]
            print(f"one process, cap {CAP}, median of {repeat}: us/task (ledger's share)")
            print(f"{'dag':<6} {'tasks':>6} " + " ".join(f"{b:>20}" for b in backends))
            for name, dag in (("wide", wide), ("chain", chain)):
                tasks = dag()
                samples: dict[str, list[float]] = {b: [] for b in backends}
                for _ in range(repeat):
                    for backend in backends:
                        samples[backend].append(anyio.run(run_once, tasks, url(backend)))
                base = statistics.median(samples["none"]) * 1e6 / len(tasks)
                cells = []
                for backend in backends:
                    per_task = statistics.median(samples[backend]) * 1e6 / len(tasks)
                    cells.append(f"{per_task:.0f} ({per_task - base:+.0f})")
                print(f"{name:<6} {len(tasks):>6} " + " ".join(f"{c:>20}" for c in cells))

            print(f"\nwriter processes of 1000 tasks each, median of {repeat}: wall s")
            print(f"{'backend':<9} {'1 writer':>9} {'4 writers':>10} {'ratio':>6} {'tasks/s':>8}")
            for backend in ("sqlite", "postgres"):
                alone = [writers(str(url(backend)), 1) for _ in range(repeat)]
                four = [writers(str(url(backend)), 4) for _ in range(repeat)]
                one, many = statistics.median(alone), statistics.median(four)
                print(
                    f"{backend:<9} {one:>9.2f} {many:>10.2f} {many / one:>6.2f} {4000 / many:>8.0f}"
                )
    finally:
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--writer", nargs=2, metavar=("URL", "RUN_ID"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.writer:
        configure_logging(verbose=False)
        target, run_id = args.writer
        anyio.run(run_once, layers(run_id), target, run_id)
    else:
        main(args.repeat)
