"""Which provider and model each role gets: cost-based routing with overrides.

Design and code (``strong`` roles) go to the strongest model of the first configured cloud
provider (Anthropic, then OpenAI, by their keys in the environment); short, formulaic work
(``cheap`` roles) goes to the cheapest configured model by genai-prices' list price. With no
key at all every role runs on the embedded model (``local``), which costs nothing.

Overrides, most specific first:

- ``ORCHESTRA_ROLE_<NAME>`` in the environment, ``provider`` or ``provider:model``
  (``ORCHESTRA_ROLE_BACKEND=openai-gpt:gpt-4.1``);
- a TOML file with a ``[roles.<name>]`` table holding ``provider`` and optionally ``model``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from llm_abstractions.errors import ConfigurationError
from llm_abstractions.types import Usage
from orchestration.ledger.accounting import cost_of

__all__ = ["CATALOG", "ModelChoice", "Role", "Tier", "load_overrides", "route", "route_team"]

Tier = Literal["strong", "cheap"]

# Per provider: the key that configures it, its strongest model, and its cheaper models.
CATALOG: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "anthropic-claude": ("ANTHROPIC_API_KEY", "claude-sonnet-4-6", ("claude-haiku-4-5",)),
    "openai-gpt": ("OPENAI_API_KEY", "gpt-4.1", ("gpt-4.1-mini",)),
}
_PRICE_PROBE = Usage(input_tokens=1_000_000, output_tokens=1_000_000)


class Role(Protocol):
    """What routing needs of a role (a ``SpecialistAgent`` is one): its name and tier."""

    @property
    def name(self) -> str:
        """The role's name, as ``ORCHESTRA_ROLE_<NAME>`` and ``[roles.<name>]`` spell it."""
        ...

    @property
    def tier(self) -> Tier:
        """How strong a model the role needs."""
        ...


@dataclass(frozen=True)
class ModelChoice:
    """The provider and model for one role, and why."""

    provider: str
    model: str | None
    reason: str


def route(
    tier: Tier, *, env: Mapping[str, str] | None = None, override: str | None = None
) -> ModelChoice:
    """The model for a role of ``tier``; ``override`` is a ``provider[:model]`` string."""
    if override:
        provider, _, model = override.partition(":")
        return ModelChoice(provider.strip(), model.strip() or None, "override")
    environ = os.environ if env is None else env
    configured = [name for name, (key, _, _) in CATALOG.items() if environ.get(key)]
    if not configured:
        return ModelChoice("local", None, "no cloud key set: the embedded model")
    if tier == "strong":
        provider = configured[0]
        return ModelChoice(provider, CATALOG[provider][1], "strongest configured model")
    candidates = [(p, m) for p in configured for m in (*CATALOG[p][2], CATALOG[p][1])]
    provider, model = min(candidates, key=lambda pm: _list_price(*pm))
    return ModelChoice(provider, model, "cheapest configured model")


def _list_price(provider: str, model: str) -> float:
    price, _ = cost_of(provider, model, _PRICE_PROBE)
    return float("inf") if price is None else price


def load_overrides(path: Path | None) -> dict[str, str]:
    """``[roles.<name>]`` tables of a TOML file as ``provider[:model]`` strings.

    Raises:
        ConfigurationError: The file cannot be read or a role names no provider.
    """
    if path is None:
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"Cannot read the role file {path}: {exc}") from exc
    overrides = {}
    for name, table in data.get("roles", {}).items():
        if not isinstance(table, dict) or not isinstance(table.get("provider"), str):
            raise ConfigurationError(
                f'{path}: [roles.{name}] needs provider = "..." (and optionally model).'
            )
        model = table.get("model")
        overrides[name] = f"{table['provider']}:{model}" if model else table["provider"]
    return overrides


def route_team(
    roles: Sequence[Role],
    *,
    config: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> dict[str, ModelChoice]:
    """The model of every role, overrides applied (environment over file).

    Raises:
        ConfigurationError: The role file is unreadable or names an unknown role.
    """
    environ = os.environ if env is None else env
    from_file = load_overrides(config)
    unknown = set(from_file) - {role.name for role in roles}
    if unknown:
        raise ConfigurationError(
            f"{config}: unknown roles {sorted(unknown)}; the roles are "
            f"{[role.name for role in roles]}."
        )
    return {
        role.name: route(
            role.tier,
            env=environ,
            override=environ.get(f"ORCHESTRA_ROLE_{role.name.upper()}") or from_file.get(role.name),
        )
        for role in roles
    }
