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
    from orchestration.model.agent_registry import (
        AgentConfig,
        AgentInterface,
        AgentRegistry,
        AgentType,
        GenerationSettings,
        ScriptSettings,
    )
    from orchestration.model.contracts import OutputRejected
    from orchestration.model.errors import GraphValidationError, UnknownAgentError
    from orchestration.model.graph import validate_tasks
    from orchestration.model.tasks import (
        AgentTask,
        ExecutionMethod,
        TaskProgress,
        TaskResult,
        TaskStatus,
    )
    from orchestration.model.tools import McpServer, Tool
    from orchestration.runtime.executor import TaskExecutor
    from orchestration.runtime.resilience import BreakerPolicy, RateLimit, RetryPolicy
    from orchestration.runtime.results import RunResult, RunStatus

_LAZY = {
    "AgentConfig": "orchestration.model.agent_registry",
    "AgentInterface": "orchestration.model.agent_registry",
    "AgentRegistry": "orchestration.model.agent_registry",
    "AgentType": "orchestration.model.agent_registry",
    "ScriptSettings": "orchestration.model.agent_registry",
    "GenerationSettings": "orchestration.model.agent_registry",
    "GraphValidationError": "orchestration.model.errors",
    "OutputRejected": "orchestration.model.contracts",
    "McpServer": "orchestration.model.tools",
    "Tool": "orchestration.model.tools",
    "UnknownAgentError": "orchestration.model.errors",
    "validate_tasks": "orchestration.model.graph",
    "BreakerPolicy": "orchestration.runtime.resilience",
    "RateLimit": "orchestration.runtime.resilience",
    "RetryPolicy": "orchestration.runtime.resilience",
    "RunResult": "orchestration.runtime.results",
    "RunStatus": "orchestration.runtime.results",
    "TaskExecutor": "orchestration.runtime.executor",
    "AgentTask": "orchestration.model.tasks",
    "ExecutionMethod": "orchestration.model.tasks",
    "TaskProgress": "orchestration.model.tasks",
    "TaskResult": "orchestration.model.tasks",
    "TaskStatus": "orchestration.model.tasks",
}

__all__ = [
    "AgentConfig",
    "AgentInterface",
    "AgentRegistry",
    "AgentTask",
    "AgentType",
    "BreakerPolicy",
    "ExecutionMethod",
    "GenerationSettings",
    "GraphValidationError",
    "McpServer",
    "OutputRejected",
    "RateLimit",
    "RetryPolicy",
    "RunResult",
    "RunStatus",
    "ScriptSettings",
    "TaskExecutor",
    "TaskProgress",
    "TaskResult",
    "TaskStatus",
    "Tool",
    "UnknownAgentError",
    "validate_tasks",
]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
