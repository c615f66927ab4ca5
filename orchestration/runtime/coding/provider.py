"""Coding-agent CLIs as providers: ``register_agent("coder", "claude-code")``.

Each call runs the CLI once, as a subprocess under the script rules
(``runtime.subprocess_runner.run_process``: an argument vector, the prompt on stdin, an
environment of the CLI's own key and endpoint and nothing else of ours, the whole process
tree killed when it ends or times out), in a working directory of its own
(``runtime.coding.workdir``: a git worktree or a copy of the agent's ``repo``). The answer is the
CLI's final message followed by the diff of what it changed; its usage, its own cost (priced
by us from its tokens when it gives none), turns, session, version, changed files and
directory go with it (``LlmResponse.metadata``), into the ledger's ``attempts.details``.

Being providers, coding CLIs get everything agents have: retries, fallbacks, budgets (a
task's ``budget_usd`` is also handed to a CLI that can keep to one), the ledger, resume,
and the Ray backend.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Callable
from time import perf_counter
from typing import Any, ClassVar

import anyio.to_thread

from llm_abstractions.base import BaseLlm
from llm_abstractions.errors import (
    ConfigurationError,
    LLMBadResponseError,
    LLMError,
    LLMTimeoutError,
    ProviderNotInstalledError,
)
from llm_abstractions.types import LlmRequest, LlmResponse, Usage
from orchestration.ledger.accounting import cost_of
from orchestration.runtime.coding.clis import (
    AIDER,
    CLAUDE_CODE,
    CODEX,
    GEMINI_CLI,
    CliReport,
    CodingCli,
    UnreadableOutput,
)
from orchestration.runtime.coding.meter import Meter
from orchestration.runtime.coding.workdir import plain_env, prepare
from orchestration.runtime.subprocess_runner import ProcessOutcome, ScriptError, run_process

__all__ = [
    "AiderLlm",
    "ClaudeCodeLlm",
    "CliFailed",
    "CliNotInstalledError",
    "CliTimedOut",
    "CliUnreadable",
    "CodexLlm",
    "CodingCliLlm",
    "GeminiCliLlm",
]

DEFAULT_TIMEOUT_S = 1800.0  # a coding session may take a while; a hung one does not
STOP_MARGIN_S = 2.0  # stopped this long before its attempt's time is up
READ_LIMIT_S = 30.0  # at most this long to read what a CLI that answered changed
BUDGET_GRACE_S = 5.0  # how long a CLI that keeps to a budget has to stop at it itself
MAX_OUTPUT_BYTES = 50_000_000  # a long session's JSON events


class CliNotInstalledError(ProviderNotInstalledError):
    """The CLI a coding agent runs is not on PATH."""

    def __init__(self, provider: str, executable: str, install: str) -> None:
        # Not ProviderNotInstalledError's own message, which names a Python package.
        super(ProviderNotInstalledError, self).__init__(
            f"Agent type {provider!r} runs the {executable!r} command, which is not on PATH: "
            f"install it with `{install}` (or put it on PATH)"
        )
        self.provider, self.missing, self.extra = provider, executable, None
        self.executable, self.install = executable, install

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:
        return type(self), (self.provider, self.executable, self.install)


class CliFailed(LLMError):
    """The CLI ran and did not finish its work; what it spent is still known."""

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        usage: Usage,
        cost_usd: float | None,
        price_source: str,
    ) -> None:
        super().__init__(message, provider=provider)
        self.usage, self.cost_usd, self.price_source = usage, cost_usd, price_source

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Whole through pickle (a CLI run on a Ray node fails with it in the driver).
        fields = (str(self), self.provider, self.usage, self.cost_usd, self.price_source)
        return _rebuilt, (type(self), *fields)


class CliTimedOut(CliFailed, LLMTimeoutError):
    """The CLI ran past its time and was killed, with what it started."""


class CliUnreadable(CliFailed, LLMBadResponseError):
    """What the CLI printed is not what it prints when it works (or there was too much)."""


def _rebuilt(
    kind: type[CliFailed],
    message: str,
    provider: str,
    usage: Usage,
    cost_usd: float | None,
    price_source: str,
) -> CliFailed:
    return kind(
        message, provider=provider, usage=usage, cost_usd=cost_usd, price_source=price_source
    )


class CodingCliLlm(BaseLlm):
    """A coding-agent CLI, run once per call in a working directory of its own."""

    cli: ClassVar[CodingCli]
    # Its answer depends on the code it found and changed: never answered from the cache.
    cacheable: ClassVar[bool] = False
    reports_progress: ClassVar[bool] = True  # its model's answers, as they pass the meter

    def __init__(
        self,
        model: str | None = None,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        super().__init__(model)
        self._chosen = model  # None: the CLI's own default model
        self._api_key = api_key
        self.base_url = base_url or os.environ.get(self.cli.endpoint_env(model))
        self.timeout = timeout

    async def generate(self, request: LlmRequest) -> LlmResponse:
        """Run the CLI on the request's prompt; its final message and diff (``_run``)."""
        return await self._run(request, None)

    async def generate_reporting(
        self, request: LlmRequest, progress: Callable[[int], None]
    ) -> LlmResponse:
        """As ``generate``, telling ``progress`` each of its model's answers' output tokens.

        Each answer is told as it passes the meter: the CLI's work, as it goes.
        """
        return await self._run(request, progress)

    async def _run(
        self, request: LlmRequest, progress: Callable[[int], None] | None
    ) -> LlmResponse:
        """Run the CLI on the request's prompt; its final message and diff.

        Raises:
            CliNotInstalledError: The CLI is not on PATH.
            CliTimedOut: It ran past the timeout (it and what it started are killed).
            CliFailed: It ended its session with an error, or was stopped at its budget.
            CliUnreadable: What it printed cannot be read.
        """
        started = perf_counter()
        cli = self.cli
        executable = shutil.which(cli.executable)
        if executable is None:
            raise CliNotInstalledError(cli.name, cli.executable, cli.install)
        label = str(request.metadata.get("task_id") or "task")
        workdir = await anyio.to_thread.run_sync(prepare, request.metadata.get("repo"), label)
        home = workdir.home
        home.mkdir(exist_ok=True)
        prompt = _prompt(request).encode()
        if cli.prompt_file is not None:  # read from a file of its home, not stdin
            (home / cli.prompt_file).write_bytes(prompt)
            prompt = b""
        budget = request.metadata.get("budget_usd")
        budget = float(budget) if isinstance(budget, int | float) else None
        upstream = self.base_url or cli.default_endpoint(self._chosen)
        told = None if progress is None else _told(progress)
        async with Meter(upstream, self._price_of, budget, told) as meter:
            argv = cli.argv(executable, self._chosen, budget, meter.url, str(home))
            env = cli.env(self._api_key, meter.url, str(home), self._chosen)
            limit = self._limit(request, started)
            # A CLI that keeps to its budget itself is given time to stop and say so.
            grace = BUDGET_GRACE_S if cli.keeps_budget else 0.0
            ran = await _run_until(meter, grace, argv, prompt, limit, env, str(workdir.path))

        def failed(message: str, kind: type[CliFailed] = CliFailed) -> CliFailed:
            """A run that did not finish, with what its answers cost as they passed."""
            return kind(
                message,
                provider=cli.name,
                usage=meter.total,
                cost_usd=meter.cost_usd,
                price_source=self._metered(meter),
            )

        if ran is None:
            raise failed(
                f"{cli.executable} was stopped at its budget of ${budget or 0.0:.4f}: its "
                f"answers had cost ${meter.spent_usd:.4f} (its directory: {workdir.path})"
            )
        if isinstance(ran, ScriptError):
            if ran.kind == "timeout":
                raise failed(
                    f"timed out after {request.metadata.get('timeout_s', self.timeout):g} s: "
                    f"{cli.executable} and what it started were killed (what its answers had "
                    f"cost until then is recorded); its directory: {workdir.path}",
                    CliTimedOut,
                )
            raise failed(str(ran), CliUnreadable)  # it printed more than we keep
        try:
            report = cli.read(ran.stdout, ran.stderr, str(home))
        except UnreadableOutput as exc:
            said = ran.stderr.strip()[-500:] or "nothing on stderr"
            raise failed(
                f"{cli.executable} exited with status {ran.code} and {exc}: {said}", CliUnreadable
            ) from None
        model = report.model or self._chosen
        if report.usage.input_tokens is None and meter.answers:  # it said nothing of it
            usage: Usage = meter.total
            priced: tuple[float | None, str] = (meter.cost_usd, self._metered(meter))
        else:
            usage, priced = report.usage, _priced(cli, model, report)
            if priced[0] is None and meter.cost_usd is not None:  # its tokens, unpriced
                priced = (meter.cost_usd, self._metered(meter))
        if report.error is not None or ran.code != 0:
            why = "stopped at its budget" if report.over_budget else f"ended with {report.error}"
            raise CliFailed(
                f"{cli.executable} {why} (exit status {ran.code}): {report.text[:500]}",
                provider=cli.name,
                usage=usage,
                cost_usd=priced[0],
                price_source=priced[1],
            )
        # It answered, and its answer was paid for: reading its work is not cut short by the
        # attempt's time running out (it was stopped STOP_MARGIN_S before; this is bounded).
        changed: list[str] | None = None
        diff = "[what it changed could not be read in time]"
        version = report.version
        with anyio.CancelScope(shield=True) as reading:
            reading.deadline = anyio.current_time() + READ_LIMIT_S
            try:
                changed, diff = await anyio.to_thread.run_sync(
                    workdir.changes, cli.own_files, abandon_on_cancel=True
                )
            except ConfigurationError as exc:  # its work is there, unread
                diff = f"[what it changed could not be read: {exc}]"
            if version is None:
                version = await anyio.to_thread.run_sync(
                    _version, executable, cli.version_args, abandon_on_cancel=True
                )
        text = report.text if not diff else f"{report.text}\n\n{diff}"
        details: dict[str, Any] = {
            "cli": cli.executable,
            "version": version,
            "turns": report.turns,
            "session_id": report.session_id,
            "files_changed": changed,
            "workdir": str(workdir.path),
            "workdir_kind": workdir.kind,
            "api_answers": meter.answers,  # what the meter saw pass
            **report.extra,
        }
        metadata: dict[str, Any] = {"cli": details, "price_source": priced[1]}
        if priced[0] is not None:
            metadata["cost_usd"] = priced[0]
        return LlmResponse(
            text=text,
            provider=cli.name,
            model=model or self.model,
            finish_reason="stop",
            usage=usage,
            latency_s=perf_counter() - started,
            response_id=report.session_id,
            metadata=metadata,
        )

    def _price_of(self, model: str | None, usage: Usage) -> float | None:
        """One answer's cost (None: unknown): the model it names, at its vendor's prices.

        The vendor is the agent's model's when it has one (it says where answers come from).
        """
        name = model or self._chosen
        if name is None:
            return None
        provider, priced = self.cli.priced_as(name)
        if self._chosen is not None:
            provider = self.cli.priced_as(self._chosen)[0]
        return cost_of(provider, priced, usage)[0]

    def _metered(self, meter: Meter) -> str:
        """Where the meter's figure comes from."""
        if not meter.answers:
            return "unknown: no answer of its API was read"
        if meter.unpriced:
            models = ", ".join(sorted(str(m) for m in meter.unpriced))
            return f"unknown: no price for {models} (the tokens its API reported are recorded)"
        return f"{self.cli.name}: its API's answers as they passed, priced by genai-prices"

    def _limit(self, request: LlmRequest, started: float) -> float:
        """Seconds the CLI may run: its own limit, or just inside the attempt's.

        So it is stopped here, saying what it spent, before the attempt is.
        """
        attempt = request.metadata.get("timeout_s")
        if not isinstance(attempt, int | float):
            return self.timeout
        left = float(attempt) - (perf_counter() - started) - STOP_MARGIN_S
        return max(0.1, min(self.timeout, left))


async def _run_until(
    meter: Meter,
    grace: float,
    argv: list[str],
    prompt: bytes,
    limit: float,
    env: dict[str, str],
    cwd: str,
) -> ProcessOutcome | ScriptError | None:
    """Run the CLI until it exits (its outcome), fails to (the error), or passes its budget.

    None: its answers passed the meter's budget, and it was killed (``grace`` seconds
    later), with what it started.
    """
    outcome: ProcessOutcome | ScriptError | None = None
    failure: Exception | None = None  # raised as itself, not inside an exception group
    async with anyio.create_task_group() as group:

        async def stop_at_budget() -> None:
            await meter.over_budget.wait()
            await anyio.sleep(grace)
            group.cancel_scope.cancel()

        group.start_soon(stop_at_budget)
        try:
            outcome = await run_process(
                argv, prompt, timeout_s=limit, max_output_bytes=MAX_OUTPUT_BYTES, env=env, cwd=cwd
            )
        except ScriptError as exc:
            outcome = exc
        except Exception as exc:  # it could not be started
            failure = exc
        group.cancel_scope.cancel()
    if failure is not None:
        raise failure
    return outcome


class ClaudeCodeLlm(CodingCliLlm):
    """Claude Code (``claude -p``)."""

    cli = CLAUDE_CODE
    provider = "claude-code"


class CodexLlm(CodingCliLlm):
    """OpenAI's Codex CLI (``codex exec``)."""

    cli = CODEX
    provider = "codex"


class GeminiCliLlm(CodingCliLlm):
    """Google's Gemini CLI (``gemini``)."""

    cli = GEMINI_CLI
    provider = "gemini-cli"


class AiderLlm(CodingCliLlm):
    """aider (``aider --message-file``)."""

    cli = AIDER
    provider = "aider"


def _told(progress: Callable[[int], None]) -> Callable[[Usage], None]:
    """``progress`` told the output tokens of each answer (0 when it gives none)."""

    def tell(usage: Usage) -> None:
        progress(usage.output_tokens or 0)

    return tell


def _priced(cli: CodingCli, model: str | None, report: CliReport) -> tuple[float | None, str]:
    """The run's cost and where it comes from: the CLI's own, else its tokens' prices.

    Each model's tokens at its own price when the CLI says which model used which.
    """
    if report.cost_usd is not None:
        return report.cost_usd, f"{cli.name}: its own report"
    if report.per_model:
        total = 0.0
        for name, usage in report.per_model.items():
            provider, priced = cli.priced_as(name)
            cost, source = cost_of(provider, priced, usage)
            if cost is None:
                return None, source if priced in source else f"{source} ({priced})"
            total += cost
        return total, f"{source}, {provider} prices of each model's tokens"
    if model is None:
        return None, f"unknown: {cli.name} did not say its model (give the agent a model)"
    provider, priced = cli.priced_as(model)
    cost, source = cost_of(provider, priced, report.usage)
    return cost, source if cost is None else f"{source}, {provider} prices of its tokens"


@functools.cache
def _version(executable: str, args: tuple[str, ...]) -> str | None:
    """What ``executable ARGS`` says its version is (asked once per executable)."""
    try:
        done = subprocess.run(  # noqa: S603 - the CLI itself, found on PATH
            [executable, *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env=plain_env(),  # none of our keys
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    said = done.stdout.strip().splitlines()
    return said[0] if done.returncode == 0 and said else None


def _prompt(request: LlmRequest) -> str:
    """One prompt of the request: its system prompt, then each message in turn."""
    parts = [request.system] if request.system else []
    for message in request.messages:
        label = "" if message.role == "user" else f"[{message.role}]\n"
        parts.append(f"{label}{message.content}")
    return "\n\n".join(parts)
