"""Scheduling overhead of TaskExecutor against a minimal anyio ready-queue scheduler.

DAGs: layered (20 layers x 50 tasks, each depending on 3 seeded-random tasks of the layer
before), wide (2000 independent tasks), chain (500). Every task calls the same scripted
model (``FunctionLlm``) with 0 or 20 ms latency; concurrency is capped at 64 everywhere.
TaskExecutor runs with the ledger on (a SQLite file) and off. The baseline is the smallest
correct scheduler: a task group, a capacity limiter and dependency counters, calling the
same model with a prebuilt request; it is measured in the same run.

A second baseline runs CAP long-lived workers fed by a ready queue (a memory object stream),
the shape TaskExecutor itself has had since spawning an anyio task per task (about 50 us
here) showed up as most of its overhead.

Reported: at latency 0, wall time per task (the overhead of scheduling, prompt building,
result objects and, with the ledger, recording); at 20 ms, makespan divided by the
critical-path bound (depth x latency, or the rounds the cap forces, whichever is larger).

Run: ``.venv/bin/python bench/executor.py [--repeat 3] [--dags layered,wide,chain]
[--latencies 0,20]``
"""

from __future__ import annotations

import argparse
import gc
import math
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import anyio

from llm_abstractions import LlmFactory, LlmRequest
from llm_abstractions.testing import FunctionLlm
from orchestration import AgentRegistry, AgentTask, TaskExecutor
from orchestration.ledger import Ledger
from orchestration.logs import configure_logging

CAP = 64


def layered(layers: int = 20, width: int = 50, fan_in: int = 3) -> list[AgentTask]:
    rng = random.Random(42)  # noqa: S311 - a fixed shape, not security
    tasks: list[AgentTask] = []
    previous: list[str] = []
    for layer in range(layers):
        current = [f"L{layer}-{i}" for i in range(width)]
        for tid in current:
            deps = tuple(rng.sample(previous, fan_in)) if previous else ()
            tasks.append(AgentTask(task_id=tid, description=tid, agent="w", depends_on=deps))
        previous = current
    return tasks


def wide(n: int = 2000) -> list[AgentTask]:
    return [AgentTask(task_id=f"W{i}", description="w", agent="w") for i in range(n)]


def chain(n: int = 500) -> list[AgentTask]:
    return [
        AgentTask(
            task_id=f"C{i}", description="c", agent="w", depends_on=(f"C{i - 1}",) if i else ()
        )
        for i in range(n)
    ]


DAGS: dict[str, Callable[[], list[AgentTask]]] = {
    "layered": layered,
    "wide": wide,
    "chain": chain,
}


def depth(tasks: list[AgentTask]) -> int:
    level: dict[str, int] = {}
    for task in tasks:  # the generators emit tasks after their dependencies
        level[task.task_id] = 1 + max((level[d] for d in task.depends_on), default=0)
    return max(level.values())


def bound(tasks: list[AgentTask], latency: float) -> float:
    return max(depth(tasks), math.ceil(len(tasks) / CAP)) * latency


def dependency_counters(
    tasks: list[AgentTask],
) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Each task's dependents, and how many dependencies each task still waits for."""
    children: dict[str, list[str]] = {t.task_id: [] for t in tasks}
    waiting = {t.task_id: len(t.depends_on) for t in tasks}
    for task in tasks:
        for dep in task.depends_on:
            children[dep].append(task.task_id)
    return children, waiting


async def baseline(tasks: list[AgentTask], llm: FunctionLlm) -> None:
    """The smallest correct scheduler: dependency counters, a limiter, a task group."""
    children, waiting = dependency_counters(tasks)
    request = LlmRequest.build("x")
    limiter = anyio.CapacityLimiter(CAP)

    async with anyio.create_task_group() as tg:

        async def run(tid: str) -> None:
            async with limiter:
                await llm.generate(request)
            for child in children[tid]:
                waiting[child] -= 1
                if waiting[child] == 0:
                    tg.start_soon(run, child)

        for tid, count in waiting.items():
            if count == 0:
                tg.start_soon(run, tid)


async def worker_pool(tasks: list[AgentTask], llm: FunctionLlm) -> None:
    """The same, with CAP long-lived workers taking tasks from a ready queue."""
    children, waiting = dependency_counters(tasks)
    request = LlmRequest.build("x")
    send, receive = anyio.create_memory_object_stream[str | None](len(tasks) + CAP)
    remaining = len(tasks)
    for tid, count in waiting.items():
        if count == 0:
            send.send_nowait(tid)

    async def work() -> None:
        nonlocal remaining
        async for tid in receive:
            if tid is None:
                return
            await llm.generate(request)
            remaining -= 1
            for child in children[tid]:
                waiting[child] -= 1
                if waiting[child] == 0:
                    send.send_nowait(child)
            if remaining == 0:
                for _ in range(CAP):
                    send.send_nowait(None)

    async with anyio.create_task_group() as tg:
        for _ in range(CAP):
            tg.start_soon(work)


BASELINES = {"baseline": baseline, "worker pool": worker_pool}


async def measure(dag: str, latency: float, mode: str, workdir: Path) -> float:
    tasks = DAGS[dag]()
    llm = FunctionLlm(lambda request: "ok", latency=latency)
    LlmFactory.register_provider("bench", lambda **_: llm, replace=True)
    registry = AgentRegistry()
    registry.register_agent("w", "bench")
    gc.collect()  # every mode starts from a collected heap: no collection owed by another
    if mode in BASELINES:
        started = time.perf_counter()
        await BASELINES[mode](tasks, llm)
        return time.perf_counter() - started
    ledger = (
        Ledger(f"sqlite:///{workdir / f'{dag}-{latency}-{time.monotonic_ns()}.db'}")
        if mode == "ledger on"
        else None
    )
    executor = TaskExecutor(
        registry=registry, max_concurrency=CAP, ledger=ledger, record=ledger is not None
    )
    gc.collect()
    started = time.perf_counter()
    run = await executor.run(tasks)
    elapsed = time.perf_counter() - started
    await executor.aclose()
    if ledger is not None:
        ledger.close()
    if not run.ok:
        raise RuntimeError(f"benchmark run failed: {run.status}")
    return elapsed


async def main(dags: list[str], repeat: int, latencies: list[float]) -> None:
    configure_logging(verbose=False)
    modes = ["baseline", "worker pool", "ledger off", "ledger on"]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for latency in latencies:
            unit = "us/task" if latency == 0 else "makespan/bound"
            print(f"\nlatency {latency * 1000:.0f} ms, cap {CAP}, median of {repeat}: {unit}")
            print("(in brackets: the ratio to the baseline, a task group with a limiter)")
            print(f"{'dag':<9} {'tasks':>6} " + " ".join(f"{m:>18}" for m in modes))
            for dag in dags:
                samples: dict[str, list[float]] = {m: [] for m in modes}
                for _ in range(repeat):
                    for mode in modes:  # interleaved, so noise hits every mode alike
                        samples[mode].append(await measure(dag, latency, mode, workdir))
                n = len(DAGS[dag]())
                scale = 1e6 / n if latency == 0 else 1 / bound(DAGS[dag](), latency)
                base = statistics.median(samples["baseline"])
                cells = []
                for mode in modes:
                    value = statistics.median(samples[mode])
                    shown = f"{value * scale:.0f}" if latency == 0 else f"{value * scale:.3f}"
                    cells.append(f"{shown + f' ({value / base:.2f})':>18}")
                print(f"{dag:<9} {n:>6} " + " ".join(cells))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dags", default="layered,wide,chain")
    parser.add_argument("--latencies", default="0,20", help="milliseconds, comma-separated")
    args = parser.parse_args()
    latencies = [float(ms) / 1000 for ms in args.latencies.split(",")]
    anyio.run(main, args.dags.split(","), args.repeat, latencies)
