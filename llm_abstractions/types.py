"""Request, response and usage models shared by every provider.

Token counts follow the OpenTelemetry GenAI conventions: ``input_tokens`` includes cached
tokens (reads and writes), ``output_tokens`` includes reasoning tokens. A count a provider did
not report is ``None``, never ``0``: zero is a measurement, ``None`` is the absence of one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from llm_abstractions.errors import InvalidRequestError

__all__ = [
    "FinishReason",
    "HealthStatus",
    "LlmRequest",
    "LlmResponse",
    "Message",
    "MessagesInput",
    "OutputSchema",
    "Role",
    "StreamChunk",
    "ToolCall",
    "ToolChoice",
    "ToolSpec",
    "Usage",
    "describe_validation_error",
]

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "content_filter", "tool_calls", "error"]
ToolChoice = Literal["auto", "required", "none"]
MessagesInput = str | Sequence["Message | Mapping[str, Any]"]

_TOOL_NAME = r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$"  # what every vendor accepts


class ToolSpec(BaseModel):
    """A tool as a model is told of it.

    Attributes:
        name: Letters, digits, ``_`` and ``-``, starting with a letter or ``_`` (at most 64:
            the strictest vendor's rule).
        description: What it does, for the model to decide when to call it.
        parameters: The JSON schema of its arguments: an object schema.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=_TOOL_NAME)
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})

    @model_validator(mode="after")
    def _object_schema(self) -> ToolSpec:
        if self.parameters.get("type") != "object":
            raise ValueError(f"tool {self.name!r}: parameters must be an object schema")
        return self


class ToolCall(BaseModel):
    """A model's request to call a tool.

    Attributes:
        id: The call's id, which its result names (vendors without ids get one made up).
        name: The tool.
        arguments: The arguments as the model wrote them: JSON text (vendors that send an
            object have it serialized), checked against the tool's schema before the call.
        signature: What the vendor asks to be sent back with the call, untouched (Gemini's
            thought signature, base64), when it gives one.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    name: str
    arguments: str = "{}"
    signature: str | None = Field(default=None, exclude_if=lambda value: value is None)


class Message(BaseModel):
    """One chat message.

    An assistant message may ask for tools (``tool_calls``, with or without text); each
    result comes back as a ``tool`` message naming the call it answers (``tool_call_id``,
    and the tool's ``name``, which some vendors need), ``is_error`` when the call failed.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Role
    content: str
    # Left out of the JSON when not set: a plain message dumps as {"role", "content"}.
    tool_calls: tuple[ToolCall, ...] = Field(default=(), exclude_if=lambda calls: not calls)
    tool_call_id: str | None = Field(default=None, exclude_if=lambda value: value is None)
    name: str | None = Field(default=None, exclude_if=lambda value: value is None)
    is_error: bool = Field(default=False, exclude_if=lambda value: not value)

    @model_validator(mode="after")
    def _tool_fields_where_they_belong(self) -> Message:
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages ask for tools (tool_calls)")
        if (self.role == "tool") != (self.tool_call_id is not None):
            raise ValueError("a tool message, and only a tool message, names its tool_call_id")
        return self


class OutputSchema(BaseModel):
    """A JSON schema the answer must match, sent as the provider's own structured output.

    Attributes:
        name: A label some providers require (letters, digits, ``_`` and ``-``).
        json_schema: The JSON schema (draft 2020-12, as pydantic writes it).
        strict: Ask the provider to enforce the schema exactly where it can (OpenAI's
            ``strict``); the answer is validated either way.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(default="output", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    json_schema: dict[str, Any]
    strict: bool = True


class LlmRequest(BaseModel):
    """Everything a provider needs to answer one prompt.

    ``system`` is kept apart from ``messages`` because providers disagree on where it goes
    (Anthropic takes a separate field, OpenAI a first message); a system message inside
    ``messages`` is moved here by validation so providers see one shape.

    Constrained output: ``response_format="json"`` asks for any JSON value (JSON mode);
    ``output_schema`` for JSON matching a schema (each provider's structured output, see
    ``BaseLlm.supports_output_schema``); ``grammar`` for text matching a GBNF grammar, which
    only the embedded model can follow (``BaseLlm.supports_grammar``). At most one of the
    three may be set.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    messages: tuple[Message, ...] = Field(min_length=1)
    system: str | None = None
    model: str | None = None
    max_tokens: int | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: tuple[str, ...] | None = None
    seed: int | None = None
    response_format: Literal["text", "json"] | None = None
    output_schema: OutputSchema | None = None
    grammar: str | None = Field(default=None, min_length=1)
    tools: tuple[ToolSpec, ...] = Field(default=(), exclude_if=lambda tools: not tools)
    tool_choice: ToolChoice | None = None  # None: the vendor's default ("auto")
    stream: bool = False
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_output_constraint(self) -> LlmRequest:
        asked = [
            name
            for name, value in (
                ("response_format", self.response_format not in (None, "text")),
                ("output_schema", self.output_schema is not None),
                ("grammar", self.grammar is not None),
            )
            if value
        ]
        if len(asked) > 1:
            raise ValueError(f"set at most one of {', '.join(asked)}")
        return self

    @model_validator(mode="after")
    def _lift_system_messages(self) -> LlmRequest:
        systems = [m.content for m in self.messages if m.role == "system"]
        if not systems:
            return self
        rest = tuple(m for m in self.messages if m.role != "system")
        if not rest:
            raise ValueError("messages hold only system messages; add a user message")
        merged = "\n\n".join(([self.system] if self.system else []) + systems)
        object.__setattr__(self, "messages", rest)
        object.__setattr__(self, "system", merged)
        return self

    @classmethod
    def build(cls, messages: MessagesInput, **params: Any) -> LlmRequest:
        """Build a request from a prompt string or a list of message dicts.

        Args:
            messages: A user prompt, or messages as ``{"role": ..., "content": ...}`` dicts
                or ``Message`` objects.
            **params: Any other request field (``max_tokens``, ``temperature``, ``system``...).

        Raises:
            InvalidRequestError: The messages or a parameter are not valid; the message
                names each offending field.
        """
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        try:
            return cls.model_validate({"messages": list(messages), **params})
        except ValidationError as exc:
            raise InvalidRequestError(describe_validation_error("LLM request", exc)) from None

    def prompt_text(self) -> str:
        """The whole conversation as plain text, for logs, estimates and cache keys."""
        parts = [f"system: {self.system}"] if self.system else []
        parts += [f"tool {t.name}: {t.description} {json.dumps(t.parameters)}" for t in self.tools]
        for m in self.messages:
            parts.append(f"{m.role}: {m.content}")
            parts += [f"call {c.name}: {c.arguments}" for c in m.tool_calls]
        return "\n".join(parts)


def describe_validation_error(subject: str, exc: ValidationError) -> str:
    """One line naming every invalid field, for errors users read."""
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'value'}: "
        f"{err['msg'].removeprefix('Value error, ')}"
        for err in exc.errors()
    )
    return f"Invalid {subject}: {problems}"


class Usage(BaseModel):
    """Token usage of one call, in OpenTelemetry GenAI terms (None = not reported)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None

    @property
    def total_tokens(self) -> int | None:
        """Input plus output, or None when either is unknown."""
        if self.input_tokens is None or self.output_tokens is None:
            return None
        return self.input_tokens + self.output_tokens


class LlmResponse(BaseModel):
    """A provider's complete answer to one request."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    text: str
    provider: str
    model: str
    finish_reason: FinishReason | None = None
    usage: Usage = Field(default_factory=Usage)
    latency_s: float | None = Field(default=None, ge=0.0)
    response_id: str | None = None
    # The tools the model asks for, in its order (left out of the JSON when none).
    tool_calls: tuple[ToolCall, ...] = Field(default=(), exclude_if=lambda calls: not calls)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def incomplete(self) -> bool:
        """True when the output was cut off by the token limit."""
        return self.finish_reason == "length"


class StreamChunk(BaseModel):
    """One piece of a streamed answer.

    Every chunk but the last carries a text ``delta``, and ``tokens``, how many tokens it
    holds, when the provider counts them as it goes (the embedded model does). The last one
    has ``done=True`` and the full ``response`` (the joined text, finish reason and usage),
    so a consumer that only wants the final numbers reads them from there.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    delta: str = ""
    tokens: int | None = None
    done: bool = False
    response: LlmResponse | None = None


class HealthStatus(BaseModel):
    """The outcome of a provider's health check."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ok: bool
    provider: str
    detail: str = ""
    latency_s: float | None = None
