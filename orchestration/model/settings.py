"""An agent's generation settings: typed, and checked when the agent is registered.

The settings live where users have always put them, in the agent's ``metadata``
(``{"max_tokens": 4096, "temperature": 0.7, "system_prompt": "..."}``), and can be given as
keyword arguments of ``AgentRegistry.register_agent`` as well. ``read_settings`` picks them
out of the metadata as a ``GenerationSettings`` and refuses, with a one-line message naming
the agent and the setting:

- a value of the wrong type or out of range (``max_tokens=0``, ``temperature=5``);
- a key close to a setting's name (``max_token``, ``temprature``, ``system_promt``): such a
  typo used to run silently on the provider's defaults.

Every other key stays the user's own metadata, untouched. The metadata itself is kept as
given, so an agent recorded in a run ledger loads back and dumps to the same JSON.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypedDict

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError, field_validator
from pydantic_core import ErrorDetails

from llm_abstractions.errors import ConfigurationError

__all__ = [
    "SETTING_NAMES",
    "GenerationSettings",
    "SettingsArguments",
    "close_setting",
    "read_settings",
]


class GenerationSettings(BaseModel):
    """How an agent's requests are made: the settings its metadata carries.

    A task's own metadata overrides these, setting by setting, for that task.

    Attributes:
        system_prompt: The system prompt of every request.
        max_tokens: The most tokens an answer may have.
        temperature: Sampling temperature, 0 to 2.
        top_p: Nucleus sampling, more than 0 and at most 1.
        seed: Sampling seed, for providers that take one.
        stop: A stop sequence, or several.
        timeout_s: Seconds one attempt through the agent's provider may take, unless the
            task sets its own ``timeout``.
        response_format: ``"json"`` for JSON mode, ``"text"`` for plain text.
        grammar: A GBNF grammar the answer must follow (the embedded model only).
        context: Text added to every prompt after the task's description.
        examples: ``(prompt, answer)`` pairs shown before the prompt (few-shot).
        tool_choice: With tools: ``"auto"`` (the model decides), ``"required"`` (its first
            turn must call a tool; later turns decide, or the loop would never end),
            ``"none"`` (no calls).
        repo: For coding-CLI agents (``claude-code``...): the directory each task works on,
            in a git worktree of its own (a git repository) or a copy (any other
            directory); a new empty directory when unset.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Strict: "8" is no max_tokens, nor True a temperature (a float takes an int, though).
    system_prompt: str | None = Field(default=None, strict=True)
    max_tokens: int | None = Field(default=None, gt=0, strict=True)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, strict=True)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, strict=True)
    seed: int | None = Field(default=None, strict=True)
    stop: tuple[StrictStr, ...] | None = None
    timeout_s: float | None = Field(default=None, gt=0.0, strict=True)
    response_format: Literal["text", "json"] | None = None
    grammar: str | None = Field(default=None, min_length=1, strict=True)
    context: str | None = Field(default=None, strict=True)
    examples: tuple[tuple[StrictStr, StrictStr], ...] | None = None
    tool_choice: Literal["auto", "required", "none"] | None = None
    repo: str | None = Field(default=None, min_length=1, strict=True)

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop_is_a_list_of_one(cls, value: object) -> object:
        if isinstance(value, str):
            return (value,)
        if isinstance(value, list | tuple):
            return tuple(value)
        if value is not None:
            raise ValueError("must be a string or a list of strings")
        return value

    @field_validator("examples", mode="before")
    @classmethod
    def _pairs_of_strings(cls, value: object) -> object:
        pairs = value if isinstance(value, list | tuple) else [value]
        if value is not None and not all(
            isinstance(pair, list | tuple) and len(pair) == 2 for pair in pairs
        ):
            raise ValueError("must be a list of (prompt, answer) pairs of strings")
        return value

    def given(self) -> dict[str, Any]:
        """The settings that are set, by name."""
        return self.model_dump(exclude_none=True)


class SettingsArguments(TypedDict, total=False):
    """The generation settings as keyword arguments of ``register_agent``."""

    system_prompt: str | None
    max_tokens: int | None
    temperature: float | None
    top_p: float | None
    seed: int | None
    stop: str | Sequence[str] | None
    timeout_s: float | None
    response_format: Literal["text", "json"] | None
    grammar: str | None
    context: str | None
    examples: Sequence[tuple[str, str]] | None
    tool_choice: Literal["auto", "required", "none"] | None
    repo: str | None


SETTING_NAMES: frozenset[str] = frozenset(GenerationSettings.model_fields)

# Closer than this to a setting's name is a misspelling of it: 0.85 sees "max_token",
# "maxtokens", "temprature", "system_promt", "timeout", "seeds", "topp" (0.88-0.96), and
# leaves users' own words alone: "step" (0.75 to "stop"), "top_k" (0.8 to "top_p"),
# "context_id" (0.82), "response_type" (0.71), "steps", "topic".
_CUTOFF = 0.85
# Names other libraries give a setting, too far from ours for difflib to see.
_ALIASES = {
    "temp": "temperature",
    "stop_sequences": "stop",
    "system": "system_prompt",
    "max_completion_tokens": "max_tokens",
    "max_output_tokens": "max_tokens",
    "max_new_tokens": "max_tokens",
}

_FREE_KEYS = "other keys are kept as your own metadata only if they are not close to a setting"


def close_setting(key: str) -> str | None:
    """The setting ``key`` looks like a misspelling of, if any (None for a setting itself)."""
    if key in SETTING_NAMES:
        return None
    folded = key.lower().replace("-", "_")
    if folded in _ALIASES:
        return _ALIASES[folded]
    close = difflib.get_close_matches(folded, SETTING_NAMES, n=1, cutoff=_CUTOFF)
    return close[0] if close else None


def read_settings(
    agent: str, metadata: Mapping[str, Any], *, kind: str = "agent"
) -> GenerationSettings:
    """The generation settings in an agent's (or, with ``kind="task"``, a task's) ``metadata``.

    Raises:
        ConfigurationError: A key is close to a setting's name but is not it, or a setting
            has a value of the wrong type or out of range; the message names the agent
            (or task).
    """
    for key in metadata:
        meant = close_setting(key) if isinstance(key, str) else None
        if meant is not None:
            raise ConfigurationError(
                f"{kind} {agent!r}: unknown setting {key!r} in metadata; did you mean "
                f"{meant!r}? ({_FREE_KEYS})"
            )
    given = {key: value for key, value in metadata.items() if key in SETTING_NAMES}
    try:
        return GenerationSettings.model_validate(given)
    except ValidationError as exc:
        problems = "; ".join(_problem(error) for error in exc.errors())
        raise ConfigurationError(f"{kind} {agent!r}: {problems}") from None


def _problem(error: ErrorDetails) -> str:
    """One invalid value, as "setting 'top_p' must be ..., not 5"."""
    name, *inner = error["loc"]
    where = f" (item {'.'.join(str(part) for part in inner)})" if inner else ""
    message = error["msg"]
    if message.startswith("Value error, "):  # our own validators' words
        message = message.removeprefix("Value error, ")
    else:  # "Input should be ...", "String should have ..."
        message = re.sub(r"^\w+ should ", "must ", message)
    return f"setting {name!r}{where} {message}, not {error['input']!r:.80}"
