"""``SerialWorker``: one thread, jobs in order, and a stop that lets the running job finish."""

from __future__ import annotations

import threading

import pytest

from llm_abstractions.threads import SerialWorker


def test_stop_lets_the_running_and_queued_jobs_finish_then_ends_the_thread() -> None:
    worker = SerialWorker("test-worker")
    started, release = threading.Event(), threading.Event()
    ran: list[str] = []

    def slow() -> None:
        started.set()
        release.wait(10)
        ran.append("slow")

    worker.submit(slow)
    worker.submit(lambda: ran.append("queued"))
    assert started.wait(10)
    assert worker.stop(0.05) is False  # still running the slow job
    release.set()
    assert worker.stop(10) is True
    assert ran == ["slow", "queued"]
    with pytest.raises(RuntimeError, match="test-worker was stopped"):
        worker.submit(lambda: None)


def test_stopping_a_worker_that_never_ran_a_job() -> None:
    worker = SerialWorker("idle")
    assert worker.stop(0) is True
    with pytest.raises(RuntimeError, match="stopped"):
        worker.submit(lambda: None)


def test_a_job_cannot_wait_for_its_own_thread() -> None:
    worker = SerialWorker("self-stop")
    answers: list[bool] = []
    done = threading.Event()

    def job() -> None:
        answers.append(worker.stop(1))
        done.set()

    worker.submit(job)
    assert done.wait(10)
    assert answers == [False]
    assert worker.stop(10) is True
