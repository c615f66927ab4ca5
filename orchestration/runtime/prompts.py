"""Turning a task, its agent and its dependencies' outputs into an LLM request."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

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
    settings: dict[str, Any] = {**agent.given_settings, **own}
    parts = [task.description]
    if settings.get("context"):
        parts.append(f"Context:\n{settings['context']}")
    parts += [f"Output of task {tid}:\n{output}" for tid, output in upstream.items()]
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
    metadata: dict[str, Any] = {"task_id": task.task_id, "agent": agent.name}
    if settings.get("repo"):  # where a coding-CLI agent works
        metadata["repo"] = settings["repo"]
    if task.budget_usd is not None:  # a coding CLI is held to it (and to the run's)
        metadata["budget_usd"] = task.budget_usd
    limit = task.timeout if task.timeout is not None else agent.settings.timeout_s
    if limit is not None:  # a coding CLI stops itself just before, to say what it spent
        metadata["timeout_s"] = limit
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
