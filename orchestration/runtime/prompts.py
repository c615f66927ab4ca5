"""Turning a task, its agent and its dependencies' outputs into an LLM request."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llm_abstractions.types import LlmRequest
from orchestration.model.agent_registry import AgentConfig
from orchestration.model.tasks import AgentTask

__all__ = ["build_request"]

# Settings a task's or an agent's metadata may carry into the request.
_REQUEST_SETTINGS = ("max_tokens", "temperature", "top_p", "seed", "stop", "response_format")


def build_request(task: AgentTask, agent: AgentConfig, upstream: Mapping[str, str]) -> LlmRequest:
    """The request for one attempt of ``task`` on ``agent``.

    The user message is the task's description, followed by its ``context`` metadata and
    then the output of each dependency, labelled with its task id. Task metadata overrides
    agent metadata for the system prompt and the generation settings.

    Raises:
        InvalidRequestError: A setting has an invalid value.
    """
    settings: dict[str, Any] = {**agent.metadata, **task.metadata}
    parts = [task.description]
    if settings.get("context"):
        parts.append(f"Context:\n{settings['context']}")
    parts += [f"Output of task {tid}:\n{output}" for tid, output in upstream.items()]
    params = {key: settings[key] for key in _REQUEST_SETTINGS if settings.get(key) is not None}
    if isinstance(params.get("stop"), str):
        params["stop"] = [params["stop"]]
    return LlmRequest.build(
        "\n\n".join(parts),
        system=settings.get("system_prompt"),
        model=agent.model,
        metadata={"task_id": task.task_id, "agent": agent.name},
        **params,
    )
