"""The agent registry's names, where users have always imported them from.

``AgentType``, ``AgentInterface``, ``AgentConfig``, ``AgentRegistry`` and ``ScriptSettings``
live in ``orchestration.model.agent_registry``.
"""

from orchestration.model.agent_registry import (
    AgentConfig,
    AgentInterface,
    AgentRegistry,
    AgentType,
    ScriptSettings,
)

__all__ = ["AgentConfig", "AgentInterface", "AgentRegistry", "AgentType", "ScriptSettings"]
