"""OpenTelemetry spans for runs, tasks and model calls, in the GenAI semantic conventions.

When the application has configured OpenTelemetry tracing (``pip install
'orchestra[otel]'``, then a ``TracerProvider`` set with ``trace.set_tracer_provider``, or
the ``opentelemetry-instrument`` launcher), or gives the executor its own provider
(``TaskExecutor(tracer_provider=...)``), every run emits:

- a run span, ``invoke_workflow {run name}`` (``gen_ai.operation.name`` ``invoke_workflow``,
  ``gen_ai.workflow.name``), a child of whatever span is current when the run starts;
- a task span per task that runs, ``invoke_agent {agent}`` (``gen_ai.agent.name``, its
  provider and model);
- a client span per attempt that calls a model or a script, ``chat {model}``, with
  ``gen_ai.provider.name``, ``gen_ai.request.model`` and the request's settings,
  ``gen_ai.response.model``, ``gen_ai.usage.input_tokens``/``output_tokens``,
  ``gen_ai.response.finish_reasons``, ``error.type`` when it failed, and its price as
  ``orchestra.cost_usd`` (the conventions have no cost attribute).

Only the chat spans carry ``gen_ai.usage.*`` and ``orchestra.cost_usd``: backends add those
up across spans, so the task and run spans give their totals under other names
(``orchestra.usage.input_tokens``/``output_tokens``, ``orchestra.total_cost_usd``). The
conventions followed are those of semantic conventions 1.41 (the schema URL the tracer
names); they are in development, and later releases rename the workflow span. The spans of an
HTTP client instrumentation nest under the chat span that made the request. Prompts and
answers are not put on spans (they are in the ledger, secrets masked).

Nothing here imports OpenTelemetry: tracing is on only when the application has imported
``opentelemetry.trace`` and set a real tracer provider, so an application that does not use
it pays one dictionary lookup per run.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.trace import Span, SpanKind, Tracer

    from llm_abstractions.types import LlmRequest
    from orchestration.model.agent_registry import AgentConfig
    from orchestration.model.tasks import AgentTask, TaskResult
    from orchestration.runtime.results import RunResult

__all__ = ["attempt_span", "provider_name", "run_span", "task_span"]

# Set for the length of a run that is traced; the run's tasks inherit it.
_TRACER: ContextVar[Tracer | None] = ContextVar("orchestra_tracer", default=None)

# The conventions' names for providers they know; the others keep Orchestra's name.
_PROVIDERS = {
    "anthropic-claude": "anthropic",
    "openai-gpt": "openai",
    "google-gemini": "gcp.gemini",
}
SCHEMA_URL = "https://opentelemetry.io/schemas/1.41.0"
_REQUEST_SETTINGS = {
    "max_tokens": "gen_ai.request.max_tokens",
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "seed": "gen_ai.request.seed",
    "stop": "gen_ai.request.stop_sequences",
}


def provider_name(agent_type: str) -> str:
    """``gen_ai.provider.name`` for an Orchestra provider."""
    return _PROVIDERS.get(agent_type, agent_type)


def _tracer(provider: Any | None) -> Tracer | None:
    """A tracer of ``provider``, else of the application's global provider if it set one."""
    if provider is None:
        trace = sys.modules.get("opentelemetry.trace")
        if trace is None:  # never imported: nobody configured it
            return None
        provider = trace.get_tracer_provider()
        if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
            return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        ours = version("orchestra")
    except PackageNotFoundError:
        ours = None
    return provider.get_tracer(  # type: ignore[no-any-return]
        "orchestra", ours, schema_url=SCHEMA_URL
    )


@contextlib.contextmanager
def run_span(run: RunResult, task_count: int, provider: Any | None = None) -> Iterator[None]:
    """Around a run: its span is current, and its tasks are traced, until it ends.

    ``provider`` is a ``TracerProvider`` given to the executor; None: the global one.
    """
    tracer = _tracer(provider)
    if tracer is None:
        yield
        return
    from opentelemetry.trace import SpanKind, Status, StatusCode

    name = run.name or "orchestra"
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "invoke_workflow",
        "gen_ai.workflow.name": name,
        "orchestra.run.id": run.run_id,
        "orchestra.run.tasks": task_count,
    }
    token = _TRACER.set(tracer)
    try:
        with tracer.start_as_current_span(
            f"invoke_workflow {name}",
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield
            finally:
                results = list(run.results.values())
                _totals(span, results)
                status = run.status.value
                span.set_attribute("orchestra.run.status", status)
                if status != "succeeded":
                    span.set_attribute("error.type", status)
                    span.set_status(Status(StatusCode.ERROR, f"run {status}"))
    finally:
        _TRACER.reset(token)


def task_span(
    task: AgentTask, agent: AgentConfig
) -> contextlib.AbstractContextManager[Callable[[TaskResult], TaskResult]]:
    """Around a task's attempts; what it yields takes the task's final result (and returns it)."""
    tracer = _TRACER.get()
    if tracer is None:  # one shared context manager: a generator's costs 2 us a task
        return _UNTRACED
    return _task_span(tracer, task, agent)


@contextlib.contextmanager
def _task_span(
    tracer: Tracer, task: AgentTask, agent: AgentConfig
) -> Iterator[Callable[[TaskResult], TaskResult]]:
    from opentelemetry.trace import SpanKind

    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.agent.name": agent.name,
        "gen_ai.provider.name": provider_name(agent.agent_type),
        "orchestra.task.id": task.task_id,
    }
    model = _model(agent)
    if model:
        attributes["gen_ai.request.model"] = model
    name = f"invoke_agent {agent.name}"
    with _traced(tracer, name, SpanKind.INTERNAL, attributes, _task_ended) as keep:
        yield keep


def _task_ended(span: Span, result: TaskResult) -> None:
    span.set_attribute("orchestra.task.status", result.status.value)
    span.set_attribute("orchestra.task.attempts", result.attempts)
    _totals(span, [result])
    if not result.succeeded:
        _failed(span, result.metadata.get("error_type") or result.status.value)


def attempt_span(
    task: AgentTask, link: AgentConfig, request: LlmRequest, method: str
) -> contextlib.AbstractContextManager[Callable[[TaskResult], TaskResult]]:
    """Around one call of a model or script; what it yields takes its result (and returns it)."""
    tracer = _TRACER.get()
    if tracer is None:
        return _UNTRACED
    return _attempt_span(tracer, task, link, request, method)


@contextlib.contextmanager
def _attempt_span(
    tracer: Tracer, task: AgentTask, link: AgentConfig, request: LlmRequest, method: str
) -> Iterator[Callable[[TaskResult], TaskResult]]:
    from opentelemetry.trace import SpanKind

    model = request.model or _model(link)
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider_name(link.agent_type),
        "gen_ai.agent.name": link.name,
        "orchestra.task.id": task.task_id,
        "orchestra.execution_method": method,
    }
    if model:
        attributes["gen_ai.request.model"] = model
    for setting, key in _REQUEST_SETTINGS.items():
        value = getattr(request, setting)
        if value is not None:
            attributes[key] = list(value) if isinstance(value, tuple) else value
    name = f"chat {model}" if model else "chat"
    with _traced(tracer, name, SpanKind.CLIENT, attributes, _attempt_ended) as keep:
        yield keep


@contextlib.contextmanager
def _traced(
    tracer: Tracer,
    name: str,
    kind: SpanKind,
    attributes: dict[str, Any],
    ended: Callable[[Span, TaskResult], None],
) -> Iterator[Callable[[TaskResult], TaskResult]]:
    """A current span; ``ended`` describes on it the result handed to what this yields.

    An exception through it (a cancellation, a bug) marks the span failed with its type.
    """
    with tracer.start_as_current_span(
        name,
        kind=kind,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        results: list[TaskResult] = []
        try:
            yield _keeper(results)
        except BaseException as exc:
            _failed(span, _error_type(exc))
            raise
        if results:
            ended(span, results[-1])


def _attempt_ended(span: Span, result: TaskResult) -> None:
    meta = result.metadata
    usage = result.usage
    for key, value in (
        ("gen_ai.response.model", meta.get("model") if result.succeeded else None),
        ("gen_ai.usage.input_tokens", usage.input_tokens),
        ("gen_ai.usage.output_tokens", usage.output_tokens),
        ("orchestra.cost_usd", result.cost_usd),
    ):
        if value is not None:
            span.set_attribute(key, value)
    if meta.get("finish_reason"):
        span.set_attribute("gen_ai.response.finish_reasons", [str(meta["finish_reason"])])
    if not result.succeeded:
        _failed(span, meta.get("error_type") or result.status.value)


def _totals(span: Span, results: list[TaskResult]) -> None:
    """Tokens and cost of ``results`` as ``orchestra.*`` attributes (those known)."""
    for key, values in (
        ("orchestra.usage.input_tokens", [r.usage.input_tokens for r in results]),
        ("orchestra.usage.output_tokens", [r.usage.output_tokens for r in results]),
        ("orchestra.total_cost_usd", [r.cost_usd for r in results]),
    ):
        known = [value for value in values if value is not None]
        if known:
            span.set_attribute(key, sum(known))


def _model(agent: AgentConfig) -> str | None:
    from orchestration.runtime.spending import model_of

    return model_of(agent)


def _error_type(exc: BaseException) -> str:
    """``error.type`` for an exception: ``cancelled`` for cancellation, else its class."""
    import anyio

    if isinstance(exc, anyio.get_cancelled_exc_class()):
        return "cancelled"
    return type(exc).__qualname__


def _failed(span: Span, error_type: str) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("error.type", error_type)
    span.set_status(Status(StatusCode.ERROR, error_type))


def _keeper(ended: list[TaskResult]) -> Callable[[TaskResult], TaskResult]:
    def keep(result: TaskResult) -> TaskResult:
        ended.append(result)
        return result

    return keep


def _ignore(result: TaskResult) -> TaskResult:
    """What an untraced span's owner hands its result to."""
    return result


_UNTRACED = contextlib.nullcontext(_ignore)  # reusable: it holds no state
