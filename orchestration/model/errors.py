"""Errors of the orchestration layer.

``UnknownAgentError`` and ``GraphValidationError`` are the user's mistakes: both are
``ConfigurationError``s (so ``ValueError``s), raised before anything runs or is spent.
``LedgerError`` means runs cannot be recorded, so none are started.
"""

from __future__ import annotations

from llm_abstractions.errors import ConfigurationError, LLMError, OrchestraError

__all__ = ["GraphValidationError", "LedgerError", "UnknownAgentError", "WorkerLostError"]


class UnknownAgentError(ConfigurationError, LookupError):
    """No agent is registered under the requested name."""

    def __init__(self, name: str, known: list[str], suggestions: list[str]) -> None:
        self.name = name
        self.known = known
        self.suggestions = suggestions
        hint = f" Did you mean {' or '.join(repr(s) for s in suggestions)}?" if suggestions else ""
        listed = ", ".join(known) if known else "none yet"
        super().__init__(
            f"Unknown agent {name!r}.{hint} Registered agents: {listed}. "
            "Add it with AgentRegistry.register_agent()."
        )

    def __str__(self) -> str:
        return str(self.args[0])


class GraphValidationError(ConfigurationError):
    """A task graph is not runnable; ``problems`` lists every reason, with the task ids."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"The task graph cannot run ({len(problems)} problem(s)):\n{lines}")


class LedgerError(OrchestraError):
    """The run ledger cannot be written (locked beyond the timeout, disk full, read-only...).

    Not a configuration error: the run stops because it could not record what it spends.
    """


class WorkerLostError(LLMError):
    """The cluster worker making an attempt died (its process, or its node) mid-attempt.

    The attempt is recorded ``crashed`` (its call may or may not have been paid for) and the
    task is tried again under its retry policy.
    """

    retryable = True
