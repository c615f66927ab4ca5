"""The Todo-app build: five specialists and a test run, as one DAG, then repair rounds.

    architect -> backend, frontend (in parallel)
    backend -> qa-tests -> qa-run
    backend, frontend -> devops

When the tests fail, a repair round adds two tasks to the same run
(``TaskExecutor.extend``): ``repair-N`` gets the spec, the code, the tests and the failing
test log, and gives both files back fixed (a wrong test is as likely as wrong code); then
``qa-run-N+1`` runs the tests again. ``max_repairs`` rounds at most.

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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.contract import ContractError, ParsedOutput, write_files
from agents.examples import EXAMPLE_REQUEST
from agents.pycheck import module_names, unknown_uses
from agents.routing import ModelChoice, route_team
from agents.specialists import (
    ARCHITECT,
    BACKEND,
    DEVOPS,
    FRONTEND,
    QA,
    REPAIR,
    SPECIALISTS,
    SpecialistAgent,
)
from agents.workspace import workspace_tools
from orchestration import AgentRegistry, AgentTask, OutputRejected, RunResult, TaskResult
from orchestration.model.tools import Tool
from orchestration.runtime.coding.clis import CLIS

__all__ = ["DEFAULT_REQUEST", "RUN_TESTS_SCRIPT", "FileReport", "TodoBuild", "qa_verdict"]

DEFAULT_REQUEST = "a Todo app: add, list, complete and delete todos, kept across restarts"
RUN_TESTS_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "run_tests.py"
QA_RUNNER = "qa-runner"
SERVER, TESTS = "backend/server.py", "tests/test_backend.py"


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
        max_tokens: Answer budget of every specialist (None: each role's own).
        test_timeout_s: How long the generated tests may run.
        choices: Provider and model per role (``route_team`` when not given).
        local_model: The model of roles on the embedded provider that name none: a path or
            a catalogue name (``llm_abstractions.local_models``); None for the default.
        seed: Sampling seed of every specialist.
        temperature: Sampling temperature of every specialist.
        max_repairs: Repair rounds at most, when the tests fail.
        tools: Give the specialists the workspace tools (``agents.workspace``): read the
            app's files, draft their own, run its tests. Not on the embedded model, whose
            specialists answer under the file-contract grammar (tools cannot go with one).
    """

    output_dir: Path
    request: str = DEFAULT_REQUEST
    max_tokens: int | None = None
    test_timeout_s: float = 60.0
    choices: dict[str, ModelChoice] = field(default_factory=dict)
    local_model: str | None = None
    seed: int = 7
    temperature: float = 0.2
    max_repairs: int = 2
    tools: bool = False
    files: dict[str, FileReport] = field(default_factory=dict)
    test_runs: list[str] = field(default_factory=lambda: ["qa-run"])
    repairs: list[AgentTask] = field(default_factory=list)

    def registry(self) -> AgentRegistry:
        """The five specialists on their models, and the test runner (creates the output dir).

        Raises:
            ConfigurationError: A chosen provider is unknown.
        """
        self.choices = self.choices or route_team((*SPECIALISTS, REPAIR))
        if REPAIR.name not in self.choices:  # routed as the other strong roles are
            self.choices[REPAIR.name] = self.choices[BACKEND.name]
        self.output_dir.mkdir(parents=True, exist_ok=True)  # the test runner's cwd
        registry = AgentRegistry()
        for role in (*SPECIALISTS, REPAIR):
            choice = self.choices[role.name]
            if choice.provider == "local" and choice.model is None and self.local_model:
                choice = ModelChoice("local", self.local_model, choice.reason)
            repo = self._workdir(role)
            role.register(
                registry,
                choice,
                self.max_tokens,
                seed=self.seed,
                temperature=self.temperature,
                tools=self._tools(role.writes) if repo is None else [],
                repo=repo,
            )
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

    def _workdir(self, role: SpecialistAgent) -> Path | None:
        """The output directory, for a role on a coding CLI (which works on a copy of it)."""
        choice = self.choices.get(role.name)
        return self.output_dir if choice is not None and choice.provider in CLIS else None

    def _tools(self, writes: Sequence[str]) -> list[Tool]:
        """A role's workspace tools (writing where it writes), when the build gives them."""
        if not self.tools:
            return []
        return workspace_tools(self.output_dir, test_timeout_s=self.test_timeout_s, allowed=writes)

    def tasks(self) -> list[AgentTask]:
        """The DAG: architect, backend and frontend in parallel, tests, their run, devops."""
        return [
            ARCHITECT.task(
                f"Design {self.request}.",
                example_request=f"Design {EXAMPLE_REQUEST}.",
                workdir=self._workdir(ARCHITECT),
            ),
            BACKEND.task(
                "Implement the backend of this spec.",
                depends_on=("architect",),
                workdir=self._workdir(BACKEND),
            ),
            FRONTEND.task(
                "Implement the web page of this spec.",
                depends_on=("architect",),
                workdir=self._workdir(FRONTEND),
            ),
            _also(
                QA.task(
                    "Write unit tests for this backend.",
                    task_id="qa-tests",
                    depends_on=("backend",),
                    workdir=self._workdir(QA),
                ),
                self._tests_fit_the_written_backend,
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
                workdir=self._workdir(DEVOPS),
            ),
        ]

    def verdict(self, run: RunResult) -> dict[str, Any]:
        """The verdict of the last test run (``qa_verdict``)."""
        return qa_verdict(run.results.get(self.test_runs[-1]))

    def needs_repair(self, run: RunResult) -> bool:
        """Whether the last test run failed, and a repair round is left to try."""
        rounds = len(self.test_runs) - 1
        last = run.results.get(self.test_runs[-1])
        if rounds >= self.max_repairs or last is None or not last.succeeded:
            return False
        return self.verdict(run)["verdict"] in ("failed", "no tests")

    def repair_tasks(self) -> list[AgentTask]:
        """The next repair round: fix the code or the tests, then run the tests again.

        The repair sees the spec, the latest code and tests (from the backend and QA, or
        from the last repair) and the last test run's log, through its dependencies.
        """
        round_ = len(self.test_runs)
        sources = ("backend", "qa-tests") if round_ == 1 else (f"repair-{round_ - 1}",)
        repair_id, test_id = f"repair-{round_}", f"qa-run-{round_ + 1}"
        self.test_runs.append(test_id)
        self.repairs += [
            _also(
                REPAIR.task(
                    "The unit tests of this app fail; the last test run's log says why. Fix "
                    "the backend or the tests, whichever is wrong.",
                    task_id=repair_id,
                    depends_on=("architect", *sources, self.test_runs[-2]),
                    workdir=self._workdir(REPAIR),
                ),
                _tests_fit_their_backend,
            ),
            AgentTask(
                task_id=test_id,
                agent=QA_RUNNER,
                description="Run the repaired tests.",
                depends_on=(repair_id,),
                validators=(_is_verdict,),
            ),
        ]
        return self.repairs[-2:]

    def _tests_fit_the_written_backend(self, parsed: ParsedOutput) -> None:
        """QA's tests use only names of the backend the backend task wrote (on disk by now)."""
        backend = self.output_dir / SERVER
        if TESTS in parsed.files and backend.is_file():
            check_tests_fit(parsed.files[TESTS], backend.read_text(encoding="utf-8"))

    def all_tasks(self) -> list[AgentTask]:
        """The build's tasks, and those of the repair rounds so far."""
        return [*self.tasks(), *self.repairs]

    def on_task_done(self, result: TaskResult) -> None:
        """Write a finished specialist's files (called before its dependents start).

        A specialist that succeeded has had its answer checked (``SpecialistAgent.check``):
        its value is the parsed files. One that failed writes nothing; why is its error.
        """
        role = next((r for r in (*SPECIALISTS, REPAIR) if r.name == _role_of(result.task_id)), None)
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


def check_tests_fit(tests: str, backend: str) -> None:
    """Refuse tests that use names of the backend module it does not define.

    Raises:
        OutputRejected: Names each unknown use and what the backend defines.
    """
    unknown = unknown_uses(tests, "server", backend)
    if unknown:
        defined = sorted(n for n in module_names(backend) or () if not n.startswith("_"))
        raise OutputRejected(
            f"{TESTS} uses names that {SERVER} does not define: {'; '.join(unknown)}. It "
            f"defines: {', '.join(defined)}. Use only those (set the data file through the "
            "name the backend reads), then give every file again."
        )


def _tests_fit_their_backend(parsed: ParsedOutput) -> None:
    """A repair's tests use only names of the backend it gives with them."""
    if TESTS in parsed.files and SERVER in parsed.files:
        check_tests_fit(parsed.files[TESTS], parsed.files[SERVER])


def _also(task: AgentTask, validator: Any) -> AgentTask:
    """``task`` with one more validator, run after its own."""
    return task.model_copy(update={"validators": (*task.validators, validator)})


def _role_of(task_id: str) -> str:
    if task_id.startswith("repair-"):
        return REPAIR.name
    return "qa" if task_id == "qa-tests" else task_id


def _is_verdict(output: str) -> dict[str, Any]:
    """The test runner's answer: a line of JSON with the verdict, then the test log.

    Refused unless the first line is a JSON object with a verdict; the log is its ``log``.
    """
    first, _, log = output.partition("\n")
    try:
        answer = json.loads(first)
    except json.JSONDecodeError:
        raise OutputRejected("the test runner's answer does not start with a JSON line") from None
    if not isinstance(answer, dict) or "verdict" not in answer:
        raise OutputRejected("the test runner's answer has no verdict")
    return {**answer, "log": log.strip("\n")}


def qa_verdict(result: TaskResult | None) -> dict[str, Any]:
    """The test run's counts, verdict and log, or why there is none."""
    if result is None or not result.succeeded or not result.output:
        reason = "not run" if result is None else (result.error or result.status.value)
        return {"verdict": "no verdict", "reason": reason}
    try:
        return _is_verdict(result.output)
    except OutputRejected as exc:
        return {"verdict": "no verdict", "reason": str(exc)}
