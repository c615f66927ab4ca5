"""One attempt at a task, by one execution method: in-process provider or script.

Each function returns a ``TaskResult`` describing that attempt alone (status, output, usage,
latency, and ``metadata`` with ``execution_method``, ``provider``, ``model``,
``error_type``); the executor decides what to try next and records every attempt.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from time import perf_counter
from typing import Any

import anyio

from llm_abstractions.base import BaseLlm
from llm_abstractions.errors import (
    InvalidRequestError,
    LLMAuthenticationError,
    LLMBadResponseError,
    LLMContextLengthError,
    LLMError,
    LLMRateLimitError,
    MissingCredentialsError,
    ModelFileError,
    ModelNotFoundError,
    OrchestraError,
    ProviderNotImplementedError,
    ProviderNotInstalledError,
)
from llm_abstractions.types import LlmRequest, LlmResponse, Usage
from orchestration.ledger.accounting import agent_secrets, cost_of, redact
from orchestration.model.agent_registry import AgentConfig, AgentInterface
from orchestration.model.contracts import OutputContract, OutputRejected, ValidatorCrashed
from orchestration.model.errors import WorkerLostError
from orchestration.model.tasks import (
    AgentTask,
    ExecutionMethod,
    TaskProgress,
    TaskResult,
    TaskStatus,
)
from orchestration.model.text import storable
from orchestration.model.tools import DEFAULT_MAX_TURNS, ToolCallRecord, combined
from orchestration.runtime.backend import Backend, LocalBackend
from orchestration.runtime.spending import ESTIMATED, estimated_cost
from orchestration.runtime.subprocess_runner import ScriptError
from orchestration.runtime.tool_loop import Replays, Turns, tool_loop

__all__ = [
    "BUNDLED_SCRIPT",
    "FailureKind",
    "can_fall_back",
    "cancelled_attempt",
    "check_output",
    "failure_kind",
    "llm_attempt",
    "script_attempt",
    "script_can_stand_in",
]

_log = logging.getLogger(__name__)
BUNDLED_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "llm_call.py"
DEFAULT_SCRIPT_TIMEOUT_S = 120.0
DEFAULT_SCRIPT_OUTPUT = 1_000_000
# What the bundled script needs from the environment, per provider: keys, then base URLs.
_SCRIPT_ENV = {
    "anthropic-claude": ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"),
    "openai-gpt": ("OPENAI_API_KEY", "OPENAI_BASE_URL"),
    "google-gemini": ("GOOGLE_API_KEY", "GEMINI_API_KEY", "ORCHESTRA_GEMINI_BASE_URL"),
    "huggingface": ("HF_TOKEN", "ORCHESTRA_HF_BASE_URL"),
    "ollama": ("OLLAMA_HOST",),
    "lmstudio": ("ORCHESTRA_LMSTUDIO_URL",),
}


async def llm_attempt(
    task: AgentTask,
    agent: AgentConfig,
    request: LlmRequest,
    build: Any,
    on_progress: Callable[[TaskProgress], None] | None = None,
    on_tool_call: Callable[[ToolCallRecord], None] | None = None,
    replays: Replays | None = None,
    plain: bool = False,
) -> TaskResult:
    """Answer through the agent's provider in this process; ``build()`` returns it.

    ``plain``: the task has no output contract, so an answer's value is its text (what
    ``check_output`` would make of it, without a copy of the result).

    With ``on_progress``, a provider that can stream is asked to, and the callback hears
    of every piece of text as it arrives. With tools (the agent's and the task's), the
    attempt is a tool loop (``runtime.tool_loop``): its tokens and cost are those of every
    turn, and each tool call is reported to ``on_tool_call`` as it ends.
    """
    started = perf_counter()
    meta: dict[str, Any] = {
        "execution_method": ExecutionMethod.LLM_FACTORY.value,
        "provider": agent.agent_type,
        "model": agent.model,
    }
    try:
        llm: BaseLlm = build()
        if request.output_schema is not None and not llm.supports_output_schema:
            raise InvalidRequestError(
                f"provider {agent.agent_type!r} ({type(llm).__name__}) cannot do structured "
                "output, which this task's output_type needs; use another provider or drop "
                "output_type and check the text with validators"
            )
        if request.grammar is not None and not llm.supports_grammar:
            raise InvalidRequestError(
                f"provider {agent.agent_type!r} ({type(llm).__name__}) cannot follow a grammar"
            )
        reporter = None if on_progress is None else _Reporter(task, agent, on_progress)

        async def ask(sent: LlmRequest) -> LlmResponse:
            if reporter is not None and llm.can_stream:
                return await _streamed(llm, sent, reporter)
            if reporter is not None and llm.reports_progress:  # its work, as it goes
                return await llm.generate_reporting(sent, functools.partial(reporter.piece, ""))
            return await llm.generate(sent)

        tools = {tool.name: tool for tool in combined(agent.tools, task.tools)}
        turns = Turns()
        limit = _timeout(task, agent)  # a cancel scope costs 10-20 us: none without a limit
        with anyio.fail_after(limit) if limit is not None else contextlib.nullcontext():
            if not tools:  # without progress, straight to the provider: a coroutine less
                response = await (llm.generate(request) if reporter is None else ask(request))
            else:
                if not llm.supports_tools:
                    raise InvalidRequestError(
                        f"provider {agent.agent_type!r} ({type(llm).__name__}) cannot call "
                        "tools, which this task's agent has; use another provider"
                    )
                most = task.max_turns or agent.max_turns or DEFAULT_MAX_TURNS
                response = await tool_loop(ask, request, tools, most, on_tool_call, turns, replays)
    except (TimeoutError, OrchestraError) as exc:
        failed = _failed(task, agent, exc, perf_counter() - started, meta)
        spent = getattr(exc, "usage", None)  # a coding CLI that failed says what it spent
        if isinstance(spent, Usage):
            cost = getattr(exc, "cost_usd", None)
            failed = failed.model_copy(update={"usage": spent, "cost_usd": cost})
            failed.metadata["price_source"] = str(getattr(exc, "price_source", "unknown"))
        elif turns.answered:  # a tool loop's turns answered before it failed: paid for
            model = meta.get("model")
            cost, source = cost_of(agent.agent_type, str(model) if model else None, turns.usage)
            failed = failed.model_copy(update={"usage": turns.usage, "cost_usd": cost})
            failed.metadata.update(price_source=source, turns=turns.answered)
        return failed
    meta.update(model=response.model, finish_reason=response.finish_reason)
    for key in ("turns", "cli"):  # a tool loop's turns; what a coding CLI said of its run
        if key in response.metadata:
            meta[key] = response.metadata[key]
    if "price_source" in response.metadata:  # the provider priced it (a coding CLI)
        reported = response.metadata.get("cost_usd")
        cost = float(reported) if isinstance(reported, int | float) else None
        meta["reported_cost"] = (cost, response.metadata["price_source"])
    latency = perf_counter() - started
    return _succeeded(task, response.text, response.usage, latency, meta, request, plain)


class _Reporter:
    """Turns the pieces of a streamed answer into ``TaskProgress`` reports."""

    def __init__(
        self, task: AgentTask, agent: AgentConfig, report: Callable[[TaskProgress], None]
    ) -> None:
        self.task, self.agent, self.report = task, agent, report
        self.started = perf_counter()
        self.first: float | None = None
        self.tokens = 0

    def piece(self, delta: str, tokens: int | None) -> None:
        # Providers that do not count tokens per piece: about four characters a token.
        self.tokens += tokens if tokens is not None else -(-len(delta) // 4)
        elapsed = perf_counter() - self.started
        if self.first is None:
            self.first = elapsed
        self.report(
            TaskProgress(
                task_id=self.task.task_id,
                agent=self.agent.name,
                provider=self.agent.agent_type,
                model=self.agent.model,
                output_tokens=self.tokens,
                elapsed_s=elapsed,
                first_token_s=self.first,
                delta=delta,
            )
        )


async def _streamed(llm: BaseLlm, request: LlmRequest, reporter: _Reporter) -> LlmResponse:
    """The provider's streamed answer, whole; each piece is reported as it arrives."""
    chunks = llm.stream(request)
    try:
        async for chunk in chunks:
            if chunk.done and chunk.response is not None:
                return chunk.response
            if chunk.delta:
                reporter.piece(chunk.delta, chunk.tokens)
    finally:
        close = getattr(chunks, "aclose", None)  # async generators have it: stop generating
        if close is not None:
            await close()
    raise LLMBadResponseError(
        "the provider's stream ended without its final response", provider=llm.provider
    )


class FailureKind:
    """What a failed attempt says about what to try next (``metadata["failure_kind"]``)."""

    TRANSIENT = "transient"  # retrying the same provider can work
    PROVIDER = "provider"  # this provider cannot serve it: go to the next in the chain
    REQUEST = "request"  # the request itself is wrong: nothing else will do better
    OUTPUT = "invalid_output"  # answered, but the task's output contract refused the answer


# Failures no retry fixes but another provider or model might: a rejected key, a prompt too
# long for this model, a model the provider does not have, a provider this machine cannot run.
_PROVIDER_FAILURES = (
    LLMAuthenticationError,
    LLMContextLengthError,
    ModelNotFoundError,
    MissingCredentialsError,
    ModelFileError,
    ProviderNotImplementedError,
    ProviderNotInstalledError,
)


def failure_kind(exc: BaseException) -> str:
    """The ``FailureKind`` of an attempt that raised ``exc``."""
    if isinstance(exc, LLMError) and exc.retryable:
        return FailureKind.TRANSIENT
    if isinstance(exc, TimeoutError):  # the task's own timeout
        return FailureKind.TRANSIENT
    if isinstance(exc, _PROVIDER_FAILURES):
        return FailureKind.PROVIDER
    return FailureKind.REQUEST  # bad request, refused content, a script's own failure


def can_fall_back(agent: AgentConfig, failed: TaskResult) -> bool:
    """Whether a failed in-process attempt should be retried through the bundled script.

    Only when the provider could not serve (SDK missing, not shipped, unreachable, or a
    failure retrying could fix) and the agent allows it: never for the user's own mistakes
    (a missing key, a bad request) or for answers a script would get the same way.
    """
    return script_can_stand_in(agent) and bool(failed.metadata.get("provider_unavailable"))


def script_can_stand_in(agent: AgentConfig) -> bool:
    """Whether the agent's settings allow the bundled script to call its provider."""
    if agent.interface is not AgentInterface.API or not agent.script_fallback:
        return False
    return agent.agent_type in _SCRIPT_ENV and BUNDLED_SCRIPT.is_file()


async def script_attempt(
    task: AgentTask, agent: AgentConfig, request: LlmRequest, backend: Backend | None = None
) -> TaskResult:
    """Run the agent's own script (SCRIPT/CLI agents) or the bundled HTTP fallback.

    ``backend`` says where (``runtime.backend``; in this process when None).
    """
    started = perf_counter()
    if agent.interface is not AgentInterface.API and agent.script is not None:
        argv = list(agent.script.command)
        limit_s, max_out, cwd = (
            agent.script.timeout_s,
            agent.script.max_output_bytes,
            agent.script.cwd,
        )
        env: dict[str, str] = {}
        payload = _own_payload(task, agent, request)
    else:
        argv = [sys.executable, "-I", str(BUNDLED_SCRIPT)]
        limit_s, max_out, cwd = DEFAULT_SCRIPT_TIMEOUT_S, DEFAULT_SCRIPT_OUTPUT, None
        env = _provider_env(agent)
        payload = _fallback_payload(agent, request)
    timeout_s = min(limit_s, task.timeout) if task.timeout else limit_s
    payload["timeout_s"] = timeout_s
    meta: dict[str, Any] = {
        "execution_method": ExecutionMethod.SCRIPT.value,
        "provider": agent.agent_type,
        "model": payload.get("model"),
    }
    try:
        outcome = await (backend or LocalBackend()).run_script(
            agent, argv, payload, timeout_s=timeout_s, max_output_bytes=max_out, env=env, cwd=cwd
        )
        answer = outcome.answer
        output = answer["output"]
        if not isinstance(output, str):
            raise ScriptError("protocol", "the script's `output` is not a string")
    except (ScriptError, KeyError, OSError, OrchestraError) as exc:  # Orchestra: a lost worker
        return _failed(task, agent, exc, perf_counter() - started, meta)
    usage = answer.get("usage") or {}
    meta.update(
        model=answer.get("model") or meta["model"], finish_reason=answer.get("finish_reason")
    )
    counted = Usage(
        input_tokens=_count(usage.get("input_tokens")),
        output_tokens=_count(usage.get("output_tokens")),
    )
    return _succeeded(task, output, counted, perf_counter() - started, meta, request)


def cancelled_attempt(
    task: AgentTask, agent: AgentConfig, method: ExecutionMethod, latency: float
) -> TaskResult:
    """An attempt cancelled while its call was in flight: maybe answered and paid, unknown.

    Recorded all the same (status ``cancelled``, tokens and cost unknown, not 0): the
    provider may have taken the request and charged for it.
    """
    return TaskResult(
        task_id=task.task_id,
        status=TaskStatus.CANCELLED,
        error=(
            "cancelled while the call was in flight: the provider may have answered it and "
            "charged for it (tokens unknown)"
        ),
        latency_s=latency,
        attempts=1,
        metadata={
            "execution_method": method.value,
            "provider": agent.agent_type,
            "model": agent.model,
            "error_type": "Cancelled",
            "price_source": "unknown: cancelled in flight",
        },
    )


_CUT = "It was cut off at the token limit (max_tokens): make it shorter."


def check_output(
    contract: OutputContract | None, attempt: TaskResult, agent: AgentConfig
) -> TaskResult:
    """The attempt as its task's output contract judges it.

    An answer the contract accepts gets its ``value``; without a contract the value is the
    text. A refused answer becomes a failed attempt of kind ``invalid_output`` (paid for all
    the same), its reason in ``error`` and in ``metadata["rejection"]``; so does a text
    answer cut at ``max_tokens``, whatever its validators said (a typed answer that parses
    is whole). A validator that crashed fails the attempt as the caller's bug, which no
    retry fixes.
    """
    if not attempt.succeeded or attempt.output is None:
        return attempt
    if contract is None:
        if attempt.value is attempt.output:  # made so (``llm_attempt(plain=True)``)
            return attempt
        return attempt.model_copy(update={"value": attempt.output})
    cut = attempt.metadata.get("finish_reason") == "length"
    try:
        value = contract.check(attempt.output)
    except OutputRejected as exc:
        reason = str(exc) or "a validator refused it (without saying why)"
        return _refused(attempt, f"{_CUT}\n{reason}" if cut else reason, agent)
    except ValidatorCrashed as exc:
        meta = {**attempt.metadata, "error_type": "ValidatorCrashed"}
        meta.update(failure_kind=FailureKind.REQUEST, validation="crashed")
        crashed = redact(str(exc), agent_secrets(agent))
        return attempt.model_copy(
            update={"status": TaskStatus.FAILED, "error": crashed, "metadata": meta}
        )
    if cut and not contract.typed:
        return _refused(attempt, _CUT, agent)
    meta = {**attempt.metadata, "validation": "accepted"}
    return attempt.model_copy(update={"value": value, "metadata": meta})


def _refused(attempt: TaskResult, reason: str, agent: AgentConfig) -> TaskResult:
    reason = redact(reason, agent_secrets(agent)) or reason
    meta = {
        **attempt.metadata,
        "error_type": FailureKind.OUTPUT,
        "failure_kind": FailureKind.OUTPUT,
        "validation": "refused",
        "rejection": reason,
    }
    error = f"invalid_output: {reason}"
    return attempt.model_copy(
        update={"status": TaskStatus.FAILED, "error": error, "metadata": meta}
    )


def _succeeded(
    task: AgentTask,
    output: str,
    usage: Usage,
    latency: float,
    meta: dict[str, Any],
    request: LlmRequest | None = None,
    plain: bool = False,
) -> TaskResult:
    """A successful attempt, priced; ``metadata["price_source"]`` says where the cost came from.

    With ``plain`` (no output contract), its value is its text.

    An answer without usage is priced by estimate from ``request`` and its text, and its
    ``price_source`` says so (``spending.ESTIMATED``).

    Text UTF-8 cannot carry (unpaired surrogates) is replaced here, at the boundary, and
    the loss noted in ``metadata["text_repaired"]``: it would fail every write of the run.
    """
    output, repaired = storable(output)
    if repaired:
        meta["text_repaired"] = (
            f"{repaired} unpaired surrogate(s) in the answer replaced with U+FFFD"
        )
        _log.warning("task %s: %s", task.task_id, meta["text_repaired"])
    model = str(meta["model"]) if meta.get("model") else None
    reported = meta.pop("reported_cost", None)
    if reported is not None:
        cost, meta["price_source"] = reported[0], reported[1] or "reported by the provider"
        return _result(task, output, usage, latency, meta, cost, plain)
    cost, meta["price_source"] = cost_of(str(meta["provider"]), model, usage)
    unreported = usage.input_tokens is None or usage.output_tokens is None
    if cost is None and unreported and request is not None:  # paid for all the same
        cost = estimated_cost(str(meta["provider"]), model, request, output)
        if cost is not None:
            meta["price_source"] = ESTIMATED
    return _result(task, output, usage, latency, meta, cost, plain)


def _result(
    task: AgentTask,
    output: str,
    usage: Usage,
    latency: float,
    meta: dict[str, Any],
    cost: float | None,
    plain: bool = False,
) -> TaskResult:
    return TaskResult(
        task_id=task.task_id,
        status=TaskStatus.SUCCEEDED,
        output=output,
        usage=usage,
        cost_usd=cost,
        latency_s=latency,
        attempts=1,
        metadata=meta,
        value=output if plain else None,
    )


def _failed(
    task: AgentTask, agent: AgentConfig, exc: BaseException, latency: float, meta: dict[str, Any]
) -> TaskResult:
    if isinstance(exc, TimeoutError) and not isinstance(exc, LLMError):
        message = f"timed out after {_timeout(task, agent)} s"
    else:
        # Providers and scripts may echo what they were sent; keys must not travel further.
        message = f"{type(exc).__name__}: {exc}"
    # Could the script serve instead? Not for a rate limit: it would meet the same one.
    unavailable = isinstance(exc, ProviderNotInstalledError | ProviderNotImplementedError) or (
        isinstance(exc, LLMError) and exc.retryable and not isinstance(exc, LLMRateLimitError)
    )
    error_type = f"script:{exc.kind}" if isinstance(exc, ScriptError) else type(exc).__name__
    meta = {
        **meta,
        "error_type": error_type,
        "provider_unavailable": unavailable,
        "failure_kind": failure_kind(exc),
    }
    asked = getattr(exc, "retry_after", None)  # rate limits, and 503/529 that say so
    if isinstance(asked, int | float):
        meta["retry_after_s"] = float(asked)
    # A worker that died mid-attempt: the call may or may not have been made and paid for.
    lost = isinstance(exc, WorkerLostError)
    if lost:
        meta["price_source"] = "unknown: crashed in flight"
    return TaskResult(
        task_id=task.task_id,
        status=TaskStatus.CRASHED if lost else TaskStatus.FAILED,
        error=storable(redact(message, agent_secrets(agent)) or message)[0],
        latency_s=latency,
        attempts=1,
        metadata=meta,
    )


def _timeout(task: AgentTask, agent: AgentConfig) -> float | None:
    """Seconds one attempt may take: the task's ``timeout``, else the agent's ``timeout_s``."""
    return task.timeout if task.timeout is not None else agent.settings.timeout_s


def _messages(request: LlmRequest) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in request.messages]


def _fallback_payload(agent: AgentConfig, request: LlmRequest) -> dict[str, Any]:
    from llm_abstractions.factory import LlmFactory

    return {
        "provider": agent.agent_type,
        "model": agent.model or LlmFactory.spec(agent.agent_type).default_model,
        "system": request.system,
        "messages": _messages(request),
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
    }


def _own_payload(task: AgentTask, agent: AgentConfig, request: LlmRequest) -> dict[str, Any]:
    return {
        "task_id": task.task_id,
        "agent": agent.name,
        "model": agent.model,
        "description": task.description,
        "prompt": request.messages[-1].content,
        "system": request.system,
        "messages": _messages(request),
        "metadata": task.metadata,
    }


def _provider_env(agent: AgentConfig) -> dict[str, str]:
    """Only this provider's variables, with the agent's own key under the standard name."""
    names = _SCRIPT_ENV.get(agent.agent_type, ())
    env = {name: os.environ[name] for name in names if os.environ.get(name)}
    if agent.api_key is not None or agent.api_key_env:
        key_names = [n for n in names if not n.endswith(("_URL", "_HOST"))]
        key = agent.resolved_api_key()
        if key and key_names:
            env[key_names[0]] = key
    return env


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
