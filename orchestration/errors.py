"""Errors of the orchestration layer: the user's mistakes in agents and task graphs.

Both are ``ConfigurationError``s (so ``ValueError``s): they are raised before anything runs
or is spent, and retrying cannot fix them.
"""

from __future__ import annotations

from llm_abstractions.errors import ConfigurationError

__all__ = ["GraphValidationError", "UnknownAgentError"]


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
