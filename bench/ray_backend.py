"""The Ray backend against the local one: CPU-bound scripts, and the overhead of a call.

CPU-bound: script agents whose script burns ``--cpu`` seconds of CPU (a Python loop on
``time.process_time``), ``--scripts`` tasks, no dependencies. Local backend: at most as many
at once as this machine has cores. Ray: one node with every core, and two nodes sharing
them (``ray.cluster_utils.Cluster``, one Ray cluster per shape, started before timing). The
floor is the CPU work divided by the cores. Reported: makespan, its ratio to the local
backend's, and to the floor.

I/O-bound: provider calls that wait 20 ms (``FunctionLlm(latency=0.02)``, an async sleep, as
an HTTP call waits), 500 independent tasks at 64 at once, and a chain of 50 (one call at a
time: each pays the whole round trip to the provider host and back). Reported: makespan,
the ratio to the local backend's, and Ray's added time per task.

Each shape is measured in turn, ``--repeat`` times, medians (the local backend in the same
rounds as Ray's, so noise falls on both). Each executor first runs one task alone, untimed:
on Ray it starts the provider hosts (a Ray worker process per node, printed once as the
cold start), which the timed run then uses as a long-lived executor would.

Run: ``.venv/bin/python bench/ray_backend.py [--repeat 3] [--scripts 200] [--cpu 0.5]``
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
from collections.abc import Callable

import anyio

from llm_abstractions import LlmFactory
from llm_abstractions.testing import FunctionLlm
from orchestration import AgentRegistry, AgentTask, TaskExecutor
from orchestration.logs import configure_logging

CORES = os.cpu_count() or 1
COLD: dict[str, float] = {}  # the first run of a task, per backend
BURN = (
    "import json, sys, time\n"
    "json.load(sys.stdin)\n"
    "end = time.process_time() + float(sys.argv[1])\n"
    "while time.process_time() < end:\n"
    "    pass\n"
    "print(json.dumps({'output': 'done'}))\n"
)


def scripts(count: int, cpu: float) -> tuple[AgentRegistry, list[AgentTask]]:
    registry = AgentRegistry()
    command = [sys.executable, "-c", BURN, str(cpu)]
    registry.register_agent("burn", "local", interface="script", script={"command": command})
    tasks = [AgentTask(task_id=f"s{i}", description="burn", agent="burn") for i in range(count)]
    return registry, tasks


def calls(count: int, chained: bool) -> tuple[AgentRegistry, list[AgentTask]]:
    LlmFactory.register_provider(
        "wait", lambda **_: FunctionLlm(lambda request: "ok", latency=0.02), replace=True
    )
    registry = AgentRegistry()
    registry.register_agent("io", "wait")
    tasks = [
        AgentTask(
            task_id=f"c{i}",
            description="wait",
            agent="io",
            depends_on=(f"c{i - 1}",) if chained and i else (),
        )
        for i in range(count)
    ]
    return registry, tasks


async def timed(
    work: tuple[AgentRegistry, list[AgentTask]], backend: str, concurrency: int
) -> float:
    """The makespan of the work, once a first task has started what it needs.

    (The first task of an executor on Ray starts its provider hosts, or its workers; the
    first such run per backend is printed as the cold start.)
    """
    registry, tasks = work
    async with TaskExecutor(
        registry, backend=backend, record=False, max_concurrency=concurrency
    ) as run:
        first = tasks[0].model_copy(update={"depends_on": ()})
        started = time.perf_counter()
        await run.run([first])
        COLD.setdefault(backend, time.perf_counter() - started)
        started = time.perf_counter()
        result = await run.run(tasks)
        elapsed = time.perf_counter() - started
    if not result.ok:
        failed = next(r for r in result.results.values() if not r.succeeded)
        raise RuntimeError(f"benchmark run failed: {failed.error}")
    return elapsed


class Shapes:
    """The Ray clusters compared, started once; ``use`` connects this driver to one."""

    def __init__(self) -> None:
        from ray.cluster_utils import Cluster

        self.clusters = {
            "ray, 1 node": Cluster(initialize_head=True, head_node_args={"num_cpus": CORES}),
            "ray, 2 nodes": Cluster(
                initialize_head=True, head_node_args={"num_cpus": max(1, CORES // 2)}
            ),
        }
        self.clusters["ray, 2 nodes"].add_node(num_cpus=max(1, CORES - CORES // 2))

    def use(self, shape: str) -> None:
        """Connect to the cluster of ``shape`` (to none for "local")."""
        import ray

        if ray.is_initialized():
            ray.shutdown()
        if shape != "local":
            ray.init(address=self.clusters[shape].address, log_to_driver=False)

    def close(self) -> None:
        """Disconnect and stop every cluster."""
        import ray

        ray.shutdown()
        for cluster in self.clusters.values():
            cluster.shutdown()  # type: ignore[no-untyped-call]


def measure(
    shapes: Shapes,
    repeat: int,
    work: Callable[[], tuple[AgentRegistry, list[AgentTask]]],
    local_cap: int,
) -> dict[str, float]:
    """Median makespans per shape; Ray's runs are capped at 64 (Ray places the work)."""
    samples: dict[str, list[float]] = {}
    for _ in range(repeat):
        for shape in ["local", *shapes.clusters]:
            shapes.use(shape)
            backend, cap = ("local", local_cap) if shape == "local" else ("ray", 64)
            samples.setdefault(shape, []).append(anyio.run(timed, work(), backend, cap))
    return {shape: statistics.median(values) for shape, values in samples.items()}


def main(repeat: int, count: int, cpu: float, parts: list[str]) -> None:
    configure_logging(verbose=False)
    shapes = Shapes()
    try:
        if "calls" in parts:
            io_bound(shapes, repeat)
        if "scripts" in parts:
            cpu_bound(shapes, repeat, count, cpu)
    finally:
        shapes.close()


def cpu_bound(shapes: Shapes, repeat: int, count: int, cpu: float) -> None:
    """Scripts burning ``cpu`` seconds each."""
    floor = count * cpu / CORES
    got = measure(shapes, repeat, lambda: scripts(count, cpu), CORES)
    print(f"{count} scripts of {cpu} s CPU, {CORES} cores, median of {repeat}")
    print(f"(floor: {floor:.1f} s; local backend at {CORES} at once)")
    print(f"{'shape':<14} {'makespan s':>10} {'/ local':>8} {'/ floor':>8}")
    local = got["local"]
    for shape, value in got.items():
        print(f"{shape:<14} {value:>10.2f} {value / local:>8.2f} {value / floor:>8.2f}")


def io_bound(shapes: Shapes, repeat: int) -> None:
    """Provider calls that wait 20 ms, many at once and one after another."""
    for label, chained, n in (
        ("500 calls of 20 ms, 64 at once", False, 500),
        ("chain of 50 calls of 20 ms", True, 50),
    ):
        got = measure(shapes, repeat, functools.partial(calls, n, chained), 64)
        print(f"\n{label}, median of {repeat}")
        print(f"{'shape':<14} {'makespan s':>10} {'/ local':>8} {'+ms/task':>9}")
        local = got["local"]
        for shape, value in got.items():
            added = (value - local) / n * 1000
            print(f"{shape:<14} {value:>10.3f} {value / local:>8.2f} {added:>9.2f}")
    print(f"\ncold start (an executor's first task, once): {COLD}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scripts", type=int, default=200)
    parser.add_argument("--cpu", type=float, default=0.5)
    parser.add_argument("--parts", default="calls,scripts")
    args = parser.parse_args()
    main(args.repeat, args.scripts, args.cpu, args.parts.split(","))
