"""An MCP server for tests, on the ``mcp`` SDK's own server API (``MCPServer``).

``python -m tests.support.mcp_server stdio`` serves over stdin and stdout;
``python -m tests.support.mcp_server http PORT`` serves streamable HTTP on
``http://127.0.0.1:PORT/mcp``. With ``ORCHESTRA_TEST_MCP_LOG`` set, the server appends a line
to that file when it starts and one per tool call, for tests to count.
"""

from __future__ import annotations

import json
import os
import sys

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("orchestra-test")
LOG = os.environ.get("ORCHESTRA_TEST_MCP_LOG")


def log(event: dict[str, object]) -> None:
    if LOG:
        with open(LOG, "a", encoding="utf-8") as sink:
            sink.write(json.dumps(event) + "\n")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    log({"call": "add", "a": a, "b": b})
    return a + b


@server.tool()
def lookup(word: str) -> str:
    """Look a word up in the dictionary."""
    log({"call": "lookup", "word": word})
    if word == "orchestra":
        return "a group of musicians"
    raise ToolError(f"no entry for {word!r}")


if __name__ == "__main__":
    log({"started": sys.argv[1]})
    if sys.argv[1] == "stdio":
        server.run()
    else:
        server.run(transport="streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
