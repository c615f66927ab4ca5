"""A loopback server speaking just enough of OpenAI's chat completions for the bundled script."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ANSWER = "from loopback"


class ChatServer(BaseHTTPRequestHandler):
    """Answers every chat completion with ``ANSWER``; ``seen`` keeps each request.

    The first ``unavailable`` requests get a 503 instead: the in-process provider then
    gives up as "cannot serve" and the executor falls back to the bundled script.
    """

    seen: list[dict[str, Any]] = []
    unavailable = 0

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        ChatServer.seen.append({"path": self.path, "auth": self.headers["Authorization"], **body})
        if ChatServer.unavailable > 0:
            ChatServer.unavailable -= 1
            self._send(503, {"error": {"message": "overloaded, try later", "type": "server"}})
            return
        answer = {
            "id": "chatcmpl-1",
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": ANSWER},
                }
            ],
            "usage": {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13},
        }
        self._send(200, answer)

    def _send(self, status: int, answer: dict[str, Any]) -> None:
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def chat_server(unavailable: int = 0) -> Iterator[str]:
    """Serve ``ChatServer`` on a free loopback port; yields its ``/v1`` base URL."""
    ChatServer.seen = []
    ChatServer.unavailable = unavailable
    server = ThreadingHTTPServer(("127.0.0.1", 0), ChatServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
