"""The specialists' workspace tools: confined to the app's directory, and the demo's flag."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from agents.todo import TodoBuild
from agents.workspace import workspace_tools
from orchestration.model.tools import Tool

ROOT = Path(__file__).resolve().parent.parent


def tools(root: Path) -> dict[str, Tool]:
    return {tool.name: tool for tool in workspace_tools(root, test_timeout_s=30)}


def call(tool: Tool, **arguments: object) -> str:
    checked = tool.arguments(json.dumps(arguments))
    return anyio.run(tool.call, checked)


def test_files_are_read_and_written_inside_the_app_only(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (tmp_path / "secret.txt").write_text("not yours")
    (app / "escape").symlink_to(tmp_path)
    found = tools(app)
    assert call(found["write_file"], path="src/main.py", content="print(1)\n") == (
        "wrote src/main.py (9 bytes)"
    )
    assert call(found["read_file"], path="src/main.py") == "print(1)\n"
    assert json.loads(call(found["list_files"])) == ["src/main.py"]
    for path, said in (
        ("../secret.txt", "escapes the output directory"),
        ("/etc/passwd", "escapes the output directory"),
        ("a b.py", "not a plain relative path"),
        ("escape/secret.txt", "resolves outside the output directory"),
    ):
        with pytest.raises(ValueError, match=said):
            call(found["read_file"], path=path)
        with pytest.raises(ValueError, match=said):
            call(found["write_file"], path=path, content="x")
    with pytest.raises(FileNotFoundError, match="list_files says what there is"):
        call(found["read_file"], path="nope.py")
    assert (tmp_path / "secret.txt").read_text() == "not yours"


def test_a_role_drafts_only_its_own_files(tmp_path: Path) -> None:
    found = {t.name: t for t in workspace_tools(tmp_path, allowed=("tests/",))}
    assert call(found["write_file"], path="tests/test_x.py", content="x") == (
        "wrote tests/test_x.py (1 bytes)"
    )
    with pytest.raises(ValueError, match="outside what this role writes"):
        call(found["write_file"], path="backend/server.py", content="x")


def test_run_tests_gives_the_suites_verdict_without_the_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-for-generated-code")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_ok.py").write_text(
        "import os\nimport unittest\n\n\nclass T(unittest.TestCase):\n"
        "    def test_one(self):\n        self.assertNotIn('OPENAI_API_KEY', os.environ)\n"
        "    def test_two(self):\n        self.assertEqual(2 * 2, 5)\n"
    )
    verdict, _, log = call(tools(tmp_path)["run_tests"]).partition("\n\n")
    assert json.loads(verdict) == {
        "ran": 2,
        "passed": 1,
        "failed": 1,
        "errors": 0,
        "verdict": "failed",
    }
    assert "AssertionError: 4 != 5" in log


def test_the_build_gives_its_specialists_the_tools_only_when_asked(tmp_path: Path) -> None:
    with_tools = TodoBuild(output_dir=tmp_path / "a", tools=True).registry()
    without = TodoBuild(output_dir=tmp_path / "b").registry()
    names = [tool.name for tool in with_tools.get("backend").tools if isinstance(tool, Tool)]
    assert names == ["list_files", "read_file", "write_file", "run_tests"]
    assert without.get("backend").tools == ()


def test_the_demo_with_tools_on_the_embedded_model_says_why_not(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "demos" / "todo_app.py"), "--tools", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "ORCHESTRA_HOME": str(tmp_path)},
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode != 0
    said = done.stdout + done.stderr
    assert "--tools: architect, backend" in said and "tool calls cannot go with" in said, said
    assert "Traceback" not in said and not (tmp_path / "models").exists()  # nothing pulled
