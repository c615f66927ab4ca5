"""Which providers can serve now, and which one serves when none is named.

Both answers come from cheap checks only (is the module importable, is a key set, does a
local server answer), so a CLI can give them without paying for SDK imports.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from llm_abstractions.specs import ProviderSpec

__all__ = ["ProviderChoice", "ProviderStatus", "choose_default", "provider_status"]

# choose_default() tries these in order; the embedded model is the last resort.
_KEYED_DEFAULTS = ("anthropic-claude", "openai-gpt", "google-gemini")
_SERVER_DEFAULTS = ("ollama",)
_LAST_RESORT = "local"


@dataclass(frozen=True)
class ProviderStatus:
    """Whether one provider can serve now, and if not, why."""

    name: str
    ok: bool
    implemented: bool
    installed: bool
    credentials: bool | None
    reachable: bool | None
    reason: str
    default_model: str | None


@dataclass(frozen=True)
class ProviderChoice:
    """The provider ``default_provider`` picked, why, and what it passed over."""

    name: str
    model: str | None
    reason: str
    skipped: tuple[str, ...] = field(default_factory=tuple)


def provider_status(spec: ProviderSpec) -> ProviderStatus:
    """Whether the provider of ``spec`` can serve now, from cheap checks only."""
    reason = spec.unusable_reason()
    credentials = bool(spec.api_key_from_env()) if spec.env_keys else None
    reachable: bool | None = None
    if reason is None and credentials is False:
        reason = f"set {' or '.join(spec.env_keys)}"
    elif reason is None and spec.probe is not None:
        reason = spec.probe()
        reachable = reason is None
    return ProviderStatus(
        name=spec.name,
        ok=reason is None,
        implemented=spec.is_implemented(),
        installed=spec.missing_requirement() is None,
        credentials=credentials,
        reachable=reachable,
        reason=reason or "ready",
        default_model=spec.default_model,
    )


def choose_default(specs: Mapping[str, ProviderSpec], model: str | None) -> ProviderChoice:
    """The provider to use when none is named, among ``specs`` (by name).

    The first of ANTHROPIC_API_KEY, OPENAI_API_KEY, GOOGLE_API_KEY/GEMINI_API_KEY that is
    set, then a reachable Ollama, then the embedded model. A provider that is configured
    but cannot be built (SDK missing, not shipped yet) is passed over and the reason is kept
    in ``skipped``.
    """
    skipped: list[str] = []
    for name in _KEYED_DEFAULTS:
        keyed = specs.get(name)
        if keyed is None or keyed.api_key_from_env() is None:
            continue
        missing = keyed.unusable_reason()
        if missing is None:
            var = next(v for v in keyed.env_keys if os.environ.get(v))
            return ProviderChoice(name, model, f"{var} is set", tuple(skipped))
        skipped.append(f"{name}: key set but {missing}")
    for name in _SERVER_DEFAULTS:
        server = specs.get(name)
        if server is None:
            continue
        unusable = server.unusable_reason()
        if unusable is not None:
            skipped.append(f"{name}: {unusable}")
            continue
        down = server.probe() if server.probe else None
        if down is None:
            return ProviderChoice(name, model, "server reachable", tuple(skipped))
        skipped.append(f"{name}: {down}")
    return ProviderChoice(_LAST_RESORT, model, "no API key or local server found", tuple(skipped))
