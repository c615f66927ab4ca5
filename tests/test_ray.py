"""Attempts on a real Ray cluster: two nodes on this machine (``ray.cluster_utils.Cluster``).

The head node has one CPU and a custom resource ``llama``; the second node one CPU. The
driver is this process: its ledger records every attempt while provider calls run in a
provider host per node and scripts in Ray workers. Which node did the work is read from
the work itself: a provider answers with its node id and process id, a script with its
parent's (the Ray worker's) pid, whose ``RAY_RAYLET_PID`` names its node.
"""

from __future__ import annotations

import os
import pickle
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from llm_abstractions import LlmFactory, LlmRequest
from llm_abstractions.errors import (
    ConfigurationError,
    MissingCredentialsError,
    ProviderNotInstalledError,
    UnknownProviderError,
)
from llm_abstractions.testing import FunctionLlm
from llm_abstractions.types import LlmResponse, ToolCall
from orchestration import AgentRegistry, AgentTask, BreakerPolicy, RetryPolicy, TaskExecutor
from orchestration.ledger import Ledger
from orchestration.runtime.ray_backend import RayBackend
from orchestration.runtime.subprocess_runner import ScriptError

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'orchestra[ray]')")

pytestmark = [pytest.mark.anyio, pytest.mark.ray]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    from ray.cluster_utils import Cluster

    made = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"llama": 1}})
    made.add_node(num_cpus=1)
    ray.init(
        address=made.address,
        namespace="orchestra-tests",
        log_to_driver=False,
        runtime_env={"env_vars": {"ORCHESTRA_LOCAL_THREADS": "1"}},
    )
    yield made
    ray.shutdown()
    made.shutdown()  # type: ignore[no-untyped-call]


@pytest.fixture
def nodes(cluster: Any) -> dict[str, str]:
    """Node id to "head" or "second"."""
    head = cluster.head_node.node_id
    return {node["NodeID"]: "head" if node["NodeID"] == head else "second" for node in ray.nodes()}


def raylets(cluster: Any) -> dict[int, str]:
    """Raylet pid to "head" or "second"."""
    found = {}
    for node in cluster.list_all_nodes():
        pid = node.all_processes["raylet"][0].process.pid
        found[pid] = "head" if node is cluster.head_node else "second"
    return found


def node_of_worker(pid: int, by_raylet: dict[int, str]) -> str:
    """The node of a Ray worker process, by the raylet that started it."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    found = dict(item.decode().partition("=")[::2] for item in environ if b"=" in item)
    return by_raylet[int(found["RAY_RAYLET_PID"])]


def located(request: LlmRequest) -> str:
    """Where the call was answered: node id and process id."""
    import ray as on_node

    return f"{on_node.get_runtime_context().get_node_id()} {os.getpid()}"


def attempts(ledger: Ledger) -> list[tuple[str, int, str, str]]:
    assert ledger.path is not None
    with sqlite3.connect(ledger.path) as connection:
        return connection.execute(
            "SELECT task_id, attempt, status, execution_method FROM attempts "
            "ORDER BY task_id, attempt"
        ).fetchall()


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    opened = Ledger(f"sqlite:///{tmp_path / 'runs.db'}")
    yield opened
    opened.close()


async def test_provider_calls_run_in_a_host_per_node_placed_by_resources(
    cluster: Any, nodes: dict[str, str], ledger: Ledger
) -> None:
    LlmFactory.register_provider("located", lambda **_: FunctionLlm(located, latency=0.3))
    registry = AgentRegistry()
    registry.register_agent("anywhere", "located")
    registry.register_agent("on_llama", "located", resources={"llama": 1})
    tasks = [AgentTask(task_id=f"a{i}", description="where?", agent="anywhere") for i in range(8)]
    tasks += [AgentTask(task_id=f"l{i}", description="where?", agent="on_llama") for i in range(4)]
    async with TaskExecutor(registry, ledger=ledger, backend="ray", max_concurrency=12) as run:
        result = await run.run(tasks)
        hosts = await run.backend.hosts()  # type: ignore[attr-defined]
    assert result.ok
    answered = {tid: r.output.split() for tid, r in result.results.items() if r.output}
    assert all(int(pid) != os.getpid() for _, pid in answered.values())  # not in the driver
    spread = {nodes[node] for tid, (node, _) in answered.items() if tid.startswith("a")}
    assert spread == {"head", "second"}  # the calls went to both nodes' hosts
    assert {nodes[node] for tid, (node, _) in answered.items() if tid.startswith("l")} == {"head"}
    # One process per node answered an agent's calls, whatever their number.
    assert len({pid for tid, (_, pid) in answered.items() if tid.startswith("a")}) == 2
    assert sorted(nodes[node] for node, _, _ in hosts) == ["head", "head", "second"]
    assert {status for _, _, status, _ in attempts(ledger)} == {"succeeded"}
    assert len(attempts(ledger)) == 12  # recorded by the driver, one row per attempt


SCRIPT = """
import json, os, sys, time
request = json.load(sys.stdin)
time.sleep(0.5)
print(json.dumps({"output": str(os.getppid())}))
"""


async def test_scripts_run_on_workers_placed_by_their_resources(
    cluster: Any, ledger: Ledger, tmp_path: Path
) -> None:
    script = tmp_path / "where.py"
    script.write_text(SCRIPT)
    command = {"command": [sys.executable, str(script)]}
    registry = AgentRegistry()
    registry.register_agent("anywhere", "local", interface="script", script=command)
    registry.register_agent(
        "on_llama", "local", interface="script", script=command, resources={"llama": 1}
    )
    tasks = [AgentTask(task_id=f"a{i}", description="go", agent="anywhere") for i in range(4)]
    tasks += [AgentTask(task_id=f"l{i}", description="go", agent="on_llama") for i in range(2)]
    async with TaskExecutor(registry, ledger=ledger, backend="ray", max_concurrency=6) as run:
        result = await run.run(tasks)
    assert result.ok, {t: r.error for t, r in result.results.items()}
    by_raylet = raylets(cluster)
    where = {t: node_of_worker(int(r.output or 0), by_raylet) for t, r in result.results.items()}
    assert {where[f"a{i}"] for i in range(4)} == {"head", "second"}  # one CPU a node: both
    assert {where["l0"], where["l1"]} == {"head"}
    assert {method for *_, method in attempts(ledger)} == {"script"}


DYING_SCRIPT = """
import json, os, sys, time
json.load(sys.stdin)
marker = sys.argv[1]
if not os.path.exists(marker):
    worker = os.getppid()
    with open(marker + ".tmp", "w") as f:
        f.write(str(worker))
    os.rename(marker + ".tmp", marker)
    while os.getppid() == worker:  # until the test kills the worker; then leave too
        time.sleep(0.05)
    sys.exit(3)
print(json.dumps({"output": "second time"}))
"""


async def kill_when_written(marker: Path) -> int:
    """Kill -9 the process whose pid ``marker`` will hold; its pid."""
    written = anyio.Path(marker)
    with anyio.fail_after(120):
        while not await written.exists():  # noqa: ASYNC110 - another process writes it
            await anyio.sleep(0.05)
    pid = int(await written.read_text())
    os.kill(pid, signal.SIGKILL)
    return pid


async def test_a_worker_killed_mid_script_is_a_crashed_attempt_then_a_retry(
    cluster: Any, ledger: Ledger, tmp_path: Path
) -> None:
    script, marker = tmp_path / "dying.py", tmp_path / "worker.pid"
    script.write_text(DYING_SCRIPT)
    registry = AgentRegistry()
    registry.register_agent(
        "s",
        "local",
        interface="script",
        script={"command": [sys.executable, str(script), str(marker)]},
    )
    retry = RetryPolicy(max_attempts=3, base_delay_s=0.1, jitter=0)
    async with TaskExecutor(registry, ledger=ledger, backend="ray", retry=retry) as run:
        async with anyio.create_task_group() as group:
            group.start_soon(kill_when_written, marker)
            result = await run.run([AgentTask(task_id="t", description="go", agent="s")])
    assert result.ok and result.results["t"].output == "second time"
    assert attempts(ledger) == [("t", 1, "crashed", "script"), ("t", 2, "succeeded", "script")]
    with sqlite3.connect(ledger.path or "") as connection:
        kind, error = connection.execute(
            "SELECT error_type, error_message FROM attempts WHERE attempt = 1"
        ).fetchone()
    assert kind == "WorkerLostError" and "the Ray worker making the attempt died" in error


def dying_provider(marker: str) -> Any:
    def answer(request: LlmRequest) -> str:
        if not os.path.exists(marker):
            with open(marker + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.rename(marker + ".tmp", marker)
            import time

            time.sleep(60)  # the test kills this host's process meanwhile
        return f"answered by {os.getpid()}"

    return answer


async def test_a_provider_host_killed_mid_call_is_a_crashed_attempt_then_a_retry(
    cluster: Any, ledger: Ledger, tmp_path: Path
) -> None:
    marker = tmp_path / "host.pid"
    handler = dying_provider(str(marker))
    LlmFactory.register_provider("dying", lambda **_: FunctionLlm(handler))
    registry = AgentRegistry()
    registry.register_agent("p", "dying", resources={"llama": 1})  # the head's host only
    retry = RetryPolicy(max_attempts=3, base_delay_s=0.1, jitter=0)
    # One failure would open the circuit (for ten minutes): a crash must not count as one.
    breaker = BreakerPolicy(consecutive_failures=1, cooldown_s=600)
    async with TaskExecutor(
        registry, ledger=ledger, backend="ray", retry=retry, breaker=breaker
    ) as run:
        async with anyio.create_task_group() as group:
            group.start_soon(kill_when_written, marker)
            result = await run.run([AgentTask(task_id="t", description="go", agent="p")])
        state = run.runner.breakers["dying"].state.value
    assert result.ok, result.results["t"].error
    assert attempts(ledger) == [
        ("t", 1, "crashed", "llm_factory"),
        ("t", 2, "succeeded", "llm_factory"),
    ]
    assert state == "closed"  # our worker's death says nothing of the provider


SUICIDAL_SCRIPT = """
import json, os, signal, sys
json.load(sys.stdin)
os.kill(os.getppid(), signal.SIGKILL)  # the Ray worker running it
"""


async def test_a_script_whose_worker_always_dies_ends_crashed_after_its_attempts(
    cluster: Any, ledger: Ledger, tmp_path: Path
) -> None:
    script = tmp_path / "suicidal.py"
    script.write_text(SUICIDAL_SCRIPT)
    registry = AgentRegistry()
    command = {"command": [sys.executable, str(script)]}
    registry.register_agent("s", "local", interface="script", script=command)
    retry = RetryPolicy(max_attempts=2, base_delay_s=0.1, jitter=0)
    async with TaskExecutor(registry, ledger=ledger, backend="ray", retry=retry) as run:
        result = await run.run([AgentTask(task_id="t", description="go", agent="s")])
    assert result.results["t"].status.value == "crashed" and not result.ok
    assert attempts(ledger) == [("t", 1, "crashed", "script"), ("t", 2, "crashed", "script")]


async def test_resources_no_node_has_are_refused_before_the_run_is_recorded(
    cluster: Any, ledger: Ledger
) -> None:
    LlmFactory.register_provider("located", lambda **_: FunctionLlm(located), replace=True)
    registry = AgentRegistry()
    registry.register_agent("gpu", "located", resources={"num_gpus": 1})
    async with TaskExecutor(registry, ledger=ledger, backend="ray") as run:
        with pytest.raises(ConfigurationError, match=r"agent 'gpu' asks for resources .*num_gpus"):
            await run.run([AgentTask(task_id="t", description="go", agent="gpu")])
    with ledger.session() as session:
        from sqlalchemy import text

        assert session.execute(text("SELECT count(*) FROM runs")).scalar_one() == 0


@pytest.mark.model
async def test_the_embedded_model_loads_once_per_node(
    cluster: Any, nodes: dict[str, str], ledger: Ledger
) -> None:
    registry = AgentRegistry()
    registry.register_agent("llm", "local", max_tokens=8, temperature=0)
    tasks = [AgentTask(task_id=f"t{i}", description=f"Say {i}.", agent="llm") for i in range(6)]
    async with TaskExecutor(registry, ledger=ledger, backend="ray", max_concurrency=6) as run:
        result = await run.run(tasks)
        hosts = await run.backend.hosts()  # type: ignore[attr-defined]
    assert result.ok, {t: r.error for t, r in result.results.items()}
    assert sorted(nodes[node] for node, _, _ in hosts) == ["head", "second"]
    assert all(len(built) == 1 and built[0].startswith("local:") for _, _, built in hosts)
    assert len(attempts(ledger)) == 6


async def test_tools_run_in_the_driver_and_model_turns_on_the_cluster(
    cluster: Any, ledger: Ledger
) -> None:
    ran_in: list[int] = []

    def lookup(city: str) -> str:
        """Look a city up."""
        ran_in.append(os.getpid())
        return f"{city}: 522250"

    def answer(request: LlmRequest) -> LlmResponse | str:
        told = [m.content for m in request.messages if m.role == "tool"]
        if not told:
            call = ToolCall(id="c1", name="lookup", arguments='{"city": "Lyon"}')
            return LlmResponse(text="", provider="turns", model="m", tool_calls=(call,))
        return f"{told[0]} (answered in {os.getpid()})"

    LlmFactory.register_provider("turns", lambda **_: FunctionLlm(answer))
    registry = AgentRegistry()
    registry.register_agent("w", "turns", tools=[lookup])
    async with TaskExecutor(registry, ledger=ledger, backend="ray") as run:
        result = await run.run([AgentTask(task_id="t", description="Lyon?", agent="w")])
    assert result.ok, result.results["t"].error
    output = result.results["t"].output or ""
    assert output.startswith("Lyon: 522250 (answered in ")
    assert ran_in == [os.getpid()]  # the tool ran here, in the driver
    assert f"answered in {os.getpid()})" not in output  # the model's turns did not


FAILS_ONCE = """
import json, os, sys
json.load(sys.stdin)
marker = sys.argv[1]
if not os.path.exists(marker):
    open(marker, "w").close()
    sys.exit("the first try fails")
with open(f"/proc/{os.getppid()}/environ", "rb") as f:  # the Ray worker's: its raylet's pid
    worker = dict(v.decode().partition("=")[::2] for v in f.read().split(b"\\0") if b"=" in v)
print(json.dumps({"output": worker.get("RAY_RAYLET_PID", "not a Ray worker")}))
"""


def test_orchestra_resume_finishes_a_run_on_the_cluster_from_another_process(
    cluster: Any, tmp_path: Path
) -> None:
    script, marker = tmp_path / "once.py", tmp_path / "tried"
    script.write_text(FAILS_ONCE)
    registry = AgentRegistry()
    command = [sys.executable, str(script), str(marker)]
    registry.register_agent("s", "local", interface="script", script={"command": command})
    url = f"sqlite:///{tmp_path / 'runs.db'}"

    async def first() -> str:
        ledger = Ledger(url)
        try:
            async with TaskExecutor(registry, ledger=ledger, backend="ray") as run:
                failed = await run.run([AgentTask(task_id="t", description="go", agent="s")])
        finally:
            ledger.close()
        assert failed.results["t"].status.value == "failed"
        return failed.run_id

    run_id = anyio.run(first)
    env = {**os.environ, "ORCHESTRA_DB_URL": url, "ORCHESTRA_BACKEND": "ray"}
    env["RAY_ADDRESS"] = cluster.address
    resumed = subprocess.run(  # noqa: S603 - the installed CLI, as another driver
        [Path(sys.executable).with_name("orchestra"), "resume", run_id, "--retry-failed"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    with sqlite3.connect(tmp_path / "runs.db") as connection:
        (output,) = connection.execute("SELECT output FROM task_runs").fetchone()
    assert int(output) in raylets(cluster)  # run by a Ray worker of the cluster


def test_the_backend_comes_from_orchestra_backend_when_none_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ORCHESTRA_BACKEND", "ray")
    assert isinstance(TaskExecutor(AgentRegistry()).backend, RayBackend)
    monkeypatch.setenv("ORCHESTRA_BACKEND", "dask")
    with pytest.raises(ConfigurationError, match="ORCHESTRA_BACKEND 'dask' is not one"):
        TaskExecutor(AgentRegistry())


@pytest.mark.parametrize(
    ("resources", "said"),
    [({"CPU": 1}, "write num_cpus, not 'CPU'"), ({"llama": float("nan")}, "amounts of 0 or more")],
)
def test_resources_in_ray_s_own_names_or_not_amounts_are_refused(
    resources: dict[str, float], said: str
) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(said)):
        AgentRegistry().register_agent("a", "local", resources=resources)


def test_provider_errors_raised_on_a_node_come_back_whole() -> None:
    for error in (
        MissingCredentialsError("openai-gpt", ("OPENAI_API_KEY",)),
        ProviderNotInstalledError("google-gemini", "google.genai", "gemini"),
        UnknownProviderError("nope", ["local"], []),
        ScriptError("exit", "exited with 3", "boom"),
    ):
        again = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes
        assert type(again) is type(error) and str(again) == str(error)


def test_an_unknown_backend_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigurationError, match="backend 'dask' is not one orchestra knows"):
        TaskExecutor(AgentRegistry(), backend="dask")


def test_a_backend_object_is_taken_as_it_is() -> None:
    backend = RayBackend(address="ray://nowhere:10001")
    assert TaskExecutor(AgentRegistry(), backend=backend).backend is backend
