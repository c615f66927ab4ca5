"""Cold import cost of Orchestra beside the SDKs users would otherwise import.

Each statement runs in a fresh interpreter, interleaved round-robin so that machine noise
hits every candidate alike; the figure is the median of N runs minus the median of a bare
interpreter start measured in the same rounds. Candidates whose package is not installed
are reported as such. litellm is not a dependency and pins openai 2.x, so it is measured in
a side environment: ``make bench`` creates ``.venv-litellm`` for it (its net time is taken
against a bare start of that interpreter, measured in the same rounds).

Run: ``.venv/bin/python bench/import_time.py [--runs 7] [--litellm-python PATH]``
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import time
from pathlib import Path

SIDE_PYTHON = Path(__file__).resolve().parent.parent / ".venv-litellm" / "bin" / "python"
# (label, statement, package that must be installed); labels in SIDE run in .venv-litellm
CANDIDATES: list[tuple[str, str, str | None]] = [
    ("bare interpreter", "pass", None),
    ("import orchestration, llm_abstractions", "import orchestration, llm_abstractions", None),
    (
        "first use: LlmFactory + LlmRequest (pydantic)",
        "from llm_abstractions import LlmFactory, LlmRequest; LlmRequest.build('hi')",
        None,
    ),
    ("orchestration.cli.main (typer, rich)", "import orchestration.cli.main", None),
    ("import openai", "import openai", "openai"),
    ("import anthropic", "import anthropic", "anthropic"),
    ("import litellm", "import litellm", "litellm"),
]
SIDE = {"import litellm", "bare side interpreter"}
HEAVY = ("anthropic", "openai", "google.genai", "huggingface_hub", "llama_cpp", "sqlmodel")


def run_once(python: str, statement: str) -> float:
    started = time.perf_counter()
    subprocess.run([python, "-c", statement], check=True, capture_output=True)
    return time.perf_counter() - started


def side_has(python: Path, package: str) -> bool:
    if not python.exists():
        return False
    probe = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({package!r}) is None)"
    return subprocess.run([str(python), "-c", probe], check=False).returncode == 0


def heavy_modules_loaded() -> list[str]:
    code = (
        "import sys, orchestration, llm_abstractions\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return [m for m in out.stdout.strip().split(",") if m]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--litellm-python", type=Path, default=SIDE_PYTHON)
    args = parser.parse_args()
    side = str(args.litellm_python)
    plan: list[tuple[str, str, str]] = []  # (label, python, statement)
    missing: list[str] = []
    for label, statement, package in CANDIDATES:
        if label in SIDE:
            if side_has(args.litellm_python, package or "sys"):
                plan += [("bare side interpreter", side, "pass"), (label, side, statement)]
            else:
                missing.append(label)
        elif package is None or importlib.util.find_spec(package):
            plan.append((label, sys.executable, statement))
        else:
            missing.append(label)
    for _, python, statement in plan:  # warm the file cache once, outside the measurement
        run_once(python, statement)
    samples: dict[str, list[float]] = {label: [] for label, _, _ in plan}
    for _ in range(args.runs):
        for label, python, statement in plan:
            samples[label].append(run_once(python, statement))
    medians = {label: statistics.median(values) for label, values in samples.items()}
    base = medians["bare interpreter"]
    print(
        f"median of {args.runs} cold runs, net of a bare interpreter start ({base * 1000:.0f} ms)"
    )
    print(f"{'statement':<50} {'net ms':>8}")
    for label, _, _ in plan:
        if label.startswith("bare"):
            continue
        own_base = medians["bare side interpreter"] if label in SIDE else base
        print(f"{label:<50} {(medians[label] - own_base) * 1000:>8.0f}")
    for label in missing:
        print(f"{label:<50} {'not installed':>17}")
    loaded = heavy_modules_loaded()
    print(f"vendor SDKs / ORM loaded by the import: {', '.join(loaded) or 'none'}")


if __name__ == "__main__":
    main()
