"""Orchestration: agent registry, task DAG executor, run ledger and the ``orchestra`` CLI.

Only the CLI ships so far; ``AgentRegistry``, ``AgentTask`` and ``TaskExecutor`` land with
the orchestration-core issue. This package uses ``llm_abstractions`` through its interface
and never imports a vendor SDK.
"""

__all__: list[str] = []
