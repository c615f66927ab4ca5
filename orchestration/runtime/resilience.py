"""What gets tasks through failing providers: retries, rate limits, circuit breakers, budgets.

These are the executor's policies and the state they keep; ``orchestration.runtime.chain`` applies
them to each task. Vendor SDKs' own retries stay off (every provider sets ``max_retries=0``)
so that every try is the executor's, counted and recorded.

Time comes from a ``Clock`` (``SystemClock`` unless one is injected), so tests can check
waits (``Retry-After``, backoff, cool-downs, rate limits) without sleeping through them.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections import deque
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

import anyio

from llm_abstractions.errors import ConfigurationError
from llm_abstractions.types import LlmRequest

__all__ = [
    "CALL",
    "PROBE",
    "BreakerPolicy",
    "Budget",
    "BreakerState",
    "CircuitBreaker",
    "Clock",
    "RateLimit",
    "RateLimiter",
    "RetryPolicy",
    "SystemClock",
    "Waiting",
    "estimate_tokens",
    "text_tokens",
]

# Where a task waits (for a backoff, a rate limit, a budget): the executor's gives its
# concurrency slot back for the wait.
Waiting = Callable[[], AbstractAsyncContextManager[object]]

# Output tokens assumed for a request that sets no max_tokens, for budgets and rate limits.
DEFAULT_OUTPUT_ESTIMATE = 1024


class Clock(Protocol):
    """Where the executor's policies read the time and wait."""

    def now(self) -> float:
        """Seconds on a monotonic clock."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds``."""
        ...


class SystemClock:
    """The real clock: ``time.monotonic`` and ``anyio.sleep``."""

    def now(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """``anyio.sleep(seconds)``."""
        await anyio.sleep(seconds)


def _positive(owner: str, **values: float | None) -> None:
    for name, value in values.items():
        if value is not None and not value > 0:
            raise ConfigurationError(f"{owner}: {name} must be greater than 0, not {value!r}.")


@dataclass(frozen=True)
class RetryPolicy:
    """How often, and after how long, a failed attempt is tried again on the same provider.

    Only failures that retrying can fix are retried (rate limits, overload, 5xx, timeouts,
    lost connections, cut or malformed answers): never authentication, a bad request, a
    prompt too long for the model or refused content. An answer that says when to come back
    (a 429 or 529 with ``Retry-After``) is a request to wait, not a failed attempt: it is
    waited out and does not count against ``max_attempts``; ``max_total_s`` bounds it.

    Five attempts by default: at a 30% rate of faults (a fifth of calls failing for good
    reasons besides rate limits), one task in about 3,000 would fail all five.

    Attributes:
        max_attempts: Tries per provider of a task's fallback chain, the first included
            (answers that asked to wait with ``Retry-After`` not counted).
        max_total_s: Time a task may spend on all its attempts and waits; none starts later.
        base_delay_s: Wait before the first retry; doubled for each retry after it.
        max_delay_s: Longest backoff wait.
        retry_after_cap_s: Longest wait a provider's ``Retry-After`` can impose.
        jitter: Share of each backoff wait that is random (0: none, 1: all of it).
        max_output_retries: Times a task whose answer its output contract refused is asked
            again (with the reason), on top of ``max_attempts``; then the task fails.
    """

    max_attempts: int = 5
    max_total_s: float = 600.0
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    retry_after_cap_s: float = 60.0
    jitter: float = 0.5
    max_output_retries: int = 2

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigurationError("RetryPolicy: max_attempts must be at least 1.")
        if self.max_output_retries < 0:
            raise ConfigurationError("RetryPolicy: max_output_retries cannot be negative.")
        _positive("RetryPolicy", max_total_s=self.max_total_s)
        if min(self.base_delay_s, self.max_delay_s, self.retry_after_cap_s) < 0:
            raise ConfigurationError("RetryPolicy: waits cannot be negative.")
        if not 0 <= self.jitter <= 1:
            raise ConfigurationError("RetryPolicy: jitter must be between 0 and 1.")

    @classmethod
    def never(cls) -> RetryPolicy:
        """One attempt per provider: failures go straight to the fallback chain."""
        return cls(max_attempts=1)

    def backoff(self, retry: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first retry).

        A provider's ``Retry-After`` wins, up to ``retry_after_cap_s``; otherwise the wait
        doubles from ``base_delay_s`` up to ``max_delay_s``, its ``jitter`` share random.
        """
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.retry_after_cap_s)
        ceiling = min(self.max_delay_s, self.base_delay_s * 2.0 ** (retry - 1))
        return ceiling * (1 - self.jitter) + rng.uniform(0, ceiling * self.jitter)


@dataclass(frozen=True)
class RateLimit:
    """A provider's limits: requests and tokens (input plus output) per minute.

    A task that would exceed them waits for room; it does not fail. Tokens are estimated
    before the call (``estimate_tokens``) and corrected from the usage the provider reports.
    """

    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None

    def __post_init__(self) -> None:
        _positive(
            "RateLimit",
            requests_per_minute=self.requests_per_minute,
            tokens_per_minute=self.tokens_per_minute,
        )


class _Bucket:
    """A token bucket that lends: taking more than is there reserves the next refills.

    Callers queue in the order they took, each waiting until its share has refilled.
    """

    __slots__ = ("capacity", "level", "per_second", "updated")

    def __init__(self, per_minute: float, now: float) -> None:
        self.capacity = per_minute
        self.per_second = per_minute / 60.0
        self.level = per_minute
        self.updated = now

    def take(self, amount: float, now: float) -> tuple[float, float]:
        """Take ``amount``, at most the capacity (one call may always go, however big).

        Returns:
            The seconds until what was taken is covered, and how much was taken.
        """
        self.level = min(self.capacity, self.level + (now - self.updated) * self.per_second)
        self.updated = now
        taken = min(amount, self.capacity)
        self.level -= taken
        return max(0.0, -self.level / self.per_second), taken

    def give_back(self, amount: float) -> None:
        """Return an over-estimate (negative: charge an under-estimate)."""
        self.level = min(self.capacity, self.level + amount)


class RateLimiter:
    """One provider's ``RateLimit`` in force: buckets for requests and tokens."""

    def __init__(self, limit: RateLimit, clock: Clock) -> None:
        now = clock.now()
        self.clock = clock
        self.requests = (
            _Bucket(limit.requests_per_minute, now) if limit.requests_per_minute else None
        )
        self.tokens = _Bucket(limit.tokens_per_minute, now) if limit.tokens_per_minute else None

    async def acquire(
        self, tokens: int, waiting: Waiting = contextlib.nullcontext, within: float | None = None
    ) -> tuple[float, float | None]:
        """Wait until one request of about ``tokens`` tokens fits (inside ``waiting()``).

        Returns:
            The seconds waited, and the tokens taken (pass them to ``correct``). When the
            wait would be longer than ``within`` seconds, nothing is taken or waited:
            ``(0.0, None)``.
        """
        now = self.clock.now()
        wait = taken = 0.0
        if self.requests is not None:
            wait, _ = self.requests.take(1, now)
        if self.tokens is not None:
            token_wait, taken = self.tokens.take(tokens, now)
            wait = max(wait, token_wait)
        if within is not None and wait > within:
            self.refund(taken)
            return 0.0, None
        if wait > 0:
            async with waiting():
                await self.clock.sleep(wait)
        return wait, taken

    def correct(self, taken: float, used: int | None) -> None:
        """Replace a call's estimate by the tokens it really used (when reported)."""
        if self.tokens is not None and used is not None:
            self.tokens.give_back(taken - used)

    def refund(self, taken: float) -> None:
        """Give back a request that was not made after all, and its tokens."""
        if self.requests is not None:
            self.requests.give_back(1)
        if self.tokens is not None:
            self.tokens.give_back(taken)


def estimate_tokens(request: LlmRequest) -> tuple[int, int]:
    """Input and output tokens a request may use, before it is sent.

    Input: ``text_tokens`` of its text, plus a few per message (no tokenizer is loaded: this
    runs for every task). Output: ``max_tokens``, else ``DEFAULT_OUTPUT_ESTIMATE``.
    """
    texts = [request.system or "", *(m.content for m in request.messages)]
    return sum(map(text_tokens, texts)) + 4 * (len(request.messages) + 1), (
        request.max_tokens or DEFAULT_OUTPUT_ESTIMATE
    )


def text_tokens(text: str) -> int:
    """About how many tokens ``text`` is, erring high for text beyond ASCII.

    English runs about four characters a token; other scripts take more: a token per
    character or more for Chinese and Japanese, one per two or three for Cyrillic or Greek.
    So each character counts a quarter, and each byte past the first of a character's UTF-8
    encoding a half (ASCII 0.25 a character, Cyrillic 0.75, CJK 1.25, an emoji 1.75).
    """
    if text.isascii():
        return math.ceil(len(text) / 4)
    extra = len(text.encode("utf-8", "surrogatepass")) - len(text)
    return math.ceil(len(text) / 4 + extra / 2)


class BreakerState(StrEnum):
    """Where a circuit breaker is."""

    CLOSED = "closed"  # calls go through
    OPEN = "open"  # calls go straight to the fallback until the cool-down ends
    HALF_OPEN = "half_open"  # one probe call is let through; the others wait for its outcome


@dataclass(frozen=True)
class BreakerPolicy:
    """When a provider's circuit opens, and for how long.

    A breaker is for outages, not for the noise of a busy provider: by default ten failures
    in a row, or half of the last 50 calls (once 30 were made), open it. At a 25% rate of
    random failures that happens about once in 45,000 calls (simulated; five in a row or half
    of 20, the defaults before, opened it 31 times in 10,000); a provider that is down opens
    it within ten calls. A task that meets an open circuit goes to its fallback, or, with none
    that could serve, waits for the probe (within its ``max_total_s``): it does not fail.

    Attributes:
        consecutive_failures: Failures in a row that open the circuit.
        failure_rate: Share of failures among the last ``window`` calls that opens it...
        window: ...
        min_calls: ...once the window holds at least this many calls.
        cooldown_s: Time an open circuit waits before letting one probe call through.
    """

    consecutive_failures: int = 10
    failure_rate: float = 0.5
    window: int = 50
    min_calls: int = 30
    cooldown_s: float = 30.0

    def __post_init__(self) -> None:
        if self.consecutive_failures < 1 or self.window < 1 or self.min_calls < 1:
            raise ConfigurationError("BreakerPolicy: counts must be at least 1.")
        if not 0 < self.failure_rate <= 1:
            raise ConfigurationError("BreakerPolicy: failure_rate must be in (0, 1].")
        _positive("BreakerPolicy", cooldown_s=self.cooldown_s)


PROBE = 1  # a ticket: the one call a half-open circuit lets through
CALL = 0  # a ticket: an ordinary call of a closed circuit


@dataclass
class CircuitBreaker:
    """One provider's circuit breaker.

    Only failures of the provider count: overload, 5xx, timeouts, lost connections, cut or
    malformed answers. A rate limit does not (the provider is up and says when to come
    back), nor does an overload that says when to come back (``Retry-After``), nor a
    request it rightly refused. ``allow`` hands out a ticket; the call's
    outcome is reported with it, so that only the probe's own outcome decides a half-open
    circuit. ``on_change`` is called on every change of state.
    """

    provider: str
    policy: BreakerPolicy
    clock: Clock
    on_change: Callable[[CircuitBreaker], None] | None = None
    state: BreakerState = BreakerState.CLOSED
    consecutive: int = 0
    opened_at: float | None = None
    recent: deque[bool] = field(default_factory=deque)  # True: a failure
    _probing: bool = False
    _settled: anyio.Event | None = None  # set when the state changes or a probe is given up
    changes: int = 0  # state changes and probes given up so far (see ``settled``)

    def allow(self) -> int | None:
        """A ticket for a call now (``CALL`` or ``PROBE``), or None: the circuit is open."""
        if self.state is BreakerState.CLOSED:
            return CALL
        if self.state is BreakerState.OPEN:
            assert self.opened_at is not None  # noqa: S101 - set when opened
            if self.clock.now() - self.opened_at < self.policy.cooldown_s:
                return None
            self._change(BreakerState.HALF_OPEN)
        if self._probing:
            return None
        self._probing = True
        return PROBE

    def succeeded(self, ticket: int) -> None:
        """The provider answered the call (or refused it for the caller's own mistake)."""
        if ticket == PROBE:
            self._probing = False
            self.recent.clear()
            self._change(BreakerState.CLOSED)
        if self.state is BreakerState.CLOSED:
            self.consecutive = 0
            self._remember(False)

    def failed(self, ticket: int) -> None:
        """The provider failed the call."""
        if ticket == PROBE:
            self._probing = False
            self._open()
            return
        if self.state is not BreakerState.CLOSED:
            return  # a call from before the circuit opened: it is open already
        self.consecutive += 1
        self._remember(True)
        calls = len(self.recent)
        rate = sum(self.recent) / calls
        if self.consecutive >= self.policy.consecutive_failures or (
            calls >= self.policy.min_calls and rate >= self.policy.failure_rate
        ):
            self._open()

    def would_allow(self) -> bool:
        """Whether ``allow`` would hand out a ticket now (without taking one)."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            assert self.opened_at is not None  # noqa: S101 - set when opened
            return self.clock.now() - self.opened_at >= self.policy.cooldown_s
        return not self._probing

    def abandoned(self, ticket: int) -> None:
        """The call ended without a verdict on the provider (cancelled, not sent)."""
        if ticket == PROBE:
            self._probing = False
            self._wake()  # another caller may probe instead

    def cooldown_left(self) -> float:
        """Seconds until an open circuit lets its probe through (0: it would now)."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        assert self.opened_at is not None  # noqa: S101 - set when opened
        return max(0.0, self.policy.cooldown_s - (self.clock.now() - self.opened_at))

    async def settled(self, seen: int) -> None:
        """Wait until the circuit changes state or its probe is given up.

        ``seen`` is ``changes`` when the caller last looked: a change since then (while the
        caller gave its slot back, say) returns at once instead of waiting for the next.
        """
        if self.changes != seen:
            return
        if self._settled is None:
            self._settled = anyio.Event()
        await self._settled.wait()

    def opened_elsewhere(self, seconds_ago: float) -> None:
        """Open a closed circuit as another process did ``seconds_ago`` (read from the ledger).

        Not if its cool-down has passed since (the next call is then its probe anyway).
        """
        if self.state is not BreakerState.CLOSED or seconds_ago >= self.policy.cooldown_s:
            return
        self.opened_at = self.clock.now() - max(0.0, seconds_ago)
        self.state = BreakerState.OPEN  # not through _change: it is recorded already
        self._wake()

    def _wake(self) -> None:
        self.changes += 1
        if self._settled is not None:
            self._settled.set()
            self._settled = None

    def _open(self) -> None:
        self.opened_at = self.clock.now()
        self._change(BreakerState.OPEN)

    def _remember(self, failure: bool) -> None:
        self.recent.append(failure)
        if len(self.recent) > self.policy.window:
            self.recent.popleft()

    def _change(self, state: BreakerState) -> None:
        if state is self.state:
            return
        self.state = state
        self._wake()
        if self.on_change is not None:
            self.on_change(self)


class Budget:
    """A run's spending limit: what was spent, and what tasks in flight may still spend.

    A task starts only if spent plus reserved plus its own estimate fits, so the run cannot
    overspend by more than the estimates of tasks in flight were wrong by. A task that would
    fit once tasks in flight have settled waits for them instead of being refused.
    """

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.spent = 0.0
        self.reserved = 0.0
        self._settled = anyio.Event()

    async def admit(self, estimate: float, waiting: Waiting = contextlib.nullcontext) -> bool:
        """Reserve ``estimate`` once it fits; False if it cannot fit even then.

        Any wait happens inside ``waiting()`` (the executor gives the task's slot back).
        """
        while self.spent + self.reserved + estimate > self.limit:
            if self.spent + estimate > self.limit or self.reserved == 0:
                return False
            async with waiting():
                await self._settled.wait()  # what is in flight may cost less than reserved
        self.reserved += estimate
        return True

    def settle(self, estimate: float, cost: float) -> None:
        """A task admitted with ``estimate`` ended having spent ``cost``."""
        self.reserved = max(0.0, self.reserved - estimate)
        self.spent += cost
        self._settled.set()
        self._settled = anyio.Event()
