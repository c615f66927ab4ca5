"""Ctrl-C and interpreter exit while the embedded model is generating, in fresh interpreters.

Freeing a model while llama.cpp computes with it on the llama thread crashed the process
(SIGSEGV in libggml-cpu, nothing printed) in about half of the tries when Ctrl-C arrived
during a long prompt. Each case runs in a subprocess, where such a crash shows as a negative
exit code instead of killing the test run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.model

# About 3,000 tokens: evaluating it takes seconds, so a signal lands in the middle of it.
LONG_PROMPT = "Summarise this text. " + "The quick brown fox jumps over the lazy dog. " * 300

GENERATE = f"""
import sys
import anyio
from llm_abstractions import LlmFactory, LlmRequest

async def main(phase):
    llm = LlmFactory.get_provider("local")
    await llm.generate(LlmRequest.build("hi", max_tokens=1))  # the model is loaded
    prompt = {LONG_PROMPT!r} if phase == "prompt" else "Write a very long story about a dragon."
    request = LlmRequest.build(prompt, max_tokens=3000, temperature=0.0)
    print("PROMPT", flush=True)
    first = True
    async for chunk in llm.stream(request):
        if chunk.delta and first:
            first = False
            print("TOKEN", flush=True)
    print("FINISHED", flush=True)

try:
    anyio.run(main, sys.argv[1])
except KeyboardInterrupt:
    print("KEYBOARD INTERRUPT HANDLED", flush=True)
"""

EXIT_WHILE_GENERATING = f"""
import sys
import threading
import time
from llm_abstractions import LlmRequest
from llm_abstractions.providers import llama_engine
from llm_abstractions.providers.local import LocalLlm

llm = LocalLlm()
loaded = threading.Event()

def job():
    engine = llama_engine.get_engine(llm.path, llm.n_ctx, llm.n_threads)
    loaded.set()
    request = LlmRequest.build({LONG_PROMPT!r}, max_tokens=3000)
    try:
        engine.run(request, None, threading.Event())  # nobody will cancel it
        print("FINISHED", flush=True)
    except llama_engine.GenerationCancelled:
        print("GENERATION STOPPED", flush=True)

llama_engine.LLAMA_THREAD.submit(job)
loaded.wait(120)
time.sleep(0.5)  # in the middle of the prompt
print("EXITING", flush=True)
sys.exit(0)
"""

SHUTDOWN_UNDER_A_CALLER = """
import anyio
import anyio.to_thread
from llm_abstractions import LLMError, LlmFactory, LlmRequest
from llm_abstractions.providers import llama_engine

async def main():
    llm = LlmFactory.get_provider("local")
    request = LlmRequest.build("Write a very long story about a dragon.", max_tokens=3000)
    shut = False
    try:
        async for chunk in llm.stream(request):
            if chunk.delta and not shut:
                shut = True
                ended = await anyio.to_thread.run_sync(llama_engine.shutdown)
                print("SHUT DOWN", ended, flush=True)
        print("FINISHED", flush=True)
    except LLMError as exc:
        print("STREAM:", exc, flush=True)
    try:
        await llm.generate(request)
    except LLMError as exc:
        print("AFTER:", exc, flush=True)

anyio.run(main)
"""


def _start(code: str, *args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
    )


def _wait_for(process: subprocess.Popen[str], marker: str) -> list[str]:
    assert process.stdout is not None
    seen: list[str] = []
    for line in process.stdout:
        seen.append(line.strip())
        if line.strip() == marker:
            return seen
    pytest.fail(f"the script ended before printing {marker}: {seen}")


def _interrupt(phase: str, cwd: Path) -> tuple[int, str, float]:
    """Run ``GENERATE``, press Ctrl-C in ``phase``; the exit code, output, seconds to exit."""
    process = _start(GENERATE, phase, cwd=cwd)
    try:
        seen = _wait_for(process, "PROMPT" if phase == "prompt" else "TOKEN")
        if phase == "prompt":
            time.sleep(0.3)  # into the evaluation of the prompt
        process.send_signal(signal.SIGINT)
        pressed = time.monotonic()
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, "\n".join([*seen, out, err]), time.monotonic() - pressed


@pytest.mark.parametrize("phase", ["prompt", "token"])
def test_ctrl_c_while_generating_exits_cleanly(phase: str, tmp_path: Path) -> None:
    for attempt in range(5 if phase == "prompt" else 2):
        code, output, seconds = _interrupt(phase, tmp_path)
        assert code == 0, f"attempt {attempt}: exit code {code} (a signal if negative)\n{output}"
        assert "KEYBOARD INTERRUPT HANDLED" in output, output
        assert "FINISHED" not in output, "generation went on after Ctrl-C"
        assert seconds < 30, f"exiting took {seconds:.1f} s after Ctrl-C"


def test_exiting_while_the_llama_thread_generates_stops_it_first(tmp_path: Path) -> None:
    done = _python(EXIT_WHILE_GENERATING, tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"exit code {done.returncode}\n{output}"
    # The exit stopped the generation itself, before the model was freed.
    assert done.stdout.split() == ["EXITING", "GENERATION", "STOPPED"], output


def test_shutdown_stops_a_running_generation_and_fails_its_caller(tmp_path: Path) -> None:
    done = _python(SHUTDOWN_UNDER_A_CALLER, tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    lines = done.stdout.splitlines()
    assert lines[0] == "SHUT DOWN True", output
    assert lines[1].startswith("STREAM: local: the embedded model was shut down"), output
    assert lines[2].startswith("AFTER: local: the embedded model was shut down"), output


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a Python process of its own (a crash shows its stack)."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=cwd,
        env={**os.environ, "PYTHONFAULTHANDLER": "1"},
        check=False,
    )
