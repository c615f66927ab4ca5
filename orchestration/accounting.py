"""Cost of an attempt, and redaction of secrets from what gets recorded.

Prices come from genai-prices. A model that runs on this machine or on a local server
costs exactly 0; a price that cannot be found is None (unknown), never 0, and is logged.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from llm_abstractions.types import Usage

if TYPE_CHECKING:
    from orchestration.agent_registry import AgentConfig

__all__ = ["agent_secrets", "cost_of", "redact"]

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
    from genai_prices import Usage as PriceUsage
    from genai_prices import calc_price

    priced = PriceUsage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
    )
    try:
        price = calc_price(priced, model_ref=model, provider_id=provider_id)
    except LookupError:
        _log.warning("no price for %s model %s; cost recorded as unknown", provider, model)
        return None, f"unknown: genai-prices has no price for {model}"
    except Exception as exc:  # counts it cannot price, or a bug in the price data
        # An answer that was paid for must not be lost to its price: it is recorded unknown.
        _log.warning("cannot price %s model %s: %s", provider, model, exc)
        return None, f"unknown: {exc}"
    return float(price.total_price), "genai-prices"


def redact(text: str | None, secrets: Iterable[str] = ()) -> str | None:
    """``text`` with every known secret and anything shaped like an API key masked."""
    if text is None:
        return None
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[REDACTED]")
    return _KEY_SHAPES.sub("[REDACTED]", text)


def agent_secrets(agent: AgentConfig) -> list[str]:
    """Every key this agent could be using: explicit, named variable, provider variables."""
    from llm_abstractions.factory import LlmFactory

    found = [agent.api_key.get_secret_value()] if agent.api_key else []
    names = [agent.api_key_env] if agent.api_key_env else []
    names += LlmFactory.spec(agent.agent_type).env_keys
    return found + [os.environ[name] for name in names if os.environ.get(name)]
