"""Specialist agents: a role, its instructions, what it may write, and how strong a model.

A ``SpecialistAgent`` is a recipe, not a provider: ``register`` puts an agent for the role
in an ``AgentRegistry`` (on the provider and model ``agents.routing`` picks for its tier),
``task`` turns a request into an ``AgentTask`` carrying the role's system prompt, and
``parse`` reads the answer under the file contract (``agents.contract``). ``run`` does all
three for a single request through a ``TaskExecutor``.

A role can also run on a coding-agent CLI (``claude-code``, ``codex``, ``gemini-cli``,
``aider``): registered with a ``repo``, it works on a copy of that directory and writes its
files there itself; its answer's diff is read as its files (``check_changes``), which are
then checked as any answer's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from agents.contract import ContractError, ParsedOutput, files_of_diff, parse_files
from agents.examples import example_answer, example_prompt
from agents.grammar import file_contract_grammar
from agents.routing import ModelChoice, Tier
from orchestration import AgentRegistry, AgentTask, OutputRejected, TaskExecutor, TaskResult
from orchestration.model.tools import ToolLike

__all__ = [
    "ARCHITECT",
    "BACKEND",
    "DEVOPS",
    "FRONTEND",
    "QA",
    "REPAIR",
    "SPECIALISTS",
    "SpecialistAgent",
    "Tier",
]

# Three-backtick fences only: models asked for longer ones for Markdown close them with three
# and then write until their token limit. A file therefore holds no code fence of its own.
CONTRACT = (
    "Answer with files only. For each file write a line `FILE: <path>` and then the whole "
    "file in a code block fenced with three backticks. Put no code fences inside a file."
)
# What a role on a coding CLI is told instead: it writes the files itself.
CLI_WORK = (
    "Write the files in your working directory, which holds what the team has written so "
    "far; do not show them in your answer, which says in a few lines what you did."
)


@dataclass(frozen=True)
class SpecialistAgent:
    """One role of the team.

    Attributes:
        name: The agent's name in the registry and the ledger.
        role: What it is, in a few words (shown in reports).
        instructions: The system prompt, before the output contract.
        writes: Path prefixes its files must start with.
        tier: ``strong`` for design and code, ``cheap`` for short, formulaic work.
        first_file: The file its answer should start with (small models need the hint).
        files: Every file it writes, in order (``first_file`` alone when empty). On the
            embedded model a grammar holds its answer to exactly these, each once.
        validators: More checks of its parsed files, run after the contract's: each takes
            the ``ParsedOutput`` and raises ``OutputRejected("why")`` to refuse it.
        max_tokens: Its answer budget, room for its files with a margin.
        example: Show the worked example (``agents.examples``) as an earlier exchange.
    """

    name: str
    role: str
    instructions: str
    writes: tuple[str, ...]
    tier: Tier
    first_file: str
    files: tuple[str, ...] = ()
    validators: tuple[Callable[[ParsedOutput], object], ...] = ()
    max_tokens: int = 1024
    example: bool = True

    @property
    def system_prompt(self) -> str:
        """The instructions followed by the output contract and where files go."""
        return f"{self.instructions}\n\n{CONTRACT} Paths start with {self._where}."

    @property
    def cli_system_prompt(self) -> str:
        """The instructions for the role on a coding CLI, which writes its files itself."""
        return f"{self.instructions}\n\n{CLI_WORK} Paths start with {self._where}."

    @property
    def _where(self) -> str:
        return ", ".join(f"`{prefix or './'}`" for prefix in self.writes)

    def register(
        self,
        registry: AgentRegistry,
        choice: ModelChoice,
        max_tokens: int | None = None,
        *,
        seed: int = 7,
        temperature: float = 0.2,
        tools: Sequence[ToolLike] = (),
        repo: Path | None = None,
    ) -> None:
        """Register this role on the provider and model chosen for it.

        On the embedded model (``local``), decoding is held to the file contract by a
        grammar over the role's files; other providers get the contract in the prompt, and
        every answer is checked either way. ``max_tokens`` replaces the role's own budget.
        ``tools`` (``agents.workspace.workspace_tools``) let it read, draft and test the app
        while it works; its answer's files are still what is checked and written. With
        ``repo`` (for a coding CLI, which has tools of its own) it works on a copy of it.
        """
        if repo is not None:
            registry.register_agent(
                self.name,
                choice.provider,
                model=choice.model,
                metadata={"repo": str(repo)},
                replace=True,
            )
            return
        metadata: dict[str, object] = {
            "max_tokens": max_tokens or self.max_tokens,
            "temperature": temperature,
            "seed": seed,
        }
        if choice.provider == "local":
            metadata["grammar"] = file_contract_grammar(self.paths, each_once=True)
        registry.register_agent(
            self.name,
            choice.provider,
            model=choice.model,
            metadata=metadata,
            replace=True,
            tools=list(tools),
        )

    @property
    def paths(self) -> tuple[str, ...]:
        """The files this role writes, in order."""
        return self.files or (self.first_file,)

    def task(
        self,
        request: str,
        *,
        task_id: str | None = None,
        depends_on: tuple[str, ...] = (),
        example_request: str | None = None,
        workdir: Path | None = None,
    ) -> AgentTask:
        """The task asking this role for ``request``; dependencies' outputs become context.

        Its answer is checked by ``check``: one that breaks the file contract is asked for
        again with the reason, and the task's value is the parsed files. The role's worked
        example comes first in the conversation, asked as ``example_request`` (``request``
        when None: a request that names no app, such as "implement this spec").

        With ``workdir``, the task is for the role on a coding CLI working on a copy of that
        directory: it is told to write its files there, and checked by ``check_changes``.
        """
        if workdir is not None:
            return AgentTask(
                task_id=task_id or self.name,
                agent=self.name,
                description=request,
                depends_on=depends_on,
                metadata={"system_prompt": self.cli_system_prompt, "role": self.role},
                validators=(functools.partial(self.check_changes, base=workdir),),
            )
        start = f"\n\nStart your answer with the line `FILE: {self.first_file}`."
        metadata: dict[str, object] = {"system_prompt": self.system_prompt, "role": self.role}
        if self.example:
            prompt = example_prompt(self.name, (example_request or request) + start)
            metadata["examples"] = [(prompt, example_answer(self.paths))]
        return AgentTask(
            task_id=task_id or self.name,
            agent=self.name,
            description=request + start,
            depends_on=depends_on,
            metadata=metadata,
            validators=(self.check,),
        )

    def parse(self, output: str) -> ParsedOutput:
        """The files of an answer (see ``agents.contract.parse_files``).

        Raises:
            ContractError: The answer holds no usable file.
        """
        return parse_files(output, self.writes)

    def check(self, output: str) -> ParsedOutput:
        """The files of an answer that is usable whole: the task's validator.

        Usable: it holds files under the contract, every one of the role's ``paths`` among
        them, every path is one this role writes, and every Python file compiles. The
        role's own ``validators`` then check the files.

        Raises:
            OutputRejected: Says what to fix, file by file.
        """
        try:
            parsed = self.parse(output)
        except ContractError as exc:
            raise OutputRejected(f"{exc}. {CONTRACT}") from None
        return self._checked(parsed)

    def check_changes(self, output: str, base: Path) -> ParsedOutput:
        """The files a coding CLI wrote, read from its answer's diff, checked as ``check``'s.

        Its files that it left as they were in ``base`` count as given (a repair may fix
        the backend alone).

        Raises:
            OutputRejected: It changed no file, its diff does not apply to ``base`` (the
                directory it started as a copy of), or ``check`` would refuse its files.
        """
        try:
            parsed = files_of_diff(output, base, self.writes)
        except ContractError as exc:
            files = ", ".join(self.paths)
            raise OutputRejected(f"{exc}: write {files} in your working directory.") from None
        for path in self.paths:  # a file of the role it left as it was is still its file
            if path not in parsed.files and (base / path).is_file():
                parsed.files[path] = (base / path).read_text(encoding="utf-8", errors="replace")
        return self._checked(parsed)

    def _checked(self, parsed: ParsedOutput) -> ParsedOutput:
        problems = list(parsed.problems)
        problems += [
            f"{path}: missing: give every file" for path in self.paths if path not in parsed.files
        ]
        for path, body in parsed.files.items():
            if path.endswith(".py"):
                try:
                    compile(body, path, "exec", dont_inherit=True)
                except SyntaxError as exc:
                    problems.append(f"{path}: line {exc.lineno}: {exc.msg}")
        if problems:
            listed = "\n".join(f"- {problem}" for problem in problems)
            raise OutputRejected(f"Fix these, then give every file again:\n{listed}")
        for validator in self.validators:
            validator(parsed)
        return parsed

    async def run(self, executor: TaskExecutor, request: str) -> TaskResult:
        """Ask this role once, on the executor's registry (where it must be registered)."""
        return await executor.execute(self.task(request), agent=self.name)


ARCHITECT = SpecialistAgent(
    name="architect",
    first_file="docs/SPEC.md",
    role="product architect",
    instructions=(
        "You are a product architect. Write docs/SPEC.md: the features, the data model "
        "(fields and types), and the HTTP API contract (method, path, request and response "
        "JSON for each endpoint). Be brief and exact."
    ),
    writes=("docs/",),
    tier="strong",
    max_tokens=768,
)
BACKEND = SpecialistAgent(
    name="backend",
    first_file="backend/server.py",
    role="backend engineer",
    instructions=(
        "You are a backend engineer. Implement the API of the spec in backend/server.py "
        "with the Python standard library only (http.server and json, the data in a JSON "
        "file). Write the spec's storage functions, importable without starting the server, "
        "and start the server only under `if __name__ == '__main__':`."
    ),
    writes=("backend/",),
    tier="strong",
    max_tokens=1536,
)
FRONTEND = SpecialistAgent(
    name="frontend",
    first_file="frontend/index.html",
    role="frontend engineer",
    instructions=(
        "You are a frontend engineer. Write frontend/index.html: one static page with "
        "inline CSS and JavaScript (fetch) that lists, adds, completes and deletes todos "
        "through the API of the spec. No external libraries."
    ),
    writes=("frontend/",),
    tier="strong",
    max_tokens=1536,
)
QA = SpecialistAgent(
    name="qa",
    first_file="tests/test_backend.py",
    role="QA engineer",
    instructions=(
        "You are a QA engineer. Write tests/test_backend.py with unittest for the backend "
        "module backend/server.py (add backend/ to sys.path and import server). Test each "
        "storage function directly, with at least four test methods, each starting from an "
        "empty data file of its own; do not start a server or use the network. Call only "
        "functions the backend defines, and read the data again after changing it."
    ),
    writes=("tests/",),
    tier="cheap",
    max_tokens=1280,
)
DEVOPS = SpecialistAgent(
    name="devops",
    first_file="run.sh",
    role="devops engineer",
    instructions=(
        "You are a devops engineer. Write run.sh (starts backend/server.py), a Dockerfile "
        "based on python:3.12-slim that runs it, and README.md telling how to run the app "
        "and its tests."
    ),
    writes=("run.sh", "Dockerfile", "README.md"),
    tier="cheap",
    files=("run.sh", "Dockerfile", "README.md"),
    max_tokens=768,
)
REPAIR = SpecialistAgent(
    name="repair",
    first_file="backend/server.py",
    role="repair engineer",
    instructions=(
        "You are a senior engineer. The app's unit tests fail: the test log says which and "
        "why. Find the cause. The code may be wrong, or the test may be: a test that expects "
        "what the spec does not say, calls a function the backend does not have, or reads "
        "data it changed without loading it again. Fix what is wrong, keep what works, and "
        "give both files again, whole."
    ),
    writes=("backend/", "tests/"),
    tier="strong",
    files=("backend/server.py", "tests/test_backend.py"),
    max_tokens=3072,
    example=False,
)
SPECIALISTS = (ARCHITECT, BACKEND, FRONTEND, QA, DEVOPS)
"""The five roles that build the app; ``REPAIR`` is called only when its tests fail."""
