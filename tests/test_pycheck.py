"""Static checks of generated tests against the module they test (``agents.pycheck``)."""

from __future__ import annotations

from agents.pycheck import module_names, unknown_uses

BACKEND = """
import json, os.path
from http.server import HTTPServer as Server
DATA_FILE = os.environ.get("TODO_FILE", "todos.json")
a, (b, c) = 1, (2, 3)
counter: int = 0
try:
    import fast
except ImportError:
    fast = None
if DATA_FILE:
    LIMIT = 10
def add_todo(text):
    global LAST
    LAST = text
class Handler:
    def do_GET(self):
        local_only = 1
"""


def test_module_names_are_what_the_module_defines_at_its_top_level() -> None:
    assert module_names(BACKEND) == {
        "json",
        "os",
        "Server",
        "DATA_FILE",
        "a",
        "b",
        "c",
        "counter",
        "fast",
        "LIMIT",
        "add_todo",
        "LAST",
        "Handler",
    }
    assert module_names("from os import *\n") is None  # cannot be told
    assert module_names("def broken(:\n") is None


def test_uses_of_names_the_module_lacks_are_reported_at_their_first_line() -> None:
    tests = """
import unittest
import server
import server as s
from server import add_todo, complete_todo

class T(unittest.TestCase):
    def setUp(self):
        server.TODO_FILE = "x.json"
        s.DATA_FILE = "y.json"
    def test(self):
        server.add_todo("a")
        server.TODO_FILE
        print(server.__file__, other.TODO_FILE)
"""
    assert unknown_uses(tests, "server", BACKEND) == [
        "line 5: server.complete_todo",
        "line 9: server.TODO_FILE (use server.DATA_FILE)",
    ]
    assert unknown_uses("import server\nserver.zzz\n", "server", BACKEND) == ["line 2: server.zzz"]
    assert unknown_uses("import server\nserver.add_todo()\n", "server", BACKEND) == []
    assert unknown_uses("server.nothing\n", "server", BACKEND) == []  # never imported
    assert unknown_uses("import server\nserver.x\n", "server", "from os import *\n") == []
