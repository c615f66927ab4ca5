"""The Todo-app build: five specialists and a test run, as one DAG.

    architect -> backend, frontend (in parallel)
    backend -> qa-tests -> qa-run
    backend, frontend -> devops

``TodoBuild`` registers the roles (on the models ``agents.routing`` picks), builds the
tasks, and, as each specialist finishes, writes its files under the output directory
before any dependent starts, so ``qa-run`` finds the generated tests on disk. ``qa-run``
is a script agent (``scripts/run_tests.py``) that runs them in a subprocess with a timeout:
its verdict is the honest measure of the generated app, whatever the model. An answer that
breaks the file contract is reported for its task and writes nothing.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.contract import ContractError, ParsedOutput, write_files
from agents.routing import ModelChoice, route_team
from agents.specialists import ARCHITECT, BACKEND, DEVOPS, FRONTEND, QA, SPECIALISTS
from orchestration import AgentRegistry, AgentTask, OutputRejected, TaskResult

__all__ = ["DEFAULT_REQUEST", "RUN_TESTS_SCRIPT", "FileReport", "TodoBuild", "qa_verdict"]

DEFAULT_REQUEST = "a Todo app: add, list, complete and delete todos, kept across restarts"
RUN_TESTS_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "run_tests.py"
QA_RUNNER = "qa-runner"


@dataclass
class FileReport:
    """What one specialist's answer put on disk, or why it put nothing."""

    written: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass
class TodoBuild:
    """One build of the Todo app into ``output_dir``.

    Attributes:
        output_dir: Where the generated files go.
        request: What to build, as the architect receives it.
        max_tokens: Answer budget of each specialist.
        test_timeout_s: How long the generated tests may run.
        choices: Provider and model per role (``route_team`` when not given).
    """

    output_dir: Path
    request: str = DEFAULT_REQUEST
    max_tokens: int = 1024
    test_timeout_s: float = 60.0
    choices: dict[str, ModelChoice] = field(default_factory=dict)
    files: dict[str, FileReport] = field(default_factory=dict)

    def registry(self) -> AgentRegistry:
        """The five specialists on their models, and the test runner (creates the output dir).

        Raises:
            ConfigurationError: A chosen provider is unknown.
        """
        self.choices = self.choices or route_team(SPECIALISTS)
        self.output_dir.mkdir(parents=True, exist_ok=True)  # the test runner's cwd
        registry = AgentRegistry()
        for role in SPECIALISTS:
            role.register(registry, self.choices[role.name], self.max_tokens)
        registry.register_agent(
            QA_RUNNER,
            "local",  # never called: a script agent runs its command instead
            interface="script",
            script={
                "command": [sys.executable, "-I", str(RUN_TESTS_SCRIPT)],
                "timeout_s": self.test_timeout_s,
                "cwd": str(self.output_dir),
            },
        )
        return registry

    def tasks(self) -> list[AgentTask]:
        """The DAG: architect, backend and frontend in parallel, tests, their run, devops."""
        return [
            ARCHITECT.task(f"Design {self.request}."),
            BACKEND.task("Implement the backend of this spec.", depends_on=("architect",)),
            FRONTEND.task("Implement the web page of this spec.", depends_on=("architect",)),
            QA.task(
                "Write unit tests for this backend.", task_id="qa-tests", depends_on=("backend",)
            ),
            AgentTask(
                task_id="qa-run",
                agent=QA_RUNNER,
                description="Run the generated tests.",
                depends_on=("qa-tests",),
                validators=(_is_verdict,),
            ),
            DEVOPS.task(
                "Write the run script, Dockerfile and README of this app.",
                depends_on=("backend", "frontend"),
            ),
        ]

    def on_task_done(self, result: TaskResult) -> None:
        """Write a finished specialist's files (called before its dependents start).

        A specialist that succeeded has had its answer checked (``SpecialistAgent.check``):
        its value is the parsed files. One that failed writes nothing; why is its error.
        """
        role = next((r for r in SPECIALISTS if r.name == _role_of(result.task_id)), None)
        if role is None or result.status.value == "skipped":
            return
        report = self.files.setdefault(result.task_id, FileReport())
        if not result.succeeded or not isinstance(result.value, ParsedOutput):
            report.problems.append(result.error or f"not run ({result.status.value})")
            return
        try:
            written = write_files(result.value.files, self.output_dir)
        except ContractError as exc:
            report.problems.append(str(exc))
            return
        report.written = [str(p.relative_to(self.output_dir.resolve())) for p in written]


def _role_of(task_id: str) -> str:
    return "qa" if task_id == "qa-tests" else task_id


def _is_verdict(output: str) -> dict[str, Any]:
    """The test runner's answer, refused unless it is a JSON object with a verdict."""
    try:
        answer = json.loads(output)
    except json.JSONDecodeError:
        raise OutputRejected("the test runner's answer is not JSON") from None
    if not isinstance(answer, dict) or "verdict" not in answer:
        raise OutputRejected("the test runner's answer has no verdict")
    return answer


def qa_verdict(result: TaskResult | None) -> dict[str, Any]:
    """The test run's counts and verdict, or why there is none."""
    if result is None or not result.succeeded or not result.output:
        reason = "not run" if result is None else (result.error or result.status.value)
        return {"verdict": "no verdict", "reason": reason}
    try:
        answer = json.loads(result.output)
    except json.JSONDecodeError:
        return {"verdict": "no verdict", "reason": "the test runner's answer is not JSON"}
    return answer if isinstance(answer, dict) else {"verdict": "no verdict"}
