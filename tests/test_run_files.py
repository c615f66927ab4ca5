"""``orchestra run FILE.py`` imports the file: its code runs once, its ``__main__`` block never.

The CLI tests run ``orchestra`` in its own process, from a working directory other than the run
file's (so that only the loader can put the file's directory on ``sys.path``). The providers
are the package's test doubles: registered by the run file itself, or, for the README's
example (which names real providers), by a launcher put in front of the CLI.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from llm_abstractions.errors import ConfigurationError
from orchestration.cli.runfile import load_run_file

ROOT = Path(__file__).resolve().parent.parent

# Registry and tasks on a test double the file registers itself.
DOUBLE_DAG = """
from llm_abstractions import LlmFactory
from llm_abstractions.testing import FunctionLlm
from orchestration import AgentRegistry, AgentTask

LlmFactory.register_provider("double", lambda **_: FunctionLlm(lambda r: "ok"), replace=True)
registry = AgentRegistry()
registry.register_agent("echo", "double")
tasks = [
    AgentTask(task_id="first", description="one", agent="echo"),
    AgentTask(task_id="second", description="two", agent="echo", depends_on=("first",)),
]
"""

# Runs the CLI with `local` and `anthropic-claude` replaced by a double that logs each call:
# python -c LAUNCHER CALLS_LOG orchestra-arguments... (or `script FILE`: run it as python does).
LAUNCHER = """
import runpy, sys
from pathlib import Path
from llm_abstractions import LlmFactory
from llm_abstractions.testing import FunctionLlm

log = Path(sys.argv.pop(1))

def answer(request):
    with log.open("a") as calls:
        calls.write(request.messages[-1].content.splitlines()[0] + "\\n")
    return "ok"

for name, keys in (("local", ()), ("anthropic-claude", ("ANTHROPIC_API_KEY",))):
    LlmFactory.register_provider(
        name, lambda **_: FunctionLlm(answer), env_keys=keys, replace=True
    )
if sys.argv[1] == "script":
    runpy.run_path(sys.argv[2], run_name="__main__")
else:
    from orchestration.cli.main import main
    sys.argv[0] = "orchestra"
    main()
"""


def orchestra(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``orchestra ARGS`` in its own process, run from ``cwd``."""
    return subprocess.run(
        [sys.executable, "-m", "orchestration.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "120"},
        timeout=120,
        check=False,
    )


def launched(cwd: Path, log: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``LAUNCHER`` with ``args``: the README's providers are doubles logging to ``log``."""
    return subprocess.run(
        [sys.executable, "-c", LAUNCHER, str(log), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        # The writer names its key's variable; the double never sends it anywhere.
        env={**os.environ, "COLUMNS": "120", "ANTHROPIC_API_KEY": "sk-ant-test-double"},
        timeout=120,
        check=False,
    )


def recorded_runs() -> list[tuple[str, str]]:
    """(name, status) of every run in this test's ledger."""
    database = os.environ["ORCHESTRA_DB_URL"].removeprefix("sqlite:///")
    with closing(sqlite3.connect(database)) as db:
        return db.execute("SELECT name, status FROM runs ORDER BY started_at").fetchall()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The run files' directory; the commands run from its parent."""
    folder = tmp_path / "project"
    folder.mkdir()
    return folder


def test_module_level_code_runs_once(project: Path) -> None:
    counter = project / "counter.txt"
    counter.write_text("0")
    (project / "pipeline.py").write_text(
        "from pathlib import Path\n"
        f"counter = Path({str(counter)!r})\n"
        "counter.write_text(str(int(counter.read_text()) + 1))\n" + DOUBLE_DAG
    )
    done = orchestra(project.parent, "run", "project/pipeline.py", "--json")
    assert done.returncode == 0, done.stdout[-1500:] + done.stderr
    assert json.loads(done.stdout)["status"] == "succeeded"
    assert counter.read_text() == "1"
    assert recorded_runs() == [("pipeline", "succeeded")]


def test_the_main_block_does_not_run(project: Path) -> None:
    marker = project / "marker.txt"
    (project / "pipeline.py").write_text(
        DOUBLE_DAG + "\n\nif __name__ == '__main__':\n"
        "    from pathlib import Path\n"
        f"    Path({str(marker)!r}).write_text('ran')\n"
        "    raise SystemExit('the __main__ block ran')\n"
    )
    done = orchestra(project.parent, "run", "project/pipeline.py", "--json")
    assert done.returncode == 0, done.stdout[-1500:] + done.stderr
    assert json.loads(done.stdout)["status"] == "succeeded"
    assert not marker.exists()


def test_a_run_file_imports_a_module_beside_it(project: Path) -> None:
    (project / "helpers.py").write_text("DESCRIPTION = 'from the helper'\n")
    (project / "pipeline.py").write_text(
        "import helpers\n"
        + DOUBLE_DAG
        + "tasks.append(AgentTask(task_id='third', description=helpers.DESCRIPTION,"
        " agent='echo'))\n"
    )
    done = orchestra(project.parent, "run", "project/pipeline.py", "--json")
    assert done.returncode == 0, done.stdout[-1500:] + done.stderr
    assert set(json.loads(done.stdout)["results"]) == {"first", "second", "third"}


def test_a_run_file_without_registry_or_tasks_says_what_it_must_define(project: Path) -> None:
    (project / "main_only.py").write_text(
        "from orchestration import AgentRegistry\n\ndef main():\n    registry = AgentRegistry()\n"
    )
    done = orchestra(project.parent, "run", "project/main_only.py")
    assert done.returncode == 2
    message = " ".join(done.stderr.split())
    assert "must define `registry = AgentRegistry()` at module level" in message
    assert "it has no `registry`" in message
    assert "`tasks` (a list of AgentTask)" in message
    assert '`if __name__ == "__main__":` block does not run' in message


def test_loading_twice_leaves_one_path_entry(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setitem(sys.modules, "__orchestra_run__", None)  # restored after the test
    (project / "pipeline.py").write_text(DOUBLE_DAG)
    for _ in range(2):
        _, tasks = load_run_file(project / "pipeline.py")
        assert [task.task_id for task in tasks] == ["first", "second"]
    assert sys.path.count(str(project.resolve())) == 1
    assert sys.path[0] == str(project.resolve())


def test_a_file_not_named_py_is_refused(project: Path) -> None:
    (project / "pipeline.txt").write_text(DOUBLE_DAG)
    with pytest.raises(ConfigurationError, match=r"not a Python file: name it FILE\.py"):
        load_run_file(project / "pipeline.txt")


def readme_python_blocks() -> list[str]:
    """Every ```python block of the README."""
    text = (ROOT / "README.md").read_text()
    return [str(block) for block in re.findall(r"```python\n(.*?)```", text, re.DOTALL)]


def readme_run_example() -> str:
    """The README's run-file example (`my_pipeline.py`): its first Python block."""
    first = readme_python_blocks()[0]
    assert re.search(r"^registry = ", first, re.M) and re.search(r"^tasks = ", first, re.M)
    return first


def test_every_readme_anyio_run_is_under_a_main_guard() -> None:
    blocks = readme_python_blocks()
    calls = [line for block in blocks for line in block.splitlines() if "anyio.run(" in line]
    assert calls and all(line.startswith("    anyio.run(") for line in calls), calls
    assert all(
        'if __name__ == "__main__":\n    anyio.run(' in block
        for block in blocks
        if "anyio.run(" in block
    )


def test_the_readme_run_example_runs_once_through_orchestra_run(project: Path) -> None:
    (project / "my_pipeline.py").write_text(readme_run_example())
    calls = project / "calls.log"
    done = launched(project.parent, calls, "run", "project/my_pipeline.py", "--json")
    assert done.returncode == 0, done.stdout[-1500:] + done.stderr
    assert len(calls.read_text().splitlines()) == 2  # one call a task, not two runs' worth
    assert recorded_runs() == [("my_pipeline", "succeeded")]
    body = json.loads(done.stdout)  # nothing but the CLI's JSON on stdout
    assert body["status"] == "succeeded"
    assert set(body["results"]) == {"outline", "readme"}


def test_the_readme_run_example_still_runs_as_a_script(project: Path) -> None:
    (project / "my_pipeline.py").write_text(readme_run_example())
    calls = project / "calls.log"
    done = launched(project.parent, calls, "script", "project/my_pipeline.py")
    assert done.returncode == 0, done.stdout[-1500:] + done.stderr
    assert "outline" in done.stdout and "readme" in done.stdout
    assert len(calls.read_text().splitlines()) == 2
    assert recorded_runs() == [("todo", "succeeded")]
