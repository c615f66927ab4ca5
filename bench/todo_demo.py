"""The Todo-app demo on the embedded model: time per agent interaction, tokens, parallelism.

Runs the demo's DAG (``agents.todo.TodoBuild``) ``--repeat`` times into a temporary
directory with its own ledger, then reads every attempt back from the ledger. Reported:
seconds per agent interaction (the LLM tasks; ``qa-run`` is the test run), tokens per task,
wall time per build, the share of the wall time during which two or more tasks ran at once,
the cost and the share of attempts that succeeded, against the targets users were promised
(under 5 s an interaction, under $0.50 an app, 99% of calls succeeding).

Run: ``.venv/bin/python bench/todo_demo.py [--repeat 3] [--max-tokens 512]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

import anyio

from agents import SPECIALISTS, TodoBuild, route_team
from orchestration import TaskExecutor
from orchestration.ledger import Ledger
from orchestration.logs import configure_logging


async def build_once(workdir: Path, ledger: Ledger, max_tokens: int) -> tuple[str, float]:
    build = TodoBuild(output_dir=workdir / f"app-{time.monotonic_ns()}", max_tokens=max_tokens)
    build.choices = route_team(SPECIALISTS, env={})  # the embedded model for every role
    executor = TaskExecutor(registry=build.registry(), max_concurrency=4, ledger=ledger)
    started = time.perf_counter()
    try:
        run = await executor.run(build.tasks(), on_task_done=build.on_task_done)
    finally:
        await executor.aclose()
    return run.run_id, time.perf_counter() - started


def parallel_share(spans: list[tuple[datetime, datetime]]) -> float:
    """The share of the covered time during which two or more spans overlap."""
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running, last, busy, overlapped = 0, events[0][0], 0.0, 0.0
    for moment, change in events:
        width = (moment - last).total_seconds()
        busy += width if running else 0.0
        overlapped += width if running >= 2 else 0.0
        running, last = running + change, moment
    return overlapped / busy if busy else 0.0


async def main(repeat: int, max_tokens: int) -> None:
    configure_logging(verbose=False)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        ledger = Ledger(f"sqlite:///{workdir / 'runs.db'}")
        builds = [await build_once(workdir, ledger, max_tokens) for _ in range(repeat)]
        from sqlalchemy import text

        with ledger.session() as session:
            rows = session.execute(
                text(
                    "SELECT run_id, task_id, status, execution_method, input_tokens, "
                    "output_tokens, cost_usd, latency_s, started_at, finished_at FROM attempts"
                )
            ).all()
        ledger.close()
    llm = [r for r in rows if r.execution_method == "llm_factory"]
    parse = datetime.fromisoformat
    shares = [
        parallel_share(
            [(parse(r.started_at), parse(r.finished_at)) for r in rows if r.run_id == rid]
        )
        for rid, _ in builds
    ]
    per_app = [sum(r.cost_usd or 0.0 for r in rows if r.run_id == rid) for rid, _ in builds]
    print(f"Todo-app demo on the embedded model, {repeat} builds, max_tokens {max_tokens}")
    print(
        f"agent interactions: {len(llm)}; seconds each: median "
        f"{statistics.median(r.latency_s for r in llm):.2f}, "
        f"max {max(r.latency_s for r in llm):.2f} (target < 5)"
    )
    print(
        f"tokens per task: input median {statistics.median(r.input_tokens for r in llm):.0f}, "
        f"output median {statistics.median(r.output_tokens for r in llm):.0f}"
    )
    print(f"wall time per build: median {statistics.median(w for _, w in builds):.1f} s")
    print(f"time with 2+ tasks running: median {statistics.median(shares):.0%}")
    print(f"cost per app: max ${max(per_app):.4f} (target < $0.50)")
    succeeded = sum(r.status == "succeeded" for r in rows)
    print(f"attempts succeeded: {succeeded}/{len(rows)} (target 99%)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=512)
    args = parser.parse_args()
    anyio.run(main, args.repeat, args.max_tokens)
