"""A worked example for every role: the files of a small Notes app, written as they should be.

Small models follow an example far better than a description. Each role gets one exchange
as an earlier turn of its conversation (few-shot): the prompt it would get for the Notes
app, with the files its dependencies would have written, and the answer wanted. Shown in
the system prompt instead, the 1.5B coder model copied the Notes backend for the Todo app;
as an earlier request and answer, it writes the app it is asked for, in the same shape: the
spec's storage functions, a backend that keeps them importable without starting the
server, tests that give each test a fresh data file. The example's own tests pass against
its backend (``tests/test_agents.py`` runs them), so no model is shown code that fails.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["EXAMPLE_REQUEST", "FILES", "UPSTREAM", "example_answer", "example_prompt"]

EXAMPLE_REQUEST = "a notes app: add, list, pin and delete notes, kept across restarts"

SPEC = """\
# Notes app

## Features
- Add a note, list the notes, pin a note, delete a note.
- Notes are kept in a JSON file, so they survive a restart.

## Data model
Note: id (int, given by the server, starting at 1), text (str), pinned (bool, false at first).

## Storage functions (in backend/server.py)
- list_notes() -> list of all notes
- add_note(text) -> the new note
- pin_note(note_id) -> the pinned note, or None when there is no such note
- delete_note(note_id) -> True when it was deleted, False when there was no such note

## HTTP API (JSON, port 8000)
- GET /api/notes -> 200, the list of notes
- POST /api/notes with {"text": "..."} -> 201, the new note
- POST /api/notes/<id>/pin -> 200, the note; 404 when there is none
- DELETE /api/notes/<id> -> 204; 404 when there is none
- GET / -> the page, frontend/index.html
"""

BACKEND = '''\
"""Notes: storage functions and an HTTP server, standard library only."""

import json
import os
from http.server import BaseHTTPRequestHandler, HTTPServer

DATA_FILE = os.environ.get("NOTES_FILE", "notes.json")
PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "frontend", "index.html")


def load():
    if not os.path.exists(DATA_FILE):
        return []
    with open(DATA_FILE) as f:
        return json.load(f)


def save(notes):
    with open(DATA_FILE, "w") as f:
        json.dump(notes, f)


def list_notes():
    return load()


def add_note(text):
    notes = load()
    note = {"id": max([n["id"] for n in notes], default=0) + 1, "text": text, "pinned": False}
    notes.append(note)
    save(notes)
    return note


def pin_note(note_id):
    notes = load()
    for note in notes:
        if note["id"] == note_id:
            note["pinned"] = True
            save(notes)
            return note
    return None


def delete_note(note_id):
    notes = load()
    kept = [n for n in notes if n["id"] != note_id]
    save(kept)
    return len(kept) < len(notes)


class Handler(BaseHTTPRequestHandler):
    def reply(self, status, body=None, kind="application/json"):
        if body is not None and not isinstance(body, bytes):
            body = json.dumps(body).encode()
        data = body or b""
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/api/notes":
            self.reply(200, list_notes())
        elif self.path == "/":
            with open(PAGE, "rb") as f:
                self.reply(200, f.read(), "text/html")
        else:
            self.reply(404, {"error": "not found"})

    def do_POST(self):
        parts = self.path.strip("/").split("/")
        if parts == ["api", "notes"]:
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length) or b"{}")
            self.reply(201, add_note(body.get("text", "")))
        elif len(parts) == 4 and parts[2].isdigit() and parts[3] == "pin":
            note = pin_note(int(parts[2]))
            self.reply(200 if note else 404, note or {"error": "no such note"})
        else:
            self.reply(404, {"error": "not found"})

    def do_DELETE(self):
        parts = self.path.strip("/").split("/")
        if len(parts) == 3 and parts[2].isdigit() and delete_note(int(parts[2])):
            self.reply(204)
        else:
            self.reply(404, {"error": "no such note"})


if __name__ == "__main__":
    HTTPServer(("0.0.0.0", 8000), Handler).serve_forever()
'''

FRONTEND = """\
<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
<title>Notes</title>
<style>
body { font-family: sans-serif; max-width: 32rem; margin: 2rem auto; }
li.pinned { font-weight: bold; }
</style>
</head>
<body>
<h1>Notes</h1>
<form id="add"><input id="text" placeholder="New note" required> <button>Add</button></form>
<ul id="notes"></ul>
<script>
async function load() {
  const notes = await (await fetch("/api/notes")).json();
  const list = document.getElementById("notes");
  list.innerHTML = "";
  for (const note of notes) {
    const item = document.createElement("li");
    item.textContent = note.text + " ";
    if (note.pinned) item.className = "pinned";
    const pin = document.createElement("button");
    pin.textContent = "Pin";
    pin.onclick = async () => {
      await fetch("/api/notes/" + note.id + "/pin", {method: "POST"});
      load();
    };
    const remove = document.createElement("button");
    remove.textContent = "Delete";
    remove.onclick = async () => {
      await fetch("/api/notes/" + note.id, {method: "DELETE"});
      load();
    };
    item.append(pin, remove);
    list.append(item);
  }
}
document.getElementById("add").onsubmit = async (event) => {
  event.preventDefault();
  const text = document.getElementById("text");
  await fetch("/api/notes", {method: "POST", headers: {"Content-Type": "application/json"},
                             body: JSON.stringify({text: text.value})});
  text.value = "";
  load();
};
load();
</script>
</body>
</html>
"""

TESTS = """\
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "backend"))
import server  # noqa: E402


class NotesTest(unittest.TestCase):
    def setUp(self):
        # Every test starts from an empty data file of its own.
        self.folder = tempfile.TemporaryDirectory()
        server.DATA_FILE = os.path.join(self.folder.name, "notes.json")

    def tearDown(self):
        self.folder.cleanup()

    def test_starts_empty(self):
        self.assertEqual(server.list_notes(), [])

    def test_add_note(self):
        note = server.add_note("buy milk")
        self.assertEqual(note["text"], "buy milk")
        self.assertFalse(note["pinned"])
        self.assertEqual(server.list_notes(), [note])

    def test_pin_note(self):
        note = server.add_note("call mom")
        self.assertTrue(server.pin_note(note["id"])["pinned"])
        self.assertTrue(server.list_notes()[0]["pinned"])
        self.assertIsNone(server.pin_note(999))

    def test_delete_note(self):
        note = server.add_note("old")
        self.assertTrue(server.delete_note(note["id"]))
        self.assertEqual(server.list_notes(), [])
        self.assertFalse(server.delete_note(note["id"]))


if __name__ == "__main__":
    unittest.main()
"""

RUN_SH = """\
#!/bin/sh
# Starts the app on http://localhost:8000
cd "$(dirname "$0")"
exec python3 backend/server.py
"""

DOCKERFILE = """\
FROM python:3.12-slim
WORKDIR /app
COPY . .
EXPOSE 8000
CMD ["python", "backend/server.py"]
"""

README = """\
# Notes

A small notes app: add, list, pin and delete notes, kept in notes.json.

## Run

    ./run.sh

then open http://localhost:8000. With Docker:

    docker build -t notes .
    docker run -p 8000:8000 notes

## Test

    python3 -m unittest discover -s tests
"""

FILES: dict[str, tuple[str, str]] = {
    "docs/SPEC.md": ("markdown", SPEC),
    "backend/server.py": ("python", BACKEND),
    "frontend/index.html": ("html", FRONTEND),
    "tests/test_backend.py": ("python", TESTS),
    "run.sh": ("sh", RUN_SH),
    "Dockerfile": ("dockerfile", DOCKERFILE),
    "README.md": ("markdown", README),
}
"""The example app's files: path -> (fence language, content)."""


UPSTREAM: dict[str, dict[str, tuple[str, ...]]] = {
    "architect": {},
    "backend": {"architect": ("docs/SPEC.md",)},
    "frontend": {"architect": ("docs/SPEC.md",)},
    "qa": {"backend": ("backend/server.py",)},
    "devops": {},  # its format is the lesson: the app's files would only cost prompt time
}
"""Per role: the example files its example prompt carries, by the task that wrote them."""


def example_prompt(role: str, description: str) -> str:
    """The prompt ``role`` would get for the example app, laid out as the executor does."""
    parts = [description]
    parts += [
        f"Output of task {task}:\n{example_answer(paths)}"
        for task, paths in UPSTREAM.get(role, {}).items()
    ]
    return "\n\n".join(parts)


def example_answer(paths: Iterable[str]) -> str:
    """The example's answer for a role writing ``paths``, under the file contract."""
    blocks = []
    for path in paths:
        language, content = FILES[path]
        blocks.append(f"FILE: {path}\n```{language}\n{content}```")
    return "\n\n".join(blocks)
