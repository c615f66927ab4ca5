"""Tools: Python functions an agent's model may call while it works on a task.

A plain function (sync or async) with type hints and a docstring is a tool: its name is the
function's, its description the docstring's summary, its parameters' JSON schema comes from
the signature through pydantic, and each parameter's description from the docstring's
``Args:`` section (Google style). Give them to an agent or a task:
``registry.register_agent("calc", "openai-gpt", tools=[add, lookup])``.

``Tool.of(add, timeout_s=5, idempotent=True)`` sets what a bare function cannot say: how
long one call may take (60 s by default; a call that takes longer is reported to the model
as an error) and whether running it twice is harmless (see the resume rules in the README).

What the model sends is checked before the function runs: arguments that are not JSON, miss
a required parameter or have the wrong type come back to the model as an error result,
naming the problem, so it can correct itself; so does an exception the function raises.
A parameter whose type has no JSON schema (a socket, a callable) is refused when the tool
is made, naming the parameter.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Union, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model
from pydantic.errors import PydanticSchemaGenerationError, PydanticUserError
from pydantic_core import to_jsonable_python

from llm_abstractions.errors import ConfigurationError
from llm_abstractions.types import ToolSpec

__all__ = [
    "DEFAULT_MAX_TURNS",
    "CONNECTED",
    "DEFAULT_TOOL_TIMEOUT_S",
    "McpServer",
    "Tool",
    "ToolArgumentsError",
    "ToolCallRecord",
    "ToolLike",
    "combined",
    "mcp_servers",
    "replay_key",
    "tools_of",
]

DEFAULT_TOOL_TIMEOUT_S = 60.0
DEFAULT_MAX_TURNS = 10  # model calls in one attempt of a task with tools
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")


class ToolArgumentsError(ValueError):
    """The model's arguments for a tool are not what its schema asks for (said to the model)."""


@dataclass(frozen=True)
class Tool:
    """A function a model may call, with the JSON schema of its parameters.

    Build it with ``Tool.of(function)``; a bare function given as a tool is turned into one
    with the defaults.

    Attributes:
        name: What the model calls it (the function's name unless given).
        description: What it does (the docstring's text before its sections).
        function: The function, sync (run in a worker thread) or async.
        parameters: The JSON schema of its arguments (an object).
        timeout_s: Seconds one call may take; past it the model is told it timed out.
        idempotent: Whether calling it again with the same arguments is harmless.
    """

    name: str
    description: str
    function: Callable[..., Any] = field(repr=False)
    parameters: dict[str, Any] = field(repr=False)
    timeout_s: float = DEFAULT_TOOL_TIMEOUT_S
    idempotent: bool = False
    # Checks the model's arguments: a pydantic model of the function's parameters, or, for
    # a tool known only by its JSON schema (an MCP server's), a function raising on bad ones.
    _arguments: type[BaseModel] | Callable[[dict[str, Any]], None] = field(
        repr=False, compare=False, default=BaseModel
    )

    @classmethod
    def remote(
        cls,
        name: str,
        description: str,
        parameters: dict[str, Any],
        call: Callable[..., Awaitable[Any]],
        *,
        timeout_s: float = DEFAULT_TOOL_TIMEOUT_S,
        check: Callable[[dict[str, Any]], None] | None = None,
    ) -> Tool:
        """A tool known by its JSON schema, called through ``call(**arguments)`` (MCP's).

        ``check`` raises ``ToolArgumentsError`` for arguments the schema refuses (when None,
        any JSON object goes through, for the tool's own side to judge).
        """
        return cls(
            name=name,
            description=description,
            function=call,
            parameters=parameters,
            timeout_s=timeout_s,
            _arguments=check or (lambda _: None),
        )

    @classmethod
    def of(
        cls,
        function: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        timeout_s: float = DEFAULT_TOOL_TIMEOUT_S,
        idempotent: bool = False,
    ) -> Tool:
        """A tool from a function's signature and docstring.

        Raises:
            ConfigurationError: The name is not one vendors accept, a parameter has no type
                hint or a type without a JSON schema, or the function takes ``*args`` or
                ``**kwargs``.
        """
        label = str(name or getattr(function, "__name__", ""))
        if not _NAME.fullmatch(label):
            raise ConfigurationError(
                f"tool name {label!r}: use 1-64 letters, digits, '_' or '-', starting with a "
                "letter or '_' (pass name=...)"
            )
        if timeout_s <= 0:
            raise ConfigurationError(f"tool {label!r}: timeout_s must be greater than 0")
        summary, described = _docstring(inspect.getdoc(function) or "")
        arguments = _arguments_model(label, function, described)
        schema = _untitled(arguments.model_json_schema())
        return cls(
            name=label,
            description=description if description is not None else summary,
            function=function,
            parameters=schema,
            timeout_s=timeout_s,
            idempotent=idempotent,
            _arguments=arguments,
        )

    def spec(self) -> ToolSpec:
        """The tool as the model is told of it."""
        return ToolSpec(name=self.name, description=self.description, parameters=self.parameters)

    def arguments(self, text: str) -> dict[str, Any]:
        """The keyword arguments the model's JSON text gives, checked against the schema.

        Raises:
            ToolArgumentsError: Not JSON, not an object, or not what the schema asks for;
                the message says what, for the model.
        """
        try:
            given = json.loads(text or "{}")
        except ValueError as exc:
            raise ToolArgumentsError(f"the arguments are not valid JSON ({exc})") from None
        if not isinstance(given, dict):
            raise ToolArgumentsError("the arguments must be a JSON object of the parameters")
        check = self._arguments
        if not isinstance(check, type):  # a tool known by its schema: its own check
            check(given)
            return given
        model: type[BaseModel] = check
        try:
            checked = model.model_validate(given)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}"
                for e in exc.errors()
            )
            raise ToolArgumentsError(f"invalid arguments: {problems}") from None
        return {name: getattr(checked, name) for name in type(checked).model_fields}

    async def call(self, arguments: dict[str, Any]) -> str:
        """Run the function; its result as text for the model (JSON unless it is a string).

        Raises:
            Exception: Whatever the function raises.
        """
        if inspect.iscoroutinefunction(self.function):
            result = await self.function(**arguments)
        else:
            import anyio

            # Cancelled (its timeout), the caller stops waiting; the thread cannot be stopped
            # and finishes on its own, its result dropped.
            result = await anyio.to_thread.run_sync(
                lambda: self.function(**arguments), abandon_on_cancel=True
            )
        if isinstance(result, str):
            return result
        return json.dumps(to_jsonable_python(result), ensure_ascii=False)


@dataclass(frozen=True)
class ToolCallRecord:
    """One tool call as it ended: what was asked, and what came of it."""

    turn: int  # the model call (1, 2...) of its attempt that asked for it
    call_id: str
    tool: str
    arguments: str
    result: str | None  # None when it failed
    error: str | None  # what the model was told went wrong
    started_at: float  # epoch seconds
    duration_s: float
    replayed: bool = False  # its recorded result given back, the tool not run again


@dataclass(frozen=True)
class McpServer:
    """An MCP server whose tools an agent (or a task) may call.

    Build it with ``McpServer.stdio("python", "server.py")`` (a command this process starts
    and talks to over its stdin and stdout) or ``McpServer.http(url)`` (streamable HTTP).
    Each run connects to it once, lists its tools once, and closes it when the run ends;
    its tools are called through the task's tool loop and recorded like any other.

    Attributes:
        command: The server's command and arguments (stdio).
        url: The server's MCP endpoint (streamable HTTP).
        env: Environment for the command (by default, only what MCP's SDK passes on).
        cwd: Its working directory.
        prefix: Put before each tool's name (``"fs_"``), when names would clash.
        timeout_s: Seconds one call may take.
    """

    command: tuple[str, ...] = ()
    url: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    cwd: str | None = None
    prefix: str = ""
    timeout_s: float = DEFAULT_TOOL_TIMEOUT_S

    @classmethod
    def stdio(
        cls,
        command: str,
        *args: str,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        prefix: str = "",
        timeout_s: float = DEFAULT_TOOL_TIMEOUT_S,
    ) -> McpServer:
        """A server run as a subprocess, spoken to over stdio."""
        return cls(
            (command, *args), None, tuple(sorted((env or {}).items())), cwd, prefix, timeout_s
        )

    @classmethod
    def http(
        cls, url: str, *, prefix: str = "", timeout_s: float = DEFAULT_TOOL_TIMEOUT_S
    ) -> McpServer:
        """A server at ``url``, spoken to over streamable HTTP."""
        if not url.startswith(("http://", "https://")):
            raise ConfigurationError(f"MCP server URL {url!r}: give an http:// or https:// URL")
        return cls(url=url, prefix=prefix, timeout_s=timeout_s)

    @property
    def label(self) -> str:
        """How messages and the ledger name it: its URL (without credentials) or its command."""
        if self.url is None:
            return " ".join(self.command)
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(self.url)
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit((parts.scheme, host, parts.path, "", ""))


ToolLike = Union["Tool", McpServer, Callable[..., Any]]  # a Tool, an MCP server, a function

# The tools of the MCP servers the current run connected to (set by the runtime for a run).
CONNECTED: ContextVar[Mapping[McpServer, tuple[Tool, ...]] | None] = ContextVar(
    "orchestra_mcp_tools", default=None
)


def combined(*given: Sequence[ToolLike]) -> tuple[Tool, ...]:
    """The tools of an agent and a task together, MCP servers' included.

    Raises:
        ConfigurationError: An MCP server is not connected (outside a run), or two tools
            share a name.
    """
    if not any(given):  # most tasks have none
        return ()
    found: list[Tool] = []
    for tools in given:
        for item in tools:
            if isinstance(item, McpServer):
                connected = (CONNECTED.get() or {}).get(item)
                if connected is None:
                    raise ConfigurationError(
                        f"MCP server {item.label!r} is not connected: its tools are listed when "
                        "a TaskExecutor run starts"
                    )
                found += connected
            else:
                found.append(item if isinstance(item, Tool) else Tool.of(item))
    names = [tool.name for tool in found]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:  # the model could not tell them apart, and some vendors refuse the request
        raise ConfigurationError(
            f"two tools are named {', '.join(map(repr, twice))} (the agent's, the task's and "
            "its MCP servers' together); rename one (Tool.of(fn, name=...), McpServer prefix=)"
        )
    return tuple(found)


def mcp_servers(*given: Sequence[ToolLike]) -> list[McpServer]:
    """The MCP servers among tools, each once."""
    return list(
        dict.fromkeys(item for tools in given for item in tools if isinstance(item, McpServer))
    )


def replay_key(tool: str, arguments: str) -> tuple[str, str]:
    """What identifies a call across runs: the tool and its arguments, keys in order."""
    try:
        canonical = json.dumps(json.loads(arguments or "{}"), sort_keys=True)
    except ValueError:
        canonical = arguments
    return tool, canonical


def tools_of(given: Sequence[ToolLike] | None) -> tuple[Tool | McpServer, ...]:
    """Tools from tools, plain functions and MCP servers; names must be distinct.

    Raises:
        ConfigurationError: A tool cannot be made, or two share a name.
    """
    tools = tuple(
        item if isinstance(item, Tool | McpServer) else Tool.of(item) for item in given or ()
    )
    names = [tool.name for tool in tools if isinstance(tool, Tool)]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ConfigurationError(f"two tools are named {', '.join(map(repr, twice))}")
    return tools


def _arguments_model(
    label: str, function: Callable[..., Any], described: dict[str, str]
) -> type[BaseModel]:
    """A pydantic model of the function's parameters (the schema and the argument checks)."""
    try:
        signature = inspect.signature(function)
        hints = get_type_hints(function)
    except (TypeError, ValueError, NameError) as exc:
        raise ConfigurationError(f"tool {label!r}: cannot read its signature ({exc})") from None
    fields: dict[str, Any] = {}
    for name, parameter in signature.parameters.items():
        if name not in hints and parameter.kind not in (
            parameter.VAR_POSITIONAL,
            parameter.VAR_KEYWORD,
        ):
            raise ConfigurationError(
                f"tool {label!r}: parameter {name!r} has no type hint; the model needs its type"
            )
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise ConfigurationError(
                f"tool {label!r}: *{name} cannot be described to a model; name each parameter"
            )
        try:
            TypeAdapter(hints[name]).json_schema()
        except (PydanticSchemaGenerationError, PydanticUserError) as exc:
            raise ConfigurationError(
                f"tool {label!r}: parameter {name!r} is a {_type_name(hints[name])}, which has no "
                "JSON schema to tell a model; use str, int, float, bool, lists, dicts, enums, "
                "dataclasses or pydantic models"
            ) from exc
        default = ... if parameter.default is parameter.empty else parameter.default
        fields[name] = (hints[name], Field(default, description=described.get(name)))
    model: type[BaseModel] = create_model(
        f"{label}_arguments", __config__=ConfigDict(extra="forbid"), **fields
    )
    return model


def _type_name(hint: Any) -> str:
    return getattr(hint, "__qualname__", None) or repr(hint)


def _untitled(schema: Any) -> Any:
    """``schema`` without pydantic's ``title`` keywords (words the model would pay for)."""
    from llm_abstractions.providers.json_schema import rewrite_keywords

    return rewrite_keywords(
        schema,
        lambda key, value: None if key == "title" and isinstance(value, str) else (key, value),
    )


_SECTION = re.compile(r"^(Args|Arguments|Parameters|Returns|Raises|Yields|Examples?|Notes?):\s*$")
_ARGUMENT = re.compile(r"^\s+(\*{0,2}\w+)(?:\s*\([^)]*\))?:\s*(.*)$")


def _docstring(doc: str) -> tuple[str, dict[str, str]]:
    """A Google-style docstring's text before its sections, and its ``Args:`` descriptions."""
    summary: list[str] = []
    described: dict[str, str] = {}
    section: str | None = None
    current: str | None = None
    for line in doc.splitlines():
        heading = _SECTION.match(line)
        if heading:
            section, current = heading.group(1), None
            continue
        if section is None:
            summary.append(line)
        elif section in ("Args", "Arguments", "Parameters"):
            argument = _ARGUMENT.match(line)
            if argument and len(line) - len(line.lstrip()) <= 4:
                current = argument.group(1).lstrip("*")
                described[current] = argument.group(2).strip()
            elif current is not None and line.strip():
                described[current] = f"{described[current]} {line.strip()}"
    return "\n".join(summary).strip(), described
