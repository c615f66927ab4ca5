"""Cost of an attempt, and redaction of secrets from what gets recorded.

Prices come from genai-prices. A model that runs on this machine or on a local server
costs exactly 0; a price that cannot be found is None (unknown), never 0, and is logged.

genai-prices takes about 150 us per call, a sixth of a whole call on a fast server, so a
model whose price is flat (no tiers, no price varying with time or context) is priced with
its per-token rates, read once per model from genai-prices itself and checked against it
(``_LinearPrice.of``); other models go through genai-prices on every call.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from llm_abstractions.types import Usage

if TYPE_CHECKING:
    from orchestration.model.agent_registry import AgentConfig

__all__ = ["agent_secrets", "context_window", "cost_of", "redact"]

_log = logging.getLogger(__name__)
LOCAL_PROVIDERS = frozenset({"local", "ollama", "lmstudio"})
# Our provider names -> genai-prices provider ids.
_PRICE_PROVIDER = {
    "anthropic-claude": "anthropic",
    "openai-gpt": "openai",
    "google-gemini": "google",
    "huggingface": "huggingface",
}
# Shapes of common API keys, caught even when the key itself is not known to us.
# Each alternative starts with a literal that ``redact`` looks for first: keep them in step.
_KEY_SHAPES = re.compile(
    r"(sk-(?:ant-)?[A-Za-z0-9_\-]{8,}|AIza[A-Za-z0-9_\-]{20,}|hf_[A-Za-z0-9]{10,}"
    r"|(?i:bearer)\s+[A-Za-z0-9._\-]{12,})"
)


def cost_of(provider: str, model: str | None, usage: Usage) -> tuple[float | None, str]:
    """The price of one call in USD and where it came from.

    Returns:
        ``(0.0, "local")`` for local models; ``(price, "genai-prices")`` when known;
        ``(None, reason)`` when the price or the token counts are unknown.
    """
    if provider in LOCAL_PROVIDERS:
        return 0.0, "local"
    if usage.input_tokens is None or usage.output_tokens is None or model is None:
        return None, "unknown: token counts not reported"
    provider_id = _PRICE_PROVIDER.get(provider)
    if provider_id is None:
        return None, f"unknown: no price data for provider {provider}"
    counts = (
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_read_tokens or 0,
        usage.cache_write_tokens or 0,
    )
    try:
        key = (provider_id, model)
        if key not in _linear:
            _linear[key] = _LinearPrice.of(provider_id, model)
        linear = _linear[key]
        if linear is not None:
            return float(linear.price(*counts)), "genai-prices"
        price = _genai_price(provider_id, model, *counts)
    except LookupError:
        _log.warning("no price for %s model %s; cost recorded as unknown", provider, model)
        return None, f"unknown: genai-prices has no price for {model}"
    except Exception as exc:  # counts it cannot price, or a bug in the price data
        # An answer that was paid for must not be lost to its price: it is recorded unknown.
        _log.warning("cannot price %s model %s: %s", provider, model, exc)
        return None, f"unknown: {exc}"
    return float(price), "genai-prices"


def context_window(provider: str, model: str | None) -> int | None:
    """The model's context window in tokens, as genai-prices knows it (None: unknown).

    genai-prices keeps no separate output limit; the window bounds input and output together.
    """
    provider_id = _PRICE_PROVIDER.get(provider)
    if provider_id is None or model is None:
        return None
    key = (provider_id, model)
    if key not in _windows:
        from genai_prices import data_snapshot

        try:
            _, info = data_snapshot.get_snapshot().find_provider_model(
                model, None, provider_id, None
            )
        except LookupError:
            _windows[key] = None
        else:
            _windows[key] = info.context_window
    return _windows[key]


_windows: dict[tuple[str, str], int | None] = {}


def _genai_price(
    provider_id: str, model: str, input_: int, output: int, cache_read: int, cache_write: int
) -> Decimal:
    from genai_prices import Usage as PriceUsage
    from genai_prices import calc_price

    priced = PriceUsage(
        input_tokens=input_,
        output_tokens=output,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
    )
    return calc_price(priced, model_ref=model, provider_id=provider_id).total_price


_MTOK = 1_000_000


@dataclass(frozen=True, slots=True)
class _LinearPrice:
    """A flat price: USD per token of each kind, plus any price per request.

    Input tokens include cache reads and writes (as genai-prices counts them); the rest of
    the input is priced at the plain input rate.
    """

    fixed: Decimal
    input: Decimal
    output: Decimal
    cache_read: Decimal
    cache_write: Decimal

    def price(self, input_: int, output: int, cache_read: int, cache_write: int) -> Decimal:
        return (
            self.fixed
            + self.input * (input_ - cache_read - cache_write)
            + self.output * output
            + self.cache_read * cache_read
            + self.cache_write * cache_write
        )

    @classmethod
    def of(cls, provider_id: str, model: str) -> _LinearPrice | None:
        """The model's flat price, or None when genai-prices must price each call.

        The rates are genai-prices' own answers for a million tokens of each kind, and the
        result must agree with genai-prices on a mixed call, or it is not used.

        Raises:
            LookupError: genai-prices does not know the model.
        """
        from genai_prices import data_snapshot, types

        _, info = data_snapshot.get_snapshot().find_provider_model(model, None, provider_id, None)
        prices = info.prices
        # Price variants (service tier, batch) apply only to a price context; we pass none.
        if not isinstance(prices, types.ModelPrice):
            return None  # the price depends on the time
        if any(isinstance(rate, types.TieredPrices) for rate in vars(prices).values()):
            return None  # the price depends on the prompt's length

        def per_token(*counts: int) -> Decimal:
            return (_genai_price(provider_id, model, *counts) - fixed) / _MTOK

        fixed = _genai_price(provider_id, model, 0, 0, 0, 0)
        linear = cls(
            fixed=fixed,
            input=per_token(_MTOK, 0, 0, 0),
            output=per_token(0, _MTOK, 0, 0),
            cache_read=per_token(_MTOK, 0, _MTOK, 0),
            cache_write=per_token(_MTOK, 0, 0, _MTOK),
        )
        check = (7_654_321, 1_234_567, 2_345_678, 1_111_111)
        return linear if linear.price(*check) == _genai_price(provider_id, model, *check) else None


# (genai-prices provider id, model) -> its flat price, or None: priced by genai-prices.
_linear: dict[tuple[str, str], _LinearPrice | None] = {}


_MARK = "[REDACTED]"
# Any run of this many characters of a known secret is masked, wherever it appears: a text
# cut at a length limit keeps a piece of a key, which no longer matches the key whole. Eight
# characters of a random key (base 62: about 2^47 values) do not occur in text by chance,
# and a cut leaves at most seven characters of a key at each end of the window.
_PIECE = 8
_PROBE = 4  # characters looked up at every _STRIDE-th position of the text
_STRIDE = _PIECE - _PROBE + 1  # so that every run of _PIECE holds a whole probe there
# Of a shorter secret only the whole is masked: eight characters are most of it, and could
# well be an ordinary word.
_PIECES_FROM = 12


def redact(text: str | None, secrets: Iterable[str] = ()) -> str | None:
    """``text`` with every known secret and anything shaped like an API key masked.

    A known secret of 12 characters or more is masked in pieces too: any run of 8 of its
    characters (what a cut at a length limit leaves of it). The work is linear in the
    text (a few milliseconds for 100 KB).
    """
    if text is None:
        return None
    if secrets:
        unique = set(secrets)
        spans = _pieces(text, [s for s in unique if len(s) >= _PIECES_FROM])
        for secret in unique:
            if 4 <= len(secret) < _PIECES_FROM:
                spans += _occurrences(text, secret)
        if spans:
            text = _mask(text, spans)
    # The shapes' literal starts first: five times faster than the pattern on text with none.
    if "sk-" in text or "AIza" in text or "hf_" in text or "bearer" in text.lower():
        return _KEY_SHAPES.sub(_MARK, text)
    return text


def _pieces(text: str, secrets: list[str]) -> list[tuple[int, int]]:
    """Where a run of ``_PIECE`` characters of one of ``secrets`` occurs in ``text``.

    Any such run holds a whole probe (4 characters of a secret) starting at a multiple of
    the stride (5): the text is looked up there only, and the few places a probe matches
    are checked in full.
    """
    if not secrets:
        return []
    pieces = {s[i : i + _PIECE] for s in secrets for i in range(len(s) - _PIECE + 1)}
    probes = {s[i : i + _PROBE] for s in secrets for i in range(len(s) - _PROBE + 1)}
    hits = [
        at for at in range(0, len(text) - _PROBE + 1, _STRIDE) if text[at : at + _PROBE] in probes
    ]
    return [
        (start, start + _PIECE)
        for at in hits
        for start in range(max(0, at - _PIECE + _PROBE), at + 1)
        if text[start : start + _PIECE] in pieces
    ]


def _occurrences(text: str, needle: str) -> Iterator[tuple[int, int]]:
    """Where ``needle`` occurs in ``text``, overlapping occurrences included."""
    at = text.find(needle)
    while at >= 0:
        yield at, at + len(needle)
        at = text.find(needle, at + 1)


def _mask(text: str, spans: list[tuple[int, int]]) -> str:
    """``text`` with the union of ``spans`` masked, one marker for each run of them."""
    parts: list[str] = []
    kept = 0  # text[:kept] is done
    for start, end in sorted(spans):
        if start > kept:
            parts += (text[kept:start], _MARK)
        elif not parts:
            parts.append(_MARK)  # a span at the very start
        kept = max(kept, end)
    parts.append(text[kept:])
    return "".join(parts)


def agent_secrets(agent: AgentConfig) -> list[str]:
    """Every key this agent could be using: explicit, named variable, provider variables."""
    from llm_abstractions.factory import LlmFactory

    found = [agent.api_key.get_secret_value()] if agent.api_key else []
    names = [agent.api_key_env] if agent.api_key_env else []
    names += LlmFactory.spec(agent.agent_type).env_keys
    return found + [os.environ[name] for name in names if os.environ.get(name)]
