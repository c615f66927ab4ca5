"""Run a generated app's unittest suite and report the verdict (the Todo demo's ``qa-run``).

Speaks the script-agent protocol: a JSON task on stdin, a JSON answer on stdout whose
``output`` is a line of JSON (``ran``, ``passed``, ``failed``, ``errors``, ``verdict``:
``passed``, ``failed`` or ``no tests``), a blank line and the tail of the test log as plain
text, which a model asked to repair the app reads as it is. The suite is
``tests/test_*.py`` under the working directory, which the agent's settings point at the
generated app. It runs on a fresh copy of the app, so that what one run of the tests writes
(a data file, when a test misses the app's storage setting) neither reaches the delivered app
nor the next run; paths in the log are given relative to the app. It runs in a child
interpreter with a timeout a little under the task's, so that a hanging suite still gets a
verdict; the executor kills the whole process group if even that fails. Standard library
only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

LOG_TAIL = 4000
_RAN = re.compile(r"^Ran (\d+) tests? in", re.MULTILINE)
_SUMMARY = re.compile(r"^(?:OK|FAILED) \(([^)]*)\)", re.MULTILINE)
NO_TESTS_RAN = 5  # unittest's exit code for an empty suite, since Python 3.12


def verdict(log: str, returncode: int) -> dict[str, object]:
    """Counts and verdict from unittest's summary lines."""
    ran_match = _RAN.search(log)
    ran = int(ran_match.group(1)) if ran_match else 0
    counts = {"failures": 0, "errors": 0, "skipped": 0, "expected failures": 0}
    summary = _SUMMARY.search(log)
    if summary:
        for part in summary.group(1).split(","):
            key, _, value = part.strip().partition("=")
            if key in counts and value.isdigit():
                counts[key] = int(value)
    failed, errors = counts["failures"], counts["errors"]
    if ran == 0 and returncode == NO_TESTS_RAN:
        returncode = 0
    if ran == 0 and returncode != 0 and not errors:
        errors = 1  # the suite did not even load (a syntax error, a missing module)
    passed = max(ran - failed - errors - counts["skipped"], 0)
    if failed or errors or returncode != 0:
        outcome = "failed"
    else:
        outcome = "passed" if passed else "no tests"
    return {"ran": ran, "passed": passed, "failed": failed, "errors": errors, "verdict": outcome}


def _run_suite(argv: list[str], timeout_s: float, cwd: Path) -> tuple[str, int]:
    """Run the suite in a process group of its own; whatever it started dies with it."""
    child = subprocess.Popen(  # noqa: S603 - our interpreter, fixed arguments
        argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        output, _ = child.communicate(timeout=timeout_s)
        log, code = _text(output), child.returncode
    except subprocess.TimeoutExpired:
        _kill_group(child.pid)
        output, _ = child.communicate()
        log, code = f"{_text(output)}\ntimed out after {timeout_s:.0f} s", -1
    _kill_group(child.pid)  # servers or workers the tests left behind
    return log, code


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _text(output: str | bytes | None) -> str:
    """What a timed-out child printed (undecoded bytes, whatever ``text=`` said)."""
    if isinstance(output, bytes):
        return output.decode("utf-8", "replace")
    return output or ""


def main() -> int:
    """Answer one task from stdin with the verdict of ``tests/`` in the working directory."""
    task = json.load(sys.stdin)
    limit = float(task.get("timeout_s") or 120.0)
    if not any(Path("tests").glob("test_*.py")):
        result: dict[str, object] = {
            "ran": 0,
            "passed": 0,
            "failed": 0,
            "errors": 0,
            "verdict": "no tests",
        }
        log = "no tests/test_*.py in the generated app"
    else:
        # -B: no bytecode cache, which a file rewritten within the same second and at the
        # same size (a repair changing one word) would be read from instead of the source.
        argv = [sys.executable, "-B", "-m", "unittest", "discover", "-s", "tests"]
        with tempfile.TemporaryDirectory(prefix="qa-run-") as scratch:
            app = Path(scratch) / "app"
            shutil.copytree(".", app, ignore=shutil.ignore_patterns("__pycache__"))
            log, code = _run_suite(argv, max(limit - 5.0, 1.0), app)
            log = log.replace(f"{app.resolve()}{os.sep}", "").replace(f"{app}{os.sep}", "")
        result = verdict(log, code)
    output = f"{json.dumps(result)}\n\n{log[-LOG_TAIL:]}"
    json.dump({"output": output, "model": "unittest"}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
