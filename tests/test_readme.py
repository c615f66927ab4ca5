"""Every code block of the README runs as written.

Each ``python`` block is saved alone as a file and run in a fresh interpreter: a block that
leans on names from another one fails here. The ``orchestra`` commands of the ``sh``
blocks are run too, ``RUN`` standing for a run the first block made (saved as the
``my_pipeline.py`` the README names). Cloud providers are the loopback fakes of Anthropic and
OpenAI, with test keys; the embedded model is the real one. Commands that fetch gigabytes
(``models pull``) or run the whole demo (``make``) are left to their own tests.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.anthropic_api import anthropic_app
from tests.fakes.openai_api import openai_app
from tests.fakes.server import LoopbackServer
from tests.support.clis import npm_cli

pytestmark = pytest.mark.model  # the blocks run the embedded model

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
NOT_RUN_HERE = ("models pull",)  # 1.1 GB from the package registry


def blocks(language: str) -> list[str]:
    return [body for kind, body in BLOCK.findall(README.read_text()) if kind == language]


PYTHON_BLOCKS = blocks("python")


@pytest.fixture(scope="module")
def env() -> Iterator[dict[str, str]]:
    anthropic, openai = LoopbackServer(anthropic_app), LoopbackServer(openai_app)
    claude = npm_cli("@anthropic-ai/claude-code", "claude")  # the coding-agent block's CLI
    yield {
        "PATH": f"{claude}{os.pathsep}{os.environ['PATH']}",
        "ANTHROPIC_API_KEY": "sk-ant-readme-test",
        "ANTHROPIC_BASE_URL": anthropic.url,
        "OPENAI_API_KEY": "sk-readme-test",
        "OPENAI_BASE_URL": f"{openai.url}/v1",
        "ORCHESTRA_LOCAL_THREADS": "1",
    }
    anthropic.close()
    openai.close()


def run(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )


def test_the_readme_has_the_blocks_this_test_runs() -> None:
    assert len(PYTHON_BLOCKS) >= 6
    assert "registry = AgentRegistry()" in PYTHON_BLOCKS[0]


@pytest.mark.parametrize(
    "code", PYTHON_BLOCKS, ids=[f"python-{n}" for n in range(1, len(PYTHON_BLOCKS) + 1)]
)
def test_a_python_block_runs_alone(code: str, env: dict[str, str], tmp_path: Path) -> None:
    script = tmp_path / "block.py"
    script.write_text(code)
    done = run([sys.executable, str(script)], env, tmp_path)
    assert done.returncode == 0, f"{code}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr


def orchestra_commands() -> list[str]:
    lines = [line for body in blocks("sh") for line in body.splitlines()]
    commands = [line.split("#")[0].strip() for line in lines]
    return [
        command
        for command in commands
        if command.startswith(".venv/bin/orchestra ")
        and not any(skipped in command for skipped in NOT_RUN_HERE)
    ]


def test_the_orchestra_commands_of_the_readme_run(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "my_pipeline.py").write_text(PYTHON_BLOCKS[0])
    orchestra = [sys.executable, "-m", "orchestration.cli"]
    made = run([*orchestra, "run", "my_pipeline.py", "--json"], env, tmp_path)
    assert made.returncode == 0, made.stderr
    run_id = re.search(r'"run_id": "(\w+)"', made.stdout)
    assert run_id is not None
    commands = orchestra_commands()
    assert any(command.startswith(".venv/bin/orchestra ask ") for command in commands)
    for command in commands:
        words = shlex.split(command.replace(" RUN", f" {run_id.group(1)}"))
        done = run([*orchestra, *words[1:]], env, tmp_path)
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
