"""Retries, fallback chains, rate limits, breakers, budgets and the cache, end to end.

Every test runs the real executor and the real ``openai`` (or ``anthropic``) SDK against the
fault-injecting loopback server, whose own call log is the witness of what was sent. Waits
go through a fake clock, so a ``Retry-After`` of seconds costs no real time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from pydantic import ValidationError

from llm_abstractions import ConfigurationError
from orchestration import (
    AgentRegistry,
    AgentTask,
    BreakerPolicy,
    RateLimit,
    RetryPolicy,
    TaskExecutor,
    TaskStatus,
)
from orchestration.ledger import Ledger
from tests.fakes.faults import INPUT_TOKENS, OUTPUT_TOKENS, FaultPlan, FaultServer
from tests.support.ledger_rows import rows

pytestmark = pytest.mark.anyio


class FakeClock:
    """Virtual time: ``sleep`` moves it forward at once and remembers how long it was."""

    def __init__(self) -> None:
        self.time = 1000.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.time

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.time += seconds
        await anyio.lowlevel.checkpoint()


@pytest.fixture(scope="module")
def faults() -> Iterator[FaultServer]:
    server = FaultServer()
    yield server
    server.close()


@pytest.fixture
def server(faults: FaultServer, monkeypatch: pytest.MonkeyPatch) -> FaultServer:
    faults.reset(FaultPlan())
    monkeypatch.setenv("OPENAI_BASE_URL", f"{faults.url}/v1")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", faults.url)
    return faults


def gpt_registry(**settings: Any) -> AgentRegistry:
    registry = AgentRegistry()
    settings.setdefault("script_fallback", False)
    registry.register_agent("gpt", "openai-gpt", model="gpt-4o-mini", api_key="k", **settings)
    return registry


def task(tid: str, *deps: str, **fields: Any) -> AgentTask:
    fields.setdefault("agent", "gpt")
    return AgentTask(task_id=tid, description=f"[[task:{tid}]] work", depends_on=deps, **fields)


def layered(layers: int, width: int) -> list[AgentTask]:
    """``layers`` layers of ``width`` tasks; each depends on two tasks of the layer before."""
    tasks = []
    for layer in range(layers):
        for i in range(width):
            deps = () if layer == 0 else (f"L{layer - 1}-{i}", f"L{layer - 1}-{(i + 1) % width}")
            tasks.append(task(f"L{layer}-{i}", *deps, timeout=1.0))
    return tasks


async def test_a_500_task_dag_at_30_percent_faults_succeeds_with_every_attempt_recorded(
    server: FaultServer, ledger: Ledger
) -> None:
    server.plan = FaultPlan(rate=0.3, seed=7, max_faults_per_key=3, hang=3.0, retry_after=2.0)
    clock = FakeClock()
    executor = TaskExecutor(
        gpt_registry(),
        ledger=ledger,
        max_concurrency=32,
        retry=RetryPolicy(max_attempts=6),
        breakers=False,
        clock=clock,
    )
    async with executor:
        run = await executor.run(layered(10, 50))
    assert run.ok, {t: r.error for t, r in run.results.items() if not r.succeeded}
    counts = server.log.counts()
    # Every kind of fault was served, and every task got its answer in the end.
    assert {"429", "500", "529", "reset", "timeout", "cut"} <= set(counts)
    assert counts["ok"] >= 500 and len(server.log.ok_keys()) == 500
    assert all(r.output == f"done:{t}" for t, r in run.results.items())
    # One attempt row per call the server saw, in order per task.
    assert rows(ledger, "SELECT COUNT(*) FROM attempts")[0][0] == len(server.log)
    for key in ("L0-0", "L5-7", "L9-49"):
        recorded = rows(
            ledger, "SELECT status FROM attempts WHERE task_id = ? ORDER BY attempt", key
        )
        served = server.log.kinds_for(key)
        assert len(recorded) == len(served) and recorded[-1] == ("succeeded",)
    # Retry-After (2 s) was honoured without sleeping it for real.
    assert 2.0 in clock.sleeps
    assert rows(ledger, "SELECT COUNT(*) FROM attempts WHERE wait_s = 2.0")[0][0] == counts["429"]


async def test_the_default_policies_get_every_task_through_30_percent_faults(
    server: FaultServer, ledger: Ledger
) -> None:
    # Defaults throughout (retries, breakers): the breaker is for outages, and an answer
    # that says when to come back (429, 529 with Retry-After) is waited out, not counted.
    server.plan = FaultPlan(
        rate=0.3, seed=3, max_faults_per_key=3, hang=3.0, retry_after_kinds=("429", "529")
    )
    executor = TaskExecutor(gpt_registry(), ledger=ledger, max_concurrency=32, clock=FakeClock())
    async with executor:
        run = await executor.run(layered(10, 50))
    assert run.ok, {t: r.error for t, r in run.results.items() if not r.succeeded}
    assert rows(ledger, "SELECT COUNT(*) FROM attempts")[0][0] == len(server.log)
    assert executor.runner.breakers["openai-gpt"].state == "closed"


@pytest.mark.timeout(30)
async def test_waiting_out_a_cool_down_does_not_spin_on_the_clock_s_rounding(
    server: FaultServer, ledger: Ledger
) -> None:
    # Opened at this time, 30 s later the clock reads 1.1e-13 s short of the cool-down's
    # end, and adding that to the clock changes nothing: the wait must not loop on it.
    clock = FakeClock()
    clock.time = 1018.9945834610686
    executor = TaskExecutor(gpt_registry(), ledger=ledger, clock=clock)
    async with executor:
        breaker = executor.runner.breaker("openai-gpt")
        assert breaker is not None
        for _ in range(10):
            breaker.failed(breaker.allow() or 0)
        result = await executor.execute(task("late"))
    assert result.succeeded and breaker.state == "closed"
    assert len(clock.sleeps) == 2  # the cool-down, then at least a millisecond more


async def test_authentication_and_context_errors_are_never_retried(
    server: FaultServer, ledger: Ledger
) -> None:
    executor = TaskExecutor(gpt_registry(), ledger=ledger, clock=FakeClock())
    async with executor:
        run = await executor.run(
            [
                AgentTask(task_id="auth", description="[[task:auth]] [[401]]", agent="gpt"),
                AgentTask(task_id="long", description="[[task:long]] [[context]]", agent="gpt"),
            ]
        )
    assert server.log.kinds_for("auth") == ["401"]
    assert server.log.kinds_for("long") == ["context"]
    errors = {t: r.metadata["error_type"] for t, r in run.results.items()}
    assert errors == {"auth": "LLMAuthenticationError", "long": "LLMContextLengthError"}
    assert rows(ledger, "SELECT COUNT(*) FROM attempts")[0][0] == 2


async def test_anthropic_overload_529_is_retried_until_it_answers(
    server: FaultServer, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.plan = FaultPlan(rate=1.0, kinds={"529": 1}, max_faults_per_key=2)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k-anthropic")
    registry = AgentRegistry()
    registry.register_agent("claude", "anthropic-claude", model="claude-haiku-4-5")
    clock = FakeClock()
    async with TaskExecutor(registry, ledger=ledger, clock=clock) as executor:
        result = await executor.execute(task("o", agent="claude"))
    assert result.succeeded and result.output == "done:o" and result.attempts == 3
    assert [(c.route, c.kind) for c in server.log.calls] == [
        ("anthropic", "529"),
        ("anthropic", "529"),
        ("anthropic", "ok"),
    ]
    assert len(clock.sleeps) == 2  # backoff: no Retry-After on a 529
    errors = rows(ledger, "SELECT error_type FROM attempts ORDER BY attempt")
    assert errors == [("LLMOverloadedError",), ("LLMOverloadedError",), (None,)]


async def test_retry_after_is_honoured_up_to_the_cap(server: FaultServer, ledger: Ledger) -> None:
    server.plan = FaultPlan(rate=1.0, kinds={"429": 1}, retry_after=7.0, max_faults_per_key=2)
    clock = FakeClock()
    executor = TaskExecutor(gpt_registry(), ledger=ledger, clock=clock)
    async with executor:
        assert (await executor.run([task("a", agent="gpt")])).ok
        server.log.clear()
        capped = TaskExecutor(
            gpt_registry(), ledger=ledger, clock=clock, retry=RetryPolicy(retry_after_cap_s=5.0)
        )
        async with capped:
            assert (await capped.run([task("b", agent="gpt")])).ok
    assert clock.sleeps == [7.0, 7.0, 5.0, 5.0]
    waits = rows(ledger, "SELECT task_id, wait_s FROM attempts ORDER BY task_id, attempt")
    assert waits == [("a", 0.0), ("a", 7.0), ("a", 7.0), ("b", 0.0), ("b", 5.0), ("b", 5.0)]


async def test_an_exhausted_provider_falls_back_along_the_chain_and_says_why(
    server: FaultServer, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.plan = FaultPlan(rate=1.0, kinds={"529": 1})  # OpenAI is overloaded
    with FaultServer() as healthy:  # Anthropic answers
        monkeypatch.setenv("ANTHROPIC_BASE_URL", healthy.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "k-anthropic")
        registry = gpt_registry(fallbacks=("anthropic-claude:claude-haiku-4-5",))
        executor = TaskExecutor(
            registry, ledger=ledger, clock=FakeClock(), retry=RetryPolicy(max_attempts=2)
        )
        async with executor:
            result = await executor.execute(task("x"), agent="gpt")
        assert [(c.route, c.kind) for c in healthy.log.calls] == [("anthropic", "ok")]
    assert result.succeeded and result.output == "done:x"
    assert result.metadata["provider"] == "anthropic-claude" and result.attempts == 3
    assert server.log.kinds_for("x") == ["529", "529"]
    recorded = rows(
        ledger,
        "SELECT agent, provider, model, status, fallback_reason FROM attempts ORDER BY attempt",
    )
    assert recorded == [
        ("gpt", "openai-gpt", "gpt-4o-mini", "failed", None),
        ("gpt", "openai-gpt", "gpt-4o-mini", "failed", None),
        (
            "gpt",
            "anthropic-claude",
            "claude-haiku-4-5",
            "succeeded",
            "gpt failed 2 time(s), the last with LLMOverloadedError",
        ),
    ]


def test_a_fallback_with_invalid_settings_is_refused_when_registered() -> None:
    # (It used to be registered, then skipped at run time with the reason.)
    registry = gpt_registry(fallbacks=("broken", "good"))
    with pytest.raises(ConfigurationError, match="'temperature' must be less than or equal"):
        registry.register_agent("broken", "openai-gpt", api_key="k", metadata={"temperature": 5})


async def test_a_request_mistake_does_not_fall_back(server: FaultServer, ledger: Ledger) -> None:
    with pytest.raises(ValidationError, match="max_tokens"):  # refused when made, at first
        AgentTask(task_id="bad", description="hi", metadata={"max_tokens": -1})
    # A task that was never checked (built without validation) is refused at its request.
    unchecked = AgentTask.model_construct(
        task_id="bad", description="[[task:bad]] hi", metadata={"max_tokens": -1}
    )
    registry = gpt_registry(fallbacks=("anthropic-claude:claude-haiku-4-5",))
    executor = TaskExecutor(registry, ledger=ledger, clock=FakeClock())
    async with executor:
        result = await executor.execute(unchecked, agent="gpt")
    assert result.status is TaskStatus.FAILED and "max_tokens" in (result.error or "")
    assert len(server.log) == 0  # refused before anything was sent, and not sent elsewhere


def test_a_fallback_that_names_nothing_fails_before_the_run() -> None:
    from llm_abstractions.errors import ConfigurationError

    executor = TaskExecutor(gpt_registry(fallbacks=("no-such-thing",)), record=False)
    with pytest.raises(ConfigurationError, match="neither a registered agent"):
        anyio.run(executor.run, [task("a", agent="gpt")])


async def test_an_open_circuit_without_a_fallback_fails_only_when_its_time_is_up(
    server: FaultServer, ledger: Ledger
) -> None:
    server.plan = FaultPlan(rate=1.0, kinds={"500": 1})
    clock = FakeClock()
    registry = gpt_registry(fallbacks=("spare",))
    registry.register_agent("spare", "openai-gpt", model="gpt-4.1-mini", api_key="k")
    executor = TaskExecutor(
        registry,
        ledger=ledger,
        clock=clock,
        max_concurrency=1,
        retry=RetryPolicy(max_attempts=10, max_total_s=100.0),
        breaker=BreakerPolicy(consecutive_failures=3, cooldown_s=30.0),
    )
    async with executor:
        # Both agents use the same provider, so its circuit covers both: once it is open the
        # tasks wait for its probes (each fails: the provider is down) until their time is up.
        started = clock.time
        run = await executor.run([task(f"t{i}", agent="gpt") for i in range(6)])
        breaker = executor.runner.breakers["openai-gpt"]
        assert breaker.state == "open"
        assert [r.status for r in run.results.values()] == [TaskStatus.FAILED] * 6
        # Each task waited for probes (one per cool-down, sent by whichever task was first)
        # until its next try would come too late; the last ones say why they were not tried.
        errors = {r.metadata["error_type"] for r in run.results.values()}
        assert "CircuitOpen" in errors and errors <= {"CircuitOpen", "LLMServerError"}
        assert run.results["t5"].error == (
            "not run: the circuit for openai-gpt is open (failing calls) and its next probe "
            "would come after the task's max_total_s of 100 s"
        )
        probes = len(server.log) - 3  # t0's three tries opened the circuit
        assert 2 <= probes <= (clock.time - started) / 30 + 1
        assert max(clock.sleeps) <= 30.0
        state = rows(ledger, "SELECT provider, state FROM breakers")
        assert state == [("openai-gpt", "open")]
        assert shown_breaker(ledger)["state"] == "open"  # what `orchestra providers` shows
        # After the cool-down one probe goes through; it succeeds and closes the circuit.
        server.plan = FaultPlan()
        clock.time += 30.0
        again = await executor.run([task("p1", agent="gpt"), task("p2", agent="gpt")])
        assert again.ok and breaker.state == "closed"
    assert rows(ledger, "SELECT state FROM breakers") == [("closed",)]


async def test_tasks_that_meet_an_open_circuit_wait_for_its_probe(
    server: FaultServer, ledger: Ledger
) -> None:
    clock = FakeClock()
    executor = TaskExecutor(
        gpt_registry(), ledger=ledger, clock=clock, breaker=BreakerPolicy(cooldown_s=30.0)
    )
    async with executor:
        breaker = executor.runner.breaker("openai-gpt")
        assert breaker is not None
        for _ in range(10):
            breaker.failed(breaker.allow() or 0)
        assert breaker.state == "open"
        clock.time += 20.0  # 10 s of the cool-down left
        run = await executor.run([task(f"w{i}") for i in range(8)])
    assert run.ok, {t: r.error for t, r in run.results.items()}
    assert breaker.state == "closed" and len(server.log) == 8  # one probe, then the rest
    assert 10.0 in clock.sleeps and max(clock.sleeps) == 10.0
    waits = rows(ledger, "SELECT COUNT(*) FROM attempts WHERE status = 'succeeded'")
    assert waits == [(8,)]


def shown_breaker(ledger: Ledger) -> dict[str, Any]:
    import json

    from typer.testing import CliRunner

    from orchestration.cli import app

    shown = CliRunner().invoke(app, ["providers", "--json"], env={"ORCHESTRA_DB_URL": ledger.url})
    found = {p["name"]: p["breaker"] for p in json.loads(shown.output)}
    assert found["anthropic-claude"] is None
    return dict(found["openai-gpt"])


async def test_rate_limits_make_tasks_wait_not_fail(server: FaultServer, ledger: Ledger) -> None:
    clock = FakeClock()
    executor = TaskExecutor(
        gpt_registry(),
        ledger=ledger,
        clock=clock,
        rate_limits={"openai-gpt": RateLimit(requests_per_minute=2)},
    )
    async with executor:
        run = await executor.run([task(f"t{i}", agent="gpt") for i in range(5)])
    assert run.ok and len(server.log) == 5
    # Two fit at once; the other three wait for 30 s of refill each: 90 s (of the fake
    # clock, which every sleep moves forward for everyone) before the last one is sent.
    assert sum(clock.sleeps) == pytest.approx(90.0)
    waits = sorted(w for (w,) in rows(ledger, "SELECT wait_s FROM attempts"))
    assert waits == pytest.approx([0.0, 0.0, 30.0, 30.0, 30.0])


async def test_token_limits_are_corrected_from_real_usage(
    server: FaultServer, ledger: Ledger
) -> None:
    clock = FakeClock()
    limits = {"openai-gpt": RateLimit(tokens_per_minute=300)}
    registry = gpt_registry(metadata={"max_tokens": 100})  # about 110 tokens estimated a call
    one_at_a_time = TaskExecutor(
        registry, ledger=ledger, clock=clock, rate_limits=limits, max_concurrency=1
    )
    async with one_at_a_time:
        assert (await one_at_a_time.run([task(f"s{i}", agent="gpt") for i in range(5)])).ok
    # Each call used 15 tokens, not 110: corrected after each, five fit in the minute.
    assert INPUT_TOKENS + OUTPUT_TOKENS == 15 and clock.sleeps == []
    together = TaskExecutor(registry, ledger=ledger, clock=clock, rate_limits=limits)
    async with together:
        assert (await together.run([task(f"c{i}", agent="gpt") for i in range(5)])).ok
    # Started at once, the estimates are all that is known: the later ones wait.
    assert len(clock.sleeps) == 3 and all(s > 0 for s in clock.sleeps)


async def test_a_run_budget_waits_for_tasks_in_flight_and_skips_what_it_cannot_afford(
    server: FaultServer, ledger: Ledger
) -> None:
    registry = gpt_registry(metadata={"max_tokens": 1000})  # ~$0.0006 estimated a call
    executor = TaskExecutor(registry, ledger=ledger, max_concurrency=5, clock=FakeClock())
    tasks = [task(f"t{i}", agent="gpt") for i in range(5)] + [task("after", "t4", agent="gpt")]
    async with executor:
        # Two estimates fit at a time; the others wait for them to settle, and since each
        # call really costs $0.0000045, all of them fit in the end.
        roomy = await executor.run(tasks, budget_usd=0.0013)
        # Not even one estimate fits: nothing is sent.
        tight = await executor.run(tasks, budget_usd=0.0005)
    assert roomy.ok and len(server.log) == 6
    assert 0 < sum(r.cost_usd or 0.0 for r in roomy.results.values()) <= 0.0013
    statuses = [r.status for r in tight.results.values()]
    assert statuses == [TaskStatus.BUDGET_EXCEEDED] * 5 + [TaskStatus.SKIPPED]
    exceeded = rows(
        ledger,
        "SELECT COUNT(*) FROM task_runs WHERE run_id = ? AND error LIKE ?",
        tight.run_id,
        "not run: its estimated $0.0006 would exceed the run's budget of $0.0005%",
    )
    assert exceeded == [(5,)]
    no_attempts = rows(ledger, "SELECT COUNT(*) FROM attempts WHERE run_id = ?", tight.run_id)
    assert no_attempts == [(0,)] and len(server.log) == 6


async def test_a_task_budget_stops_its_attempts(server: FaultServer, ledger: Ledger) -> None:
    executor = TaskExecutor(gpt_registry(metadata={"max_tokens": 1000}), ledger=ledger)
    async with executor:
        result = await executor.execute(task("cheap", budget_usd=0.0001), agent="gpt")
    assert result.status is TaskStatus.BUDGET_EXCEEDED and len(server.log) == 0


async def test_the_cache_answers_identical_requests_without_a_call(
    server: FaultServer, ledger: Ledger
) -> None:
    same = AgentTask(task_id="q", description="[[task:q]] what is 2+2?", agent="gpt")
    executor = TaskExecutor(gpt_registry(), ledger=ledger, cache=True)
    async with executor:
        first = await executor.run([same])
        second = await executor.run([same, same.model_copy(update={"task_id": "q2"})])
    assert first.ok and second.ok and len(server.log) == 1
    for result in second.results.values():
        assert result.metadata["execution_method"] == "cache" and result.cost_usd == 0.0
        assert result.output == "done:q"
    source = rows(ledger, "SELECT id FROM attempts WHERE run_id = ?", first.run_id)[0][0]
    hits = rows(
        ledger,
        "SELECT execution_method, cost_usd, cached_from FROM attempts WHERE run_id = ?",
        second.run_id,
    )
    assert hits == [("cache", 0.0, source), ("cache", 0.0, source)]
    stored = rows(ledger, "SELECT key, provider, model, output FROM response_cache")
    assert len(stored) == 1 and stored[0][1:] == ("openai-gpt", "gpt-4o-mini", "done:q")
    assert len(stored[0][0]) == 64 and int(stored[0][0], 16) >= 0  # a bare SHA-256


async def test_the_cache_is_off_unless_asked_and_keys_differ_by_model(
    server: FaultServer, ledger: Ledger
) -> None:
    same = AgentTask(task_id="q", description="[[task:q]] hello", agent="gpt")
    async with TaskExecutor(gpt_registry(), ledger=ledger) as executor:
        await executor.run([same])
        await executor.run([same])
    assert len(server.log) == 2  # no cache by default
    registry = AgentRegistry()
    registry.register_agent("gpt", "openai-gpt", model="gpt-4.1", api_key="k", cache=True)
    async with TaskExecutor(registry, ledger=ledger) as executor:
        await executor.run([same])
        await executor.run([same])
    assert len(server.log) == 3  # the agent turned it on; another model is another key


async def test_rate_limits_do_not_open_the_breaker(server: FaultServer, ledger: Ledger) -> None:
    # Every task meets two 429s before its answer: with the default breaker and retries,
    # every one of them must get through (a rate limit says the provider is up).
    server.plan = FaultPlan(rate=1.0, kinds={"429": 1}, retry_after=1.0, max_faults_per_key=2)
    executor = TaskExecutor(
        gpt_registry(script_fallback=True), ledger=ledger, clock=FakeClock(), max_concurrency=1
    )
    async with executor:
        run = await executor.run([task(f"t{i}") for i in range(8)])
        assert executor.runner.breakers["openai-gpt"].state == "closed"
    assert run.ok and len(server.log) == 24
    methods = rows(ledger, "SELECT DISTINCT execution_method FROM attempts")
    assert methods == [("llm_factory",)]  # and the script never stood in for a rate limit


async def test_an_open_circuit_is_passed_without_waiting_for_its_rate_limit(
    server: FaultServer, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.plan = FaultPlan(rate=1.0, kinds={"500": 1})
    clock = FakeClock()
    with FaultServer() as healthy:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", healthy.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "k-anthropic")
        executor = TaskExecutor(
            gpt_registry(fallbacks=("anthropic-claude:claude-haiku-4-5",)),
            ledger=ledger,
            clock=clock,
            max_concurrency=1,
            retry=RetryPolicy(max_attempts=1),
            rate_limits={"openai-gpt": RateLimit(requests_per_minute=1)},
            breaker=BreakerPolicy(consecutive_failures=1, cooldown_s=1000),
        )
        async with executor:
            run = await executor.run([task("t0"), task("t1")])
    # t0: OpenAI fails and opens its circuit; Anthropic answers. t1 goes to Anthropic at
    # once: it does not wait a minute for OpenAI's rate limit only to find the circuit open.
    assert run.ok and clock.sleeps == []
    assert run.results["t1"].metadata["fallback_reason"] == "circuit open for openai-gpt"
    assert server.log.kinds_for("t1") == []


async def test_a_task_its_rate_limit_would_keep_past_its_time_is_not_sent(
    server: FaultServer, ledger: Ledger
) -> None:
    executor = TaskExecutor(
        gpt_registry(),
        ledger=ledger,
        clock=FakeClock(),
        max_concurrency=1,
        retry=RetryPolicy(max_total_s=10),
        rate_limits={"openai-gpt": RateLimit(requests_per_minute=1)},
    )
    async with executor:
        run = await executor.run([task("t0"), task("t1")])
    assert run.results["t0"].succeeded
    t1 = run.results["t1"]  # would wait 60 s for its turn, with 10 s to live
    assert t1.status is TaskStatus.FAILED and t1.attempts == 0
    assert t1.error == "not run: gpt ran out of time for its rate limit"
    assert server.log.kinds_for("t1") == []
    assert rows(ledger, "SELECT COUNT(*) FROM attempts WHERE task_id = 't1'") == [(0,)]


async def test_attempts_made_before_a_cancellation_are_recorded(
    server: FaultServer, ledger: Ledger
) -> None:
    import openai  # noqa: F401 - imported before the clock starts: the first call is slow

    server.plan = FaultPlan(rate=1.0, kinds={"529": 1})
    executor = TaskExecutor(
        gpt_registry(),
        ledger=ledger,
        breakers=False,
        retry=RetryPolicy(max_attempts=50, base_delay_s=0.05, max_delay_s=0.05, jitter=0),
    )
    async with executor:
        with anyio.move_on_after(0.6):
            await executor.run([task("c")])
    assert executor.last_run is not None
    assert executor.last_run.results["c"].status is TaskStatus.CANCELLED
    made = rows(ledger, "SELECT attempt, status, error_type FROM attempts ORDER BY attempt")
    if made[-1][1] == "cancelled":  # the cancellation met a call in flight: recorded too
        assert made.pop() == (len(made) + 1, "cancelled", "Cancelled")
    assert len(made) >= 2 and len(server.log) in (len(made), len(made) + 1)
    assert made == [(n, "failed", "LLMOverloadedError") for n in range(1, len(made) + 1)]


async def test_calls_in_flight_when_a_run_is_cancelled_are_recorded_as_cancelled(
    server: FaultServer, ledger: Ledger
) -> None:
    server.plan = FaultPlan(latency=30.0)  # answers come long after the cancellation
    executor = TaskExecutor(gpt_registry(), ledger=ledger, max_concurrency=150)
    async with executor, anyio.create_task_group() as tg:
        tg.start_soon(executor.run, [task(f"c{i}") for i in range(150)])
        with anyio.fail_after(30):
            while len(server.log) < 150:  # noqa: ASYNC110 - every call has reached the server (its thread)
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    made = rows(ledger, "SELECT status, error_type, input_tokens, cost_usd FROM attempts")
    assert len(made) == len(server.log) == 150
    assert set(made) == {("cancelled", "Cancelled", None, None)}
    assert rows(ledger, "SELECT status FROM runs") == [("cancelled",)]


async def test_a_replaced_agent_is_used_from_the_next_run_on(ledger: Ledger) -> None:
    from llm_abstractions import LlmFactory
    from llm_abstractions.testing import FunctionLlm

    LlmFactory.register_provider("first", lambda **_: FunctionLlm(lambda r: "one"), replace=True)
    LlmFactory.register_provider("second", lambda **_: FunctionLlm(lambda r: "two"), replace=True)
    registry = AgentRegistry()
    registry.register_agent("a", "first")
    async with TaskExecutor(registry, ledger=ledger) as executor:
        before = await executor.execute(AgentTask(task_id="x", description="hi"), agent="a")
        registry.register_agent("a", "second", replace=True)
        after = await executor.execute(AgentTask(task_id="x", description="hi"), agent="a")
    assert (before.output, after.output) == ("one", "two")
    assert after.metadata["provider"] == "second"


def test_script_agents_cannot_be_part_of_a_chain() -> None:
    from llm_abstractions.errors import ConfigurationError

    registry = gpt_registry(fallbacks=("lint",))
    registry.register_agent(
        "lint", "local", interface="script", script={"command": ["python", "lint.py"]}
    )
    executor = TaskExecutor(registry, record=False)
    with pytest.raises(ConfigurationError, match="fallbacks must be API agents"):
        anyio.run(executor.run, [task("a")])


def test_a_token_bucket_gives_back_only_what_it_took() -> None:
    from orchestration.runtime.resilience import RateLimiter

    class Frozen(FakeClock):  # all three callers arrive at the same moment
        async def sleep(self, seconds: float) -> None:
            self.sleeps.append(seconds)

    limiter = RateLimiter(RateLimit(tokens_per_minute=300), Frozen())

    async def scenario() -> list[float]:
        waits = []
        first, taken = await limiter.acquire(1010)  # more than a minute's worth: 300 taken
        second, _ = await limiter.acquire(1010)  # lends the next minute's 300
        assert taken == 300
        limiter.correct(taken, 15)  # the first used 15: 285 come back, not 995
        third, _ = await limiter.acquire(100)
        waits += [first, second, third]
        return waits

    first, second, third = anyio.run(scenario)
    assert first == 0.0 and second == pytest.approx(60.0)
    # Still behind the second caller's loan: 300 - 300 - 300 + 285 - 100 = -115 tokens.
    assert third == pytest.approx(115 / 5)


def test_a_half_open_circuit_lets_exactly_one_probe_through() -> None:
    from orchestration.runtime.resilience import CALL, PROBE, CircuitBreaker

    clock = FakeClock()
    breaker = CircuitBreaker("p", BreakerPolicy(consecutive_failures=2, cooldown_s=10), clock)
    old = breaker.allow()  # a call that started while the circuit was closed
    assert old == CALL
    breaker.failed(breaker.allow() or 0)
    breaker.failed(CALL)
    assert breaker.state == "open" and breaker.allow() is None
    clock.time += 10
    assert breaker.allow() == PROBE and breaker.state == "half_open"
    assert breaker.allow() is None  # one probe at a time
    breaker.abandoned(old)  # the old call's end says nothing about the probe
    breaker.succeeded(old)
    assert breaker.allow() is None and breaker.state == "half_open"
    breaker.failed(PROBE)  # the probe failed: open again, for another cool-down
    assert breaker.state == "open" and breaker.allow() is None
    clock.time += 10
    assert breaker.allow() == PROBE
    breaker.succeeded(PROBE)
    assert breaker.state == "closed" and breaker.allow() == CALL


async def test_two_endpoints_of_one_provider_keep_their_own_cache(
    server: FaultServer, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    same = AgentTask(task_id="q", description="[[task:q]] hello", agent="gpt")
    async with TaskExecutor(gpt_registry(), ledger=ledger, cache=True) as executor:
        await executor.run([same])
    with FaultServer() as other:
        monkeypatch.setenv("OPENAI_BASE_URL", f"{other.url}/v1")
        async with TaskExecutor(gpt_registry(), ledger=ledger, cache=True) as executor:
            await executor.run([same])
        assert len(other.log) == 1  # not answered from the first server's cache
    assert len(server.log) == 1


async def test_a_task_waiting_for_a_rate_limit_lets_other_tasks_use_its_slot(
    ledger: Ledger,
) -> None:
    from llm_abstractions import LlmFactory
    from llm_abstractions.testing import FunctionLlm

    calls: list[str] = []

    def answer(request: Any) -> str:
        calls.append(request.metadata["task_id"])
        return "ok"

    for name in ("limited", "free"):
        LlmFactory.register_provider(name, lambda **_: FunctionLlm(answer), replace=True)
    registry = AgentRegistry()
    registry.register_agent("slow", "limited")
    registry.register_agent("fast", "free")

    class Patient(FakeClock):  # a wait lasts long enough for other tasks to run
        async def sleep(self, seconds: float) -> None:
            await super().sleep(seconds)
            await anyio.sleep(0.2)

    executor = TaskExecutor(
        registry,
        ledger=ledger,
        max_concurrency=1,
        clock=Patient(),
        rate_limits={"limited": RateLimit(requests_per_minute=1)},
    )
    tasks = [AgentTask(task_id=f"s{i}", description="x", agent="slow") for i in range(2)]
    tasks += [AgentTask(task_id=f"f{i}", description="x", agent="fast") for i in range(3)]
    async with executor:
        run = await executor.run(tasks)
    assert run.ok
    # s1 waits 60 s for the rate limit; its one slot runs the fast tasks meanwhile.
    assert calls == ["s0", "f0", "f1", "f2", "s1"]


async def test_cancelling_a_run_while_tasks_wait_for_their_slot_starts_nothing_new(
    ledger: Ledger,
) -> None:
    from llm_abstractions import LlmFactory, LLMRateLimitError
    from llm_abstractions.testing import FunctionLlm

    calls: list[str] = []
    holding = anyio.Event()

    def answer(request: Any) -> str:
        calls.append(request.metadata["task_id"])
        return "ok"

    def refuse(request: Any) -> str:
        calls.append(request.metadata["task_id"])
        raise LLMRateLimitError("slow down", retry_after=7.0)

    async def busy(request: Any) -> str:
        calls.append(request.metadata["task_id"])
        holding.set()
        await anyio.sleep(5.0)
        return "ok"

    for name, handler in (("limited", answer), ("refusing", refuse), ("busy", busy)):
        LlmFactory.register_provider(
            name, lambda handler=handler, **_: FunctionLlm(handler), replace=True
        )
    registry = AgentRegistry()
    registry.register_agent("slow", "limited")
    registry.register_agent("shy", "refusing")
    registry.register_agent("long", "busy")

    class Paced(FakeClock):  # rate-limit waits end soon; the 7 s Retry-After outlasts the test
        async def sleep(self, seconds: float) -> None:
            await super().sleep(seconds)
            await anyio.sleep(10.0 if seconds == 7.0 else 0.05)

    executor = TaskExecutor(
        registry,
        ledger=ledger,
        max_concurrency=1,
        clock=Paced(),
        rate_limits={"limited": RateLimit(requests_per_minute=1)},
    )
    tasks = [AgentTask(task_id=f"s{i}", description="x", agent="slow") for i in range(4)]
    tasks += [AgentTask(task_id=f"r{i}", description="x", agent="shy") for i in range(3)]
    tasks += [AgentTask(task_id=f"q{i}", description="x", agent="long") for i in range(4)]
    async with executor, anyio.create_task_group() as tg:
        tg.start_soon(executor.run, tasks)
        await holding.wait()  # q0 has the one slot; r0 sleeps on its Retry-After
        await anyio.sleep(0.3)  # s1-s3 are done waiting and queue for the slot again
        tg.cancel_scope.cancel()
    # Every waiter gave its slot away for its wait; cancelling them must not hand the slot
    # (or more than it) to q1-q3.
    assert calls == ["s0", "r0", "r1", "r2", "q0"]
    assert executor.last_run is not None
    statuses = {t: r.status.value for t, r in executor.last_run.results.items()}
    cancelled = ["s1", "s2", "s3", "r0", "r1", "r2", "q0", "q1", "q2", "q3"]
    assert statuses == {"s0": "succeeded", **dict.fromkeys(cancelled, "cancelled")}


async def test_a_long_retry_after_is_waited_out_when_no_later_link_can_serve(
    server: FaultServer, ledger: Ledger
) -> None:
    server.plan = FaultPlan(rate=1.0, kinds={"429": 1}, retry_after=120.0, max_faults_per_key=1)
    registry = gpt_registry(fallbacks=("spare",))
    registry.register_agent("spare", "anthropic-claude", api_key="k-anthropic")
    clock = FakeClock()
    executor = TaskExecutor(registry, ledger=ledger, clock=clock)
    async with executor:
        breaker = executor.runner.breaker("anthropic-claude")
        assert breaker is not None
        for _ in range(10):
            breaker.failed(breaker.allow() or 0)  # the spare's circuit is open
        assert breaker.state == "open"
        result = await executor.execute(task("w"))
    assert result.succeeded and clock.sleeps == [60.0]  # the cap, not 120 s, and no move
    assert server.log.kinds_for("w") == ["429", "ok"]
