"""Units of work and what became of them."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, InstanceOf, field_validator, model_validator

from llm_abstractions.types import Usage
from orchestration.model.settings import read_settings
from orchestration.model.text import storable
from orchestration.model.tools import McpServer, Tool, ToolLike, tools_of

__all__ = ["AgentTask", "ExecutionMethod", "TaskProgress", "TaskResult", "TaskStatus"]


class TaskStatus(StrEnum):
    """Where a task is, or how it ended."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"  # a dependency did not succeed
    CANCELLED = "cancelled"
    CRASHED = "crashed"  # left running by a process that died
    BUDGET_EXCEEDED = "budget_exceeded"

    @property
    def finished(self) -> bool:
        """Whether the task will not run (again) in this run."""
        return self not in (TaskStatus.PENDING, TaskStatus.RUNNING)


class ExecutionMethod(StrEnum):
    """How an attempt was carried out."""

    LLM_FACTORY = "llm_factory"  # in-process, through the provider
    SCRIPT = "script"  # a subprocess speaking JSON on stdin/stdout
    CACHE = "cache"  # answered from the response cache


class AgentTask(BaseModel):
    """One piece of work for one agent.

    Attributes:
        task_id: Unique within a run.
        description: What to do: the prompt the agent receives.
        agent: The registered agent to run it; ``TaskExecutor.execute`` may supply it.
        depends_on: Ids of tasks whose outputs this one needs (they reach it as context).
        metadata: Free-form; ``context`` is added to the prompt, ``system_prompt``,
            ``max_tokens`` and ``temperature`` override the agent's settings.
        timeout: Seconds one attempt may take.
        budget_usd: The most this task's attempts may cost together; an attempt whose
            estimate would go over is not made (the task ends ``budget_exceeded``).
        output_type: What the answer must be: a pydantic model, a dataclass, ``list[...]``,
            ``dict[...]`` (anything ``pydantic.TypeAdapter`` takes). The provider is asked
            for JSON of its schema (natively where it can), the answer is parsed, and the
            value is ``TaskResult.value``.
        validators: Functions of the value (of the text, without ``output_type``) that
            raise ``OutputRejected("why")`` to refuse it, or return a value to use instead.
            A refused answer is asked for again with the reason, up to
            ``RetryPolicy.max_output_retries`` times; then the task fails.
        tools: Functions (or ``Tool``s) its model may call, besides its agent's.
        max_turns: The most model calls one attempt may make while it calls tools (None:
            the agent's ``max_turns``, 10 by default).

    ``output_type``, ``validators`` and ``tools`` are Python objects: the ledger keeps the
    contract's names and schema (and every tool call), not them, so a resumed run needs the
    tasks again to check its answers or call its tools.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    task_id: str = Field(min_length=1, max_length=200)
    description: str
    agent: str | None = None
    depends_on: tuple[str, ...] = ()
    metadata: dict[str, Any] = Field(default_factory=dict)
    timeout: float | None = Field(default=None, gt=0)
    budget_usd: float | None = Field(default=None, ge=0)
    output_type: Any = Field(default=None, exclude=True)
    validators: tuple[Callable[[Any], Any], ...] = Field(default=(), exclude=True)
    # Functions its model may call, besides its agent's (``model.tools``); never recorded.
    tools: Sequence[InstanceOf[Tool] | InstanceOf[McpServer] | ToolLike] = Field(
        default=(), exclude=True, repr=False
    )
    max_turns: int | None = Field(default=None, gt=0)  # None: the agent's

    @field_validator("tools", mode="before")
    @classmethod
    def _functions_become_tools(cls, given: Any) -> tuple[Tool | McpServer, ...]:
        return tools_of(given)

    @field_validator("task_id", "description")
    @classmethod
    def _encodable(cls, text: str) -> str:
        """Refuse text no ledger can store and no provider can be sent (before anything is)."""
        _, bad = storable(text)
        if bad:
            raise ValueError(
                f"holds {bad} unpaired surrogate(s) (such as '\\ud800'), which is not valid "
                "Unicode: decode its source with errors='replace', or remove them"
            )
        return text

    @model_validator(mode="after")
    def _settings(self) -> AgentTask:
        """Refuse a misspelled or invalid setting in ``metadata`` (as agents' are refused).

        Text in it that UTF-8 cannot carry is refused as in the description: a setting
        such as ``context`` or ``system_prompt`` is sent, and all of it is recorded.
        """
        if self.metadata:
            read_settings(self.task_id, self.metadata, kind="task")
            bad = sum(storable(text)[1] for text in _strings(self.metadata))
            if bad:
                raise ValueError(
                    f"task {self.task_id!r}: metadata holds {bad} unpaired surrogate(s) "
                    "(such as '\\ud800'), which is not valid Unicode: decode its source with "
                    "errors='replace', or remove them"
                )
        return self


def _strings(value: object) -> Iterator[str]:
    """Every string in ``value``, a structure of dicts, lists and tuples (keys included)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


class TaskResult(BaseModel):
    """The outcome of a task.

    ``output`` is the answer's text; ``value`` is what its task's output contract made of it
    (the parsed ``output_type``, or a validator's replacement; the text when the task has no
    contract). ``metadata`` carries ``execution_method``, ``provider`` and ``model`` of the
    attempt that produced the result, as earlier orchestrators reported them.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    task_id: str
    status: TaskStatus
    output: str | None = None
    usage: Usage = Field(default_factory=Usage)
    cost_usd: float | None = None
    latency_s: float | None = None
    attempts: int = 0
    error: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    value: Any = Field(default=None, exclude=True)

    @property
    def succeeded(self) -> bool:
        """Whether the task produced its output."""
        return self.status is TaskStatus.SUCCEEDED


@dataclass(frozen=True, slots=True)
class TaskProgress:
    """How far the answer of a task being generated has come (``run(on_progress=...)``).

    Sent as text arrives, for providers that stream (the embedded model does, in batches
    of at most 50 ms); a coding CLI reports each of its model's answers as it passes, with
    its tokens and no text (``delta`` empty); others report nothing until their answer is
    whole.

    Attributes:
        task_id: The task.
        agent: The agent (or fallback) answering it.
        provider: Its provider.
        model: Its model, as configured (None: the provider's default).
        output_tokens: Tokens generated so far in this attempt: counted by the provider
            when it can (the embedded model does), else estimated from the text.
        elapsed_s: Seconds since the attempt started (waiting for the model and the
            prompt's processing included).
        first_token_s: Seconds from the attempt's start to its first text.
        delta: The text that arrived since the last report.
    """

    task_id: str
    agent: str
    provider: str
    model: str | None
    output_tokens: int
    elapsed_s: float
    first_token_s: float
    delta: str = ""

    @property
    def tokens_per_s(self) -> float:
        """Output tokens per second since the first text arrived (0 until it can tell)."""
        writing = self.elapsed_s - self.first_token_s
        return self.output_tokens / writing if writing > 0 else 0.0
