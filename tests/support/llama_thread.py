"""Running a job on the embedded provider's llama.cpp thread, for the model tests."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future

from llm_abstractions.providers import llama_engine


def run_on_llama_thread(job: Callable[[], object]) -> object:
    """Run ``job`` where the provider runs llama.cpp, and wait for its result."""
    done: Future[object] = Future()

    def wrapper() -> None:
        try:
            done.set_result(job())
        except BaseException as exc:  # handed to the test
            done.set_exception(exc)

    llama_engine.LLAMA_THREAD.submit(wrapper)
    return done.result(timeout=120)
