"""MCP servers' tools for a run, through the official ``mcp`` SDK (``orchestra[mcp]``).

A run connects once to each MCP server its agents and tasks name (``McpServer.stdio`` starts
the command and speaks over its stdin and stdout; ``McpServer.http`` speaks streamable HTTP),
lists its tools once, and closes the connection when the run ends. Each listed tool becomes a
``Tool`` whose call is the server's ``tools/call``: the model's arguments are checked against
the tool's input schema first (a refusal is told to the model, as for any tool), a result the
server marks as an error is an error result, and its text (or its structured content, as
JSON, when it has no content) is what the model reads. The tools join the task's tool loop
and are recorded as any tool call is.

A server that cannot be started or reached fails the run before any task runs, saying which
server and why.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any

from llm_abstractions.errors import ConfigurationError
from orchestration.model.tools import CONNECTED, McpServer, Tool, ToolArgumentsError

if TYPE_CHECKING:
    from mcp import Client

__all__ = ["McpToolError", "connected"]

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


class McpToolError(Exception):
    """An MCP tool answered with an error (``isError``): the model reads its text."""


@asynccontextmanager
async def connected(servers: Sequence[McpServer]) -> AsyncIterator[None]:
    """Connect to ``servers`` and list their tools for what runs inside (``combined`` sees them).

    Raises:
        ConfigurationError: The ``mcp`` SDK is not installed, or a server could not be started,
            reached or listed.
    """
    if not servers:
        yield
        return
    try:
        from mcp import Client
    except ImportError:
        raise ConfigurationError(
            "tools from MCP servers need the mcp SDK: pip install 'orchestra[mcp]'"
        ) from None
    async with AsyncExitStack() as stack:
        found: dict[McpServer, tuple[Tool, ...]] = {}
        for server in servers:
            try:
                client = await stack.enter_async_context(
                    Client(_target(server), read_timeout_seconds=server.timeout_s)
                )
                found[server] = await _tools(client, server)
            except ConfigurationError:
                raise
            except Exception as exc:  # the SDK's and the transport's failures alike
                raise ConfigurationError(
                    f"MCP server {server.label!r} could not be used: {_reason(exc)}"
                ) from None
        token = CONNECTED.set({**(CONNECTED.get() or {}), **found})
        try:
            yield
        finally:
            CONNECTED.reset(token)


def _target(server: McpServer) -> Any:
    """What ``mcp.Client`` connects to: a URL, or the parameters of a command to start."""
    if server.url is not None:
        return server.url
    from mcp import StdioServerParameters

    command, *args = server.command
    return StdioServerParameters(
        command=command, args=args, env=dict(server.env) or None, cwd=server.cwd
    )


async def _tools(client: Client, server: McpServer) -> tuple[Tool, ...]:
    """Every tool the server lists (all pages), as ``Tool``s calling it through ``client``."""
    listed = []
    cursor: str | None = None
    while True:
        page = await client.list_tools(cursor=cursor)
        listed += page.tools
        cursor = page.next_cursor
        if not cursor:
            break
    return tuple(_tool(client, server, found) for found in listed)


def _tool(client: Client, server: McpServer, listed: Any) -> Tool:
    remote_name = str(listed.name)
    name = _UNSAFE.sub("_", f"{server.prefix}{remote_name}")[:64]
    schema = dict(listed.input_schema or {"type": "object"})
    schema.setdefault("type", "object")

    async def call(**arguments: Any) -> str:
        result = await client.call_tool(
            remote_name, arguments, read_timeout_seconds=server.timeout_s
        )
        text = _text(result)
        if result.is_error:
            raise McpToolError(text)
        return text

    return Tool.remote(
        name,
        listed.description or "",
        schema,
        call,
        timeout_s=server.timeout_s,
        check=_schema_check(schema),
    )


def _schema_check(schema: dict[str, Any]) -> Any:
    """A check of arguments against a JSON schema (jsonschema comes with the mcp SDK)."""
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(schema)

    def check(arguments: dict[str, Any]) -> None:
        problems = [
            f"{'.'.join(str(p) for p in error.absolute_path) or 'arguments'}: {error.message}"
            for error in validator.iter_errors(arguments)
        ]
        if problems:
            raise ToolArgumentsError(f"invalid arguments: {'; '.join(problems)}")

    return check


def _text(result: Any) -> str:
    """What the model reads of a ``tools/call`` result: its content, as MCP means it for a model.

    Text items are joined; other items (images, resources) are named, not inlined; a result
    with no content but structured content gives that, as JSON.
    """
    parts = []
    for item in result.content or ():
        kind = getattr(item, "type", "")
        parts.append(item.text if kind == "text" else f"[{kind} content]")
    if not parts and result.structured_content is not None:
        return json.dumps(result.structured_content, ensure_ascii=False)
    return "\n".join(parts)


def _reason(exc: BaseException) -> str:
    """One line of why: the innermost of an exception group, its type and message."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}".splitlines()[0]
