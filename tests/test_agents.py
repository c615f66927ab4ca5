from __future__ import annotations

import json
import os
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from agents import (
    ARCHITECT,
    BACKEND,
    DEVOPS,
    REPAIR,
    SPECIALISTS,
    ContractError,
    TodoBuild,
    parse_files,
    qa_verdict,
    route,
    route_team,
    write_files,
)
from llm_abstractions import ConfigurationError, LlmFactory, LlmRequest, Usage
from llm_abstractions.testing import FunctionLlm
from llm_abstractions.types import LlmResponse, ToolCall
from orchestration import OutputRejected, TaskExecutor, TaskProgress, TaskResult, TaskStatus
from tests.support.demo import load_demo

GOOD = """Here is the spec.

FILE: docs/SPEC.md
````markdown
# Todo
```json
{"id": 1}
```
````

FILE: docs/api.md
```
GET /todos
```
"""


def test_well_formed_answer_gives_every_file() -> None:
    parsed = parse_files(GOOD, ("docs/",))
    assert parsed.files == {
        "docs/SPEC.md": '# Todo\n```json\n{"id": 1}\n```\n',
        "docs/api.md": "GET /todos\n",
    }
    assert parsed.problems == []


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("../evil.py", "escapes"),
        ("docs/../../evil.py", "escapes"),
        ("/etc/passwd", "escapes"),
        ("~/x", "plain relative path"),
        ("docs\\x.py", "plain relative path"),
        ("backend/x.py", "outside what this role writes"),
    ],
)
def test_unsafe_or_foreign_paths_are_refused(path: str, reason: str) -> None:
    text = f"FILE: {path}\n```\nx\n```\nFILE: docs/ok.md\n```\nok\n```\n"
    parsed = parse_files(text, ("docs/",))
    assert parsed.files == {"docs/ok.md": "ok\n"}
    assert len(parsed.problems) == 1 and reason in parsed.problems[0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("just some prose, no files", "no usable file"),
        ("```python\nprint(1)\n```", "no usable file"),
        ("FILE: docs/a.md\nno fence here", "no fenced block"),
        ("FILE: docs/a.md\n```\nnever closed\n", "never closed"),
        ("FILE: ../../a.md\n```\nx\n```", "escapes"),
    ],
)
def test_unusable_answers_are_refused_whole(text: str, message: str) -> None:
    with pytest.raises(ContractError, match=message):
        parse_files(text, ("docs/",))


def test_a_duplicate_path_keeps_the_first() -> None:
    parsed = parse_files("FILE: docs/a\n```\n1\n```\nFILE: docs/a\n```\n2\n```\n", ("docs/",))
    assert parsed.files == {"docs/a": "1\n"} and "twice" in parsed.problems[0]


def test_writing_never_leaves_the_output_directory(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "docs").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, out / "docs" / "link")
    with pytest.raises(ContractError, match="outside the output directory"):
        write_files({"docs/ok.md": "ok", "docs/link/evil.md": "x"}, out)
    assert list(outside.iterdir()) == []
    assert not (out / "docs" / "ok.md").exists()  # all or nothing
    with pytest.raises(ContractError, match="escapes"):
        write_files({"../evil": "x"}, out)
    assert write_files({"docs/ok.md": "ok"}, out) == [(out / "docs" / "ok.md").resolve()]


def test_routing_without_keys_runs_everything_locally() -> None:
    choices = route_team(SPECIALISTS, env={})
    assert {c.provider for c in choices.values()} == {"local"}


def test_routing_sends_design_to_the_strongest_and_short_work_to_the_cheapest() -> None:
    env = {"ANTHROPIC_API_KEY": "k", "OPENAI_API_KEY": "k"}
    assert route("strong", env=env).model == "claude-sonnet-4-6"
    cheap = route("cheap", env=env)
    assert (cheap.provider, cheap.model) == ("openai-gpt", "gpt-4.1-mini")
    assert route("cheap", env={"ANTHROPIC_API_KEY": "k"}).model == "claude-haiku-4-5"


def test_role_overrides_from_environment_beat_the_file(tmp_path: Path) -> None:
    roles = tmp_path / "roles.toml"
    roles.write_text(
        '[roles.backend]\nprovider = "openai-gpt"\nmodel = "gpt-4.1"\n'
        '[roles.qa]\nprovider = "ollama"\n'
    )
    env = {"ORCHESTRA_ROLE_QA": "lmstudio:qwen"}
    choices = route_team(SPECIALISTS, config=roles, env=env)
    assert (choices["backend"].provider, choices["backend"].model) == ("openai-gpt", "gpt-4.1")
    assert (choices["qa"].provider, choices["qa"].model) == ("lmstudio", "qwen")
    roles.write_text('[roles.tester]\nprovider = "local"\n')
    with pytest.raises(ConfigurationError, match="unknown roles"):
        route_team(SPECIALISTS, config=roles, env={})
    roles.write_text("[roles.qa]\nmodel = 'x'\n")
    with pytest.raises(ConfigurationError, match="needs provider"):
        route_team(SPECIALISTS, config=roles, env={})


def test_the_todo_dag_has_the_promised_shape(tmp_path: Path) -> None:
    deps = {t.task_id: set(t.depends_on) for t in TodoBuild(output_dir=tmp_path).tasks()}
    assert deps == {
        "architect": set(),
        "backend": {"architect"},
        "frontend": {"architect"},
        "qa-tests": {"backend"},
        "qa-run": {"qa-tests"},
        "devops": {"backend", "frontend"},
    }


SERVER = """FILE: backend/server.py
```python
TODOS = []


def add(title):
    TODOS.append({"title": title, "done": False})
    return len(TODOS) - 1


def complete(index):
    TODOS[index]["done"] = {done}
```
"""
TESTS = """FILE: tests/test_backend.py
```python
import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "backend"))
import server


class TodoTest(unittest.TestCase):
    def test_add(self):
        self.assertEqual(server.TODOS[server.add("a")]["title"], "a")

    def test_complete(self):
        index = server.add("b")
        server.complete(index)
        self.assertTrue(server.TODOS[index]["done"])
```
"""


def scripted_team(done_value: str, repaired: str = "None") -> dict[str, str]:
    answers = {
        role.name: "".join(f"FILE: {path}\n```\n{role.name}\n```\n" for path in role.paths)
        for role in SPECIALISTS
    }
    answers["backend"] = SERVER.replace("{done}", done_value)
    answers["qa"] = TESTS
    answers["repair"] = SERVER.replace("{done}", repaired) + TESTS
    return answers


SCRIPTED = {f"ORCHESTRA_ROLE_{r.name.upper()}": "scripted-team" for r in (*SPECIALISTS, REPAIR)}


@pytest.mark.anyio
@pytest.mark.parametrize(("done_value", "verdict"), [("True", "passed"), ("None", "failed")])
async def test_qa_verdict_comes_from_really_running_the_generated_tests(
    tmp_path: Path, done_value: str, verdict: str
) -> None:
    answers = scripted_team(done_value)

    def answer(request: LlmRequest) -> str:
        return answers[str(request.metadata["agent"])]

    LlmFactory.register_provider("scripted-team", lambda **_: FunctionLlm(answer), replace=True)
    build = TodoBuild(output_dir=tmp_path / "app", test_timeout_s=60)
    build.choices = route_team(
        SPECIALISTS, env={f"ORCHESTRA_ROLE_{r.name.upper()}": "scripted-team" for r in SPECIALISTS}
    )
    executor = TaskExecutor(registry=build.registry(), max_concurrency=4)
    try:
        run = await executor.run(build.tasks(), on_task_done=build.on_task_done)
    finally:
        await executor.aclose()
    assert run.ok
    assert (tmp_path / "app" / "backend" / "server.py").is_file()
    assert build.files["qa-tests"].written == ["tests/test_backend.py"]
    outcome = qa_verdict(run.results["qa-run"])
    assert outcome["verdict"] == verdict, outcome["log"]
    assert outcome["ran"] == 2
    assert outcome["failed"] == (0 if verdict == "passed" else 1)
    assert run.results["qa-run"].metadata["execution_method"] == "script"


@pytest.mark.anyio
async def test_a_broken_answer_is_asked_again_then_fails_and_writes_nothing(
    tmp_path: Path,
) -> None:
    asked: list[LlmRequest] = []

    def answer(request: LlmRequest) -> str:
        asked.append(request)
        return "FILE: ../../escape.md\n```\nx\n```\nFILE: docs/SPEC.md\n```\nnever closed"

    LlmFactory.register_provider("broken-team", lambda **_: FunctionLlm(answer), replace=True)
    build = TodoBuild(output_dir=tmp_path / "app")
    build.choices = route_team(
        SPECIALISTS, env={f"ORCHESTRA_ROLE_{r.name.upper()}": "broken-team" for r in SPECIALISTS}
    )
    executor = TaskExecutor(registry=build.registry(), max_concurrency=4)
    try:
        run = await executor.run(build.tasks(), on_task_done=build.on_task_done)
    finally:
        await executor.aclose()
    architect = run.results["architect"]
    assert architect.status is TaskStatus.FAILED and architect.attempts == 3
    assert architect.error is not None
    assert "docs/SPEC.md: its code fence is never closed" in architect.error
    assert "docs/SPEC.md: its code fence is never closed" in asked[1].messages[-1].content
    assert "never closed" in build.files["architect"].problems[0]
    assert {r.status for tid, r in run.results.items() if tid != "architect"} == {
        TaskStatus.SKIPPED
    }
    assert qa_verdict(run.results["qa-run"])["verdict"] == "no verdict"
    assert not (tmp_path / "escape.md").exists()
    assert not any((tmp_path / "app").rglob("*.md"))


def test_a_specialist_refuses_files_out_of_its_place_and_python_that_does_not_compile() -> None:
    answer = (
        "FILE: backend/server.py\n```python\ndef broken(:\n    pass\n```\n"
        "FILE: frontend/index.html\n```html\n<p>not mine</p>\n```\n"
    )
    with pytest.raises(OutputRejected) as info:
        BACKEND.check(answer)
    assert str(info.value).splitlines()[1:] == [
        "- frontend/index.html: outside what this role writes (backend/)",
        "- backend/server.py: line 1: invalid syntax",
    ]
    with pytest.raises(OutputRejected, match=r"- README.md: missing: give every file"):
        DEVOPS.check("FILE: run.sh\n```\npython x\n```\nFILE: Dockerfile\n```\nFROM x\n```\n")
    good = BACKEND.check("FILE: backend/server.py\n```python\nprint('ok')\n```\n")
    assert good.files == {"backend/server.py": "print('ok')\n"}
    assert BACKEND.task("Build it.").validators == (BACKEND.check,)


def test_a_specialist_task_carries_its_role() -> None:
    task = BACKEND.task("Build it.", depends_on=("architect",))
    assert task.agent == "backend" and task.depends_on == ("architect",)
    assert "FILE: backend/server.py" in task.description
    assert "`backend/`" in task.metadata["system_prompt"]
    assert ARCHITECT.tier == "strong"


def test_a_path_that_clashes_with_another_file_or_names_a_directory_is_refused() -> None:
    text = (
        "FILE: backend/a\n```\n1\n```\nFILE: backend/a/b.py\n```\n2\n```\n"
        "FILE: backend/\n```\n3\n```\n"
    )
    parsed = parse_files(text, ("backend/",))
    assert parsed.files == {"backend/a": "1\n"}
    assert "backend/a is already a file" in parsed.problems[0]
    assert "names a directory" in parsed.problems[1]


def test_a_write_the_file_system_refuses_is_reported(tmp_path: Path) -> None:
    (tmp_path / "backend").write_text("a file where a directory must go")
    with pytest.raises(ContractError, match="cannot be written"):
        write_files({"backend/server.py": "x"}, tmp_path)


def test_the_verdict_counts_skipped_tests_apart() -> None:
    from scripts.run_tests import verdict

    ok_log = "..s\n----\nRan 3 tests in 0.001s\n\nOK (skipped=1)\n"
    assert verdict(ok_log, 0) == {
        "ran": 3,
        "passed": 2,
        "failed": 0,
        "errors": 0,
        "verdict": "passed",
    }
    assert verdict("\nRan 0 tests in 0.000s\n\nNO TESTS RAN\n", 5)["verdict"] == "no tests"
    failed = verdict("Ran 2 tests in 0.1s\n\nFAILED (failures=1, errors=1)\n", 1)
    assert (failed["failed"], failed["errors"], failed["verdict"]) == (1, 1, "failed")
    assert verdict("SyntaxError: invalid syntax\n", 1)["errors"] == 1


def test_on_the_embedded_model_a_grammar_holds_each_role_to_its_files(tmp_path: Path) -> None:
    build = TodoBuild(output_dir=tmp_path / "app")
    build.choices = route_team(SPECIALISTS, env={"ORCHESTRA_ROLE_QA": "openai-gpt:gpt-4.1"})
    registry = build.registry()
    devops = registry.get("devops").metadata["grammar"]
    assert 'root ::= file0 "\\n" "\\n"? file1 "\\n" "\\n"? file2 "\\n"?' in devops
    assert '"FILE: run.sh\\n```"' in devops and '"FILE: README.md\\n```"' in devops
    assert "grammar" not in registry.get("qa").metadata  # a cloud model gets the prompt only


@pytest.mark.parametrize(
    ("done_value", "repaired", "code", "rounds"),
    [("True", "None", 0, 0), ("None", "True", 0, 1), ("None", "None", 1, 2)],
)
def test_the_demo_exits_0_only_when_the_built_apps_tests_pass(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    done_value: str,
    repaired: str,
    code: int,
    rounds: int,
) -> None:
    answers = scripted_team(done_value, repaired)

    def answer(request: LlmRequest) -> str:
        return answers[str(request.metadata["agent"])]

    LlmFactory.register_provider("scripted-team", lambda **_: FunctionLlm(answer), replace=True)
    for name, value in SCRIPTED.items():
        monkeypatch.setenv(name, value)
    assert load_demo().main(["--out", str(tmp_path / "app")]) == code
    shown = capsys.readouterr().out
    assert shown.count("repair round") == rounds
    assert ("repair-1 " in shown) == (rounds > 0)
    assert "pulling" not in shown  # no role on the embedded model: nothing to pull


@pytest.mark.anyio
async def test_a_repair_round_is_two_more_tasks_of_the_same_run(tmp_path: Path) -> None:
    from orchestration.ledger import Ledger

    answers = scripted_team("None", repaired="True")
    asked: dict[str, LlmRequest] = {}

    def answer(request: LlmRequest) -> str:
        asked[str(request.metadata["task_id"])] = request
        return answers[str(request.metadata["agent"])]

    LlmFactory.register_provider("scripted-team", lambda **_: FunctionLlm(answer), replace=True)
    build = TodoBuild(
        output_dir=tmp_path / "app", choices=route_team((*SPECIALISTS, REPAIR), env=SCRIPTED)
    )
    executor = TaskExecutor(registry=build.registry(), max_concurrency=4)
    try:
        run = await executor.run(build.tasks(), on_task_done=build.on_task_done)
        assert build.verdict(run)["verdict"] == "failed" and build.needs_repair(run)
        run = await executor.extend(
            run.run_id, build.repair_tasks(), on_task_done=build.on_task_done
        )
    finally:
        await executor.aclose()
    assert run.ok and build.verdict(run)["verdict"] == "passed"
    assert not build.needs_repair(run)
    assert build.test_runs == ["qa-run", "qa-run-2"]
    # The repair saw the spec, the code, the tests and the failing log.
    prompt = asked["repair-1"].messages[-1].content
    for source in ("architect", "backend", "qa-tests", "qa-run"):
        assert f"Output of task {source}:" in prompt
    assert "FAILED (failures=1)" in prompt and '"verdict": "failed"' in prompt
    assert build.files["repair-1"].written == ["backend/server.py", "tests/test_backend.py"]
    ledger = Ledger(os.environ["ORCHESTRA_DB_URL"])
    with ledger.session() as session:
        from sqlalchemy import text

        tasks = (
            session.execute(
                text("SELECT task_id FROM run_tasks WHERE run_id = :id ORDER BY position"),
                {"id": run.run_id},
            )
            .scalars()
            .all()
        )
        status, count = session.execute(
            text("SELECT status, task_count FROM runs WHERE id = :id"), {"id": run.run_id}
        ).one()
    ledger.close()
    assert tasks[-2:] == ["repair-1", "qa-run-2"] and count == len(tasks) == 8
    assert status == "succeeded"


def test_the_test_runners_answer_must_be_a_verdict() -> None:
    from agents.todo import _is_verdict

    answer = _is_verdict('{"verdict": "passed", "ran": 2}\n\nRan 2 tests\n\nOK\n')
    assert answer["ran"] == 2 and answer["log"] == "Ran 2 tests\n\nOK"
    with pytest.raises(OutputRejected, match="does not start with a JSON line"):
        _is_verdict("Ran 2 tests")
    with pytest.raises(OutputRejected, match="no verdict"):
        _is_verdict('{"ran": 2}')


def test_every_role_is_shown_a_worked_example_that_meets_its_own_contract() -> None:
    from agents.examples import FILES

    for role in (*SPECIALISTS, REPAIR):
        task = role.task("Implement it.", example_request="Design notes.")
        if not role.example:
            assert "examples" not in task.metadata
            continue
        ((prompt, answer),) = task.metadata["examples"]
        assert role.check(answer).files == {path: FILES[path][1] for path in role.paths}
        assert prompt.startswith("Design notes.")  # the example's request, not the real one
        assert f"Start your answer with the line `FILE: {role.first_file}`." in prompt
    backend = BACKEND.task("Implement the backend of this spec.").metadata["examples"][0][0]
    assert "Output of task architect:\nFILE: docs/SPEC.md\n```markdown\n# Notes app" in backend


def test_the_worked_examples_tests_pass_against_its_backend(tmp_path: Path) -> None:
    import subprocess
    import sys

    from agents.examples import FILES

    write_files({path: content for path, (_, content) in FILES.items()}, tmp_path)
    done = subprocess.run(  # noqa: S603 - our interpreter, fixed arguments
        [sys.executable, "-B", "-m", "unittest", "discover", "-s", "tests"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Ran 4 tests" in done.stderr


def test_the_demo_board_shows_running_tasks_and_what_each_one_ended_with() -> None:
    import io

    from rich.console import Console
    from rich.live import Live

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    board = load_demo().Board(console)
    report = TaskProgress("backend", "backend", "local", None, 300, 40.0, 10.0, "x")
    with Live(console=console, transient=True) as live:
        board.live = live
        board.progress(report)
        assert "backend" in str(board._table().columns[0]._cells)
        assert "300 tokens, 10.0 tok/s, 40 s" in str(board._table().columns[2]._cells)
        board.done(
            TaskResult(
                task_id="backend",
                status=TaskStatus.SUCCEEDED,
                attempts=2,
                latency_s=41.2,
                usage=Usage(output_tokens=310),
            )
        )
        assert board.running == {}
    assert "backend    succeeded 310 tokens in 41 s, 2 attempts" in out.getvalue()


def test_in_a_pipe_the_board_prints_a_line_per_task_now_and_then() -> None:
    import io

    from rich.console import Console

    demo = load_demo()
    reports = [
        TaskProgress("qa-tests", "qa", "local", None, 12, 3.0, 1.0, "x"),
        TaskProgress("qa-tests", "qa", "local", None, 24, 4.0, 1.0, "y"),
    ]
    out = io.StringIO()
    board = demo.Board(Console(file=out, width=100), every_s=0.0)
    for report in reports:
        board.progress(report)
    assert out.getvalue().splitlines() == [
        "  qa-tests   ... 12 tokens, 6.0 tok/s, 3 s",
        "  qa-tests   ... 24 tokens, 8.0 tok/s, 4 s",
    ]
    quiet = io.StringIO()
    board = demo.Board(Console(file=quiet, width=100), every_s=3600.0)
    for report in reports:
        board.progress(report)
    assert quiet.getvalue() == ""  # not a line before a task has run that long


@pytest.mark.anyio
async def test_tests_that_use_names_the_backend_lacks_are_refused_with_the_names_it_has(
    tmp_path: Path,
) -> None:
    answers = scripted_team("True")
    wrong = TESTS.replace("server.TODOS[index]", "server.TODO_LIST[index]")
    asked: list[LlmRequest] = []

    def answer(request: LlmRequest) -> str:
        if request.metadata["task_id"] == "qa-tests":
            asked.append(request)
            return wrong if len(asked) == 1 else answers["qa"]
        return answers[str(request.metadata["agent"])]

    LlmFactory.register_provider("scripted-team", lambda **_: FunctionLlm(answer), replace=True)
    build = TodoBuild(output_dir=tmp_path / "app", choices=route_team(SPECIALISTS, env=SCRIPTED))
    executor = TaskExecutor(registry=build.registry(), max_concurrency=4)
    try:
        run = await executor.run(build.tasks(), on_task_done=build.on_task_done)
    finally:
        await executor.aclose()
    assert run.ok and build.verdict(run)["verdict"] == "passed"
    assert len(asked) == 2
    reason = asked[1].messages[-1].content
    assert "tests/test_backend.py uses names that backend/server.py does not define" in reason
    assert "line 16: server.TODO_LIST" in reason and "It defines: TODOS, add, complete" in reason
    assert run.results["qa-tests"].attempts == 2


def test_a_repair_whose_tests_use_names_its_backend_lacks_is_refused() -> None:
    from agents.todo import _tests_fit_their_backend

    server = SERVER.replace("{done}", "True")
    _tests_fit_their_backend(REPAIR.check(server + TESTS))
    bad = REPAIR.check(server + TESTS.replace("server.add(", "server.ad("))
    wanted = r"line 14: server\.ad \(use server\.add\)\. It defines: TODOS, add, "
    with pytest.raises(OutputRejected, match=wanted):
        _tests_fit_their_backend(bad)


def test_the_tests_run_on_a_copy_of_the_app_and_their_log_names_its_files(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    from agents.todo import RUN_TESTS_SCRIPT

    app = tmp_path / "app"
    (app / "tests").mkdir(parents=True)
    (app / "tests" / "test_leak.py").write_text(
        "import unittest\n\n\nclass T(unittest.TestCase):\n    def test_writes(self):\n"
        "        with open('data.json', 'a') as f:\n            f.write('x')\n"
        "        with open('data.json') as f:\n            self.assertEqual(f.read(), 'x')\n"
    )

    def run_tests() -> str:
        done = subprocess.run(  # noqa: S603 - our interpreter and script
            [sys.executable, "-I", str(RUN_TESTS_SCRIPT)],
            input=json.dumps({"timeout_s": 60}),
            cwd=app,
            capture_output=True,
            text=True,
            check=True,
        )
        return str(json.loads(done.stdout)["output"])

    outputs = [run_tests(), run_tests()]  # the second run does not see what the first wrote
    assert all(o.startswith('{"ran": 1, "passed": 1,') for o in outputs), outputs
    assert not (app / "data.json").exists()  # nor does the delivered app
    (app / "tests" / "test_leak.py").write_text("import missing_module\n")
    log = run_tests()
    assert "tests/test_leak.py" in log and "qa-run-" not in log, log


@pytest.mark.anyio
async def test_the_build_works_with_the_workspace_tools_too(tmp_path: Path) -> None:
    answers = scripted_team("True")

    def answer(request: LlmRequest) -> str | LlmResponse:
        agent = str(request.metadata["agent"])
        if agent == "qa" and not any(m.role == "tool" for m in request.messages):
            calls = (
                ToolCall(id="c1", name="list_files", arguments="{}"),
                ToolCall(id="c2", name="read_file", arguments='{"path": "backend/server.py"}'),
            )
            return LlmResponse(text="", provider="function", model="m", tool_calls=calls)
        return answers[agent]

    LlmFactory.register_provider("scripted-team", lambda **_: FunctionLlm(answer), replace=True)
    build = TodoBuild(output_dir=tmp_path / "app", test_timeout_s=60, tools=True)
    build.choices = route_team(
        SPECIALISTS, env={f"ORCHESTRA_ROLE_{r.name.upper()}": "scripted-team" for r in SPECIALISTS}
    )
    async with TaskExecutor(registry=build.registry(), max_concurrency=4) as executor:
        run = await executor.run(build.tasks(), on_task_done=build.on_task_done)
    assert run.ok and qa_verdict(run.results["qa-run"])["verdict"] == "passed"
    # QA looked at what the backend had written before writing its tests.
    path = os.environ["ORCHESTRA_DB_URL"].removeprefix("sqlite:///")
    with closing(sqlite3.connect(path)) as db:
        calls = dict(db.execute("SELECT tool, result FROM tool_calls WHERE task_id = 'qa-tests'"))
    assert "backend/server.py" in json.loads(calls["list_files"])
    assert calls["read_file"] == (tmp_path / "app" / "backend" / "server.py").read_text()


def test_a_coding_cli_s_diff_is_read_as_whole_files_and_checked_as_an_answer(
    tmp_path: Path,
) -> None:
    from agents.contract import files_of_diff

    base = tmp_path / "app"
    (base / "backend").mkdir(parents=True)
    (base / "backend" / "server.py").write_text("A = 1\nB = 2\n")
    answer = """I changed the backend.

diff --git a/backend/server.py b/backend/server.py
index 1111111..2222222 100644
--- a/backend/server.py
+++ b/backend/server.py
@@ -1,2 +1,2 @@
 A = 1
-B = 2
+B = 3
diff --git a/backend/util.py b/backend/util.py
new file mode 100644
index 0000000..3333333
--- /dev/null
+++ b/backend/util.py
@@ -0,0 +1 @@
+C = 4
diff --git a/docs/SPEC.md b/docs/SPEC.md
index 4444444..5555555 100644
--- a/docs/SPEC.md
+++ b/docs/SPEC.md
@@ -1 +1 @@
-the spec
+not mine
"""
    (base / "docs").mkdir()
    (base / "docs" / "SPEC.md").write_text("the spec\n")
    # The file outside its role is reported, and the rest applies without it.
    parsed = files_of_diff(answer, base, ("backend/",))
    assert parsed.files == {"backend/server.py": "A = 1\nB = 3\n", "backend/util.py": "C = 4\n"}
    assert parsed.problems and parsed.problems[0].startswith("docs/SPEC.md: ")
    assert (base / "backend" / "server.py").read_text() == "A = 1\nB = 2\n"  # base untouched
    with pytest.raises(OutputRejected, match="outside"):
        BACKEND.check_changes(answer, base)
    with pytest.raises(OutputRejected, match="no file was changed: write backend/server.py"):
        BACKEND.check_changes("I did nothing.", base)
    (base / "backend" / "server.py").write_text("A = 9\n")  # not what it started from
    with pytest.raises(OutputRejected, match="does not apply"):
        BACKEND.check_changes(answer, base)
