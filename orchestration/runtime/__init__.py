"""How a run executes.

The executor, its DAG scheduler, each task's fallback chain and attempts, the resilience
policies, prompts, subprocesses and resume.

Imports ``model`` and ``ledger`` (and ``orchestration.logs``), never ``cli``.
"""
