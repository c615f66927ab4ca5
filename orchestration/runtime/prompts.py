"""Turning a task, its agent and its dependencies' outputs into an LLM request."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar

from llm_abstractions.errors import InvalidRequestError
from llm_abstractions.types import LlmRequest, Message, OutputSchema
from orchestration.model.agent_registry import AgentConfig
from orchestration.model.contracts import OutputContract, feedback
from orchestration.model.settings import SETTING_NAMES
from orchestration.model.tasks import AgentTask
from orchestration.model.tools import DEFAULT_MAX_TURNS, combined

__all__ = ["build_request", "with_feedback"]

# The settings that are request fields of the same name.
_REQUEST_SETTINGS = (
    "max_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "response_format",
    "grammar",
    "tool_choice",
)


def build_request(
    task: AgentTask,
    agent: AgentConfig,
    upstream: Mapping[str, str],
    contract: OutputContract | None = None,
) -> LlmRequest:
    """The request for one attempt of ``task`` on ``agent``.

    The user message is the task's description, followed by its ``context`` metadata and
    then the output of each dependency, labelled with its task id. ``examples`` in the
    metadata, pairs of a prompt and the answer wanted, come before it as earlier turns of
    the conversation (few-shot). The agent's settings (``agent.settings``, checked when it
    was registered) apply unless the task's metadata gives its own, setting by setting:
    the system prompt, the context, the examples and the generation settings. A typed
    ``contract`` adds its JSON schema twice: to the prompt (any model can read it) and as
    the request's ``output_schema`` (providers enforce it natively), in place of
    ``response_format``.

    Raises:
        InvalidRequestError: A setting has an invalid value.
    """
    own = {key: value for key, value in task.metadata.items() if key in SETTING_NAMES}
    if not own and not agent.tools and not task.tools:
        schema = None if contract is None else contract.json_schema()
        if schema is None:  # most tasks: the agent's request, with this task's message
            return _Template.of(agent).request(task, agent, upstream)
    return _assembled(task, agent, upstream, contract, own)


def _assembled(
    task: AgentTask,
    agent: AgentConfig,
    upstream: Mapping[str, str],
    contract: OutputContract | None,
    own: Mapping[str, Any],
) -> LlmRequest:
    """``build_request``, made and checked field by field."""
    settings: dict[str, Any] = {**agent.given_settings, **own}
    parts = _parts(task.description, settings.get("context"), upstream)
    params = {key: settings[key] for key in _REQUEST_SETTINGS if settings.get(key) is not None}
    if isinstance(params.get("stop"), str):
        params["stop"] = [params["stop"]]
    schema = None if contract is None else contract.json_schema()
    if contract is not None and schema is not None:
        shown = json.dumps(schema, separators=(",", ":"), ensure_ascii=False)
        parts.append(f"Reply with only a JSON value that matches this JSON schema:\n{shown}")
        params.pop("response_format", None)
        params["output_schema"] = OutputSchema(name=contract.schema_name, json_schema=schema)
    tools = tuple(tool.spec() for tool in combined(agent.tools, task.tools))
    metadata = _metadata(task, agent, settings.get("repo"))
    if tools:
        params["tools"] = tools
        # A budget holds every turn the loop may make (``spending.worst_case``).
        metadata["max_turns"] = task.max_turns or agent.max_turns or DEFAULT_MAX_TURNS
    return LlmRequest.build(
        [
            *_example_turns(settings.get("examples")),
            Message(role="user", content="\n\n".join(parts)),
        ],
        system=settings.get("system_prompt"),
        model=agent.model,
        metadata=metadata,
        **params,
    )


def _parts(description: str, context: object, upstream: Mapping[str, str]) -> list[str]:
    """The user message's paragraphs: the task, its context, its dependencies' outputs."""
    parts = [description]
    if context:
        parts.append(f"Context:\n{context}")
    parts += [f"Output of task {tid}:\n{output}" for tid, output in upstream.items()]
    return parts


def _metadata(task: AgentTask, agent: AgentConfig, repo: object) -> dict[str, Any]:
    metadata: dict[str, Any] = {"task_id": task.task_id, "agent": agent.name}
    if repo:  # where a coding-CLI agent works
        metadata["repo"] = repo
    if task.budget_usd is not None:  # a coding CLI is held to it (and to the run's)
        metadata["budget_usd"] = task.budget_usd
    limit = task.timeout if task.timeout is not None else agent.settings.timeout_s
    if limit is not None:  # a coding CLI stops itself just before, to say what it spent
        metadata["timeout_s"] = limit
    return metadata


class _Template:
    """An agent's request, checked once, that a task without settings of its own fills in.

    Building and checking every field of every task's request cost about 18 us a task, the
    largest part of the executor's own work; a task that changes none of the agent's
    settings (and brings no tools, no schema) changes only its message and its metadata.
    """

    __slots__ = ("agent", "base", "context", "examples", "given", "repo")
    _kept: ClassVar[dict[int, _Template]] = {}

    def __init__(self, agent: AgentConfig) -> None:
        self.agent = agent
        self.given = agent.given_settings
        settings = self.given
        self.context = settings.get("context")
        self.repo = settings.get("repo")
        # Checked here as the full path checks it: the agent's settings, its examples.
        self.base = _assembled(AgentTask(task_id="_", description="_"), agent, {}, None, {})
        self.examples = self.base.messages[:-1]

    @classmethod
    def of(cls, agent: AgentConfig) -> _Template:
        kept = cls._kept.get(id(agent))
        if kept is None or kept.agent is not agent or kept.given is not agent.given_settings:
            kept = cls(agent)
            if len(cls._kept) >= _TEMPLATES:
                cls._kept.clear()
            cls._kept[id(agent)] = kept
        return kept

    def request(
        self, task: AgentTask, agent: AgentConfig, upstream: Mapping[str, str]
    ) -> LlmRequest:
        text = "\n\n".join(_parts(task.description, self.context, upstream))
        message = Message(role="user", content=text)  # model_construct is slower
        return self.base.model_copy(
            update={
                "messages": (*self.examples, message),
                "metadata": _metadata(task, agent, self.repo),
            }
        )


_TEMPLATES = 1024  # agents (and fallback links) whose template is kept


def _example_turns(examples: object) -> list[Message]:
    """User and assistant turns from ``(prompt, answer)`` pairs.

    Raises:
        InvalidRequestError: ``examples`` is not a list of pairs of strings.
    """
    if not examples:
        return []
    turns = []
    for pair in examples if isinstance(examples, list | tuple) else [examples]:
        if not (
            isinstance(pair, list | tuple)
            and len(pair) == 2
            and all(isinstance(text, str) for text in pair)
        ):
            raise InvalidRequestError(
                f"examples must be a list of (prompt, answer) pairs of strings, not {pair!r:.80}"
            )
        turns += [Message(role="user", content=pair[0]), Message(role="assistant", content=pair[1])]
    return turns


def with_feedback(request: LlmRequest, answer: str, reason: str, typed: bool) -> LlmRequest:
    """``request``'s conversation, then the refused ``answer`` and why it was refused."""
    messages = (
        *request.messages,
        Message(role="assistant", content=answer),
        Message(role="user", content=feedback(reason, typed)),
    )
    return request.model_copy(update={"messages": messages})
