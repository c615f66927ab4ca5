"""Orchestration: agent registry, task graph, executor, run ledger and the ``orchestra`` CLI.

The agent registry (Python and TOML), tasks and results, graph validation, the DAG
executor with its resilience policies (retries, fallback chains, rate limits, circuit
breakers, budgets, the response cache, resume), the run ledger and the history CLI (see
docs/PROJECT-PLAN.md). Public names resolve on first access, so importing this package
stays cheap; it never imports a vendor SDK.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llm_abstractions.lazy import lazy_exports

if TYPE_CHECKING:
    from orchestration.agent_registry import (
        AgentConfig,
        AgentInterface,
        AgentRegistry,
        AgentType,
        ScriptSettings,
    )
    from orchestration.errors import GraphValidationError, UnknownAgentError
    from orchestration.executor import RunResult, RunStatus, TaskExecutor
    from orchestration.graph import validate_tasks
    from orchestration.resilience import BreakerPolicy, RateLimit, RetryPolicy
    from orchestration.tasks import AgentTask, ExecutionMethod, TaskResult, TaskStatus

_LAZY = {
    "AgentConfig": "orchestration.agent_registry",
    "AgentInterface": "orchestration.agent_registry",
    "AgentRegistry": "orchestration.agent_registry",
    "AgentType": "orchestration.agent_registry",
    "ScriptSettings": "orchestration.agent_registry",
    "GraphValidationError": "orchestration.errors",
    "UnknownAgentError": "orchestration.errors",
    "validate_tasks": "orchestration.graph",
    "BreakerPolicy": "orchestration.resilience",
    "RateLimit": "orchestration.resilience",
    "RetryPolicy": "orchestration.resilience",
    "RunResult": "orchestration.executor",
    "RunStatus": "orchestration.executor",
    "TaskExecutor": "orchestration.executor",
    "AgentTask": "orchestration.tasks",
    "ExecutionMethod": "orchestration.tasks",
    "TaskResult": "orchestration.tasks",
    "TaskStatus": "orchestration.tasks",
}

__all__ = [
    "AgentConfig",
    "AgentInterface",
    "AgentRegistry",
    "AgentTask",
    "AgentType",
    "BreakerPolicy",
    "ExecutionMethod",
    "GraphValidationError",
    "RateLimit",
    "RetryPolicy",
    "RunResult",
    "RunStatus",
    "ScriptSettings",
    "TaskExecutor",
    "TaskResult",
    "TaskStatus",
    "UnknownAgentError",
    "validate_tasks",
]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
