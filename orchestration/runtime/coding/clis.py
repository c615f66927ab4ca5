"""The coding-agent CLIs Orchestra runs as agents: how to call each, and how to read it.

Each ``CodingCli`` says which executable to run, how to install it, the command line (the
prompt goes on stdin, never in argv, which every user of the machine can read), the
environment it needs (its own key and endpoint, nothing else of ours), and how to read what
it printed: the final message, tokens in OpenTelemetry's terms (input tokens include cached
ones), the CLI's own cost when it gives one, its turns, session and version.

Claude Code (``claude -p --output-format stream-json --verbose``) prints one JSON object a
line: ``system``/``init`` (with ``claude_code_version``), the turns, then ``result`` with
``result``, ``is_error``, ``subtype``, ``num_turns``, ``session_id``, ``total_cost_usd``,
``usage`` (Anthropic's fields: ``input_tokens`` excludes the cache counts) and ``modelUsage``
(per model, in camelCase; read first, since a run stopped at its budget reports its tokens
only there).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Protocol

from llm_abstractions.types import Usage

__all__ = ["CLAUDE_CODE", "CLIS", "CODEX", "CliReport", "CodingCli", "UnreadableOutput"]


class UnreadableOutput(ValueError):
    """What the CLI printed is not what it prints when it works."""


@dataclass(frozen=True)
class CliReport:
    """What a CLI said of its run."""

    text: str
    usage: Usage
    cost_usd: float | None = None  # the CLI's own figure (None: it gives none)
    model: str | None = None
    turns: int | None = None
    session_id: str | None = None
    version: str | None = None
    error: str | None = None  # the CLI ended its run with an error (said in ``text``)
    over_budget: bool = False  # it stopped at the budget it was given
    extra: dict[str, Any] = field(default_factory=dict)


class CodingCli(Protocol):
    """One coding-agent CLI."""

    name: str  # the provider name agents use
    executable: str
    install: str  # the command that installs it
    key_env: tuple[str, ...]  # where the key is read from when an agent gives none
    base_url_env: str  # the driver's variable naming its endpoint
    prices_as: str  # the provider whose prices price its tokens when it gives no cost
    version_args: tuple[str, ...]  # how to ask its version, when its output does not say

    def argv(
        self, executable: str, model: str | None, budget_usd: float | None, base_url: str | None
    ) -> list[str]:
        """The command line (the prompt goes on stdin)."""
        ...

    def env(self, api_key: str | None, base_url: str | None, home: str) -> dict[str, str]:
        """The environment: its key and endpoint, a home of its own, no telemetry."""
        ...

    def read(self, stdout: bytes) -> CliReport:
        """What it printed, read.

        Raises:
            UnreadableOutput: Not its output format.
        """
        ...


class ClaudeCode:
    """Anthropic's Claude Code, in print mode with its stream-json output."""

    name = "claude-code"
    executable = "claude"
    install = "npm install -g @anthropic-ai/claude-code"
    key_env: tuple[str, ...] = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN")
    base_url_env = "ANTHROPIC_BASE_URL"
    prices_as = "anthropic-claude"
    version_args: tuple[str, ...] = ("--version",)

    def argv(
        self, executable: str, model: str | None, budget_usd: float | None, base_url: str | None
    ) -> list[str]:
        """``claude -p`` reading the prompt from stdin, edits allowed in its directory."""
        argv = [executable, "-p", "--output-format", "stream-json", "--verbose"]
        argv += ["--permission-mode", "acceptEdits"]
        if model:
            argv += ["--model", model]
        if budget_usd is not None:
            argv += ["--max-budget-usd", f"{budget_usd:.6f}"]
        return argv

    def env(self, api_key: str | None, base_url: str | None, home: str) -> dict[str, str]:
        """Its key, its endpoint, a home of its own, and no traffic but the model's.

        The key goes as ``ANTHROPIC_API_KEY``, or as ``ANTHROPIC_AUTH_TOKEN`` (a gateway's
        bearer token) when that is where it came from.
        """
        env = {
            "HOME": home,
            "DISABLE_TELEMETRY": "1",
            "DISABLE_AUTOUPDATER": "1",
            "DISABLE_ERROR_REPORTING": "1",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        }
        if api_key:
            # A gateway's bearer token (ANTHROPIC_AUTH_TOKEN) stays one; otherwise an API key.
            bearer = not os.environ.get("ANTHROPIC_API_KEY") and (
                os.environ.get("ANTHROPIC_AUTH_TOKEN") == api_key
            )
            env["ANTHROPIC_AUTH_TOKEN" if bearer else "ANTHROPIC_API_KEY"] = api_key
        if base_url:
            env["ANTHROPIC_BASE_URL"] = base_url
        return env

    def read(self, stdout: bytes) -> CliReport:
        """The ``result`` line, with the version from ``init``."""
        events = _json_lines(stdout)
        version = next(
            (e.get("claude_code_version") for e in events if e.get("subtype") == "init"), None
        )
        result = next((e for e in reversed(events) if e.get("type") == "result"), None)
        if result is None:
            raise UnreadableOutput("claude printed no result line")
        per_model = result.get("modelUsage") or {}
        if per_model:  # every model's tokens (``usage`` is left at 0 when a budget stops it)
            rows = [row for row in per_model.values() if isinstance(row, dict)]
            fresh = _sum(rows, "inputTokens")
            cached = _sum(rows, "cacheReadInputTokens")
            created = _sum(rows, "cacheCreationInputTokens")
            output = _sum(rows, "outputTokens")
        else:
            usage = result.get("usage") or {}
            fresh = _count(usage.get("input_tokens"))
            cached = _count(usage.get("cache_read_input_tokens"))
            created = _count(usage.get("cache_creation_input_tokens"))
            output = _count(usage.get("output_tokens"))
        total_in = None if fresh is None else fresh + (cached or 0) + (created or 0)
        # The model that wrote the most (a helper model may have answered on the side).
        models = sorted(
            per_model,
            key=lambda name: -(_count((per_model[name] or {}).get("outputTokens")) or 0),
        )
        subtype = str(result.get("subtype") or "")
        failed = bool(result.get("is_error")) or subtype.startswith("error")
        text = result.get("result")
        return CliReport(
            text=text if isinstance(text, str) else "",
            usage=Usage(
                input_tokens=total_in,
                output_tokens=output,
                cache_read_tokens=cached,
                cache_write_tokens=created,
            ),
            cost_usd=_amount(result.get("total_cost_usd")),
            model=models[0].partition("[")[0] if models else None,
            turns=_count(result.get("num_turns")),
            session_id=result.get("session_id"),
            version=version,
            error=(subtype if subtype.startswith("error") else "an error") if failed else None,
            over_budget="budget" in subtype,
        )


class Codex:
    """OpenAI's Codex CLI: ``codex exec --json``, its events one JSON object a line.

    ``thread.started`` (``thread_id``), ``item.completed`` items (``agent_message`` text,
    ``command_execution``...), ``turn.completed`` with ``usage`` (``input_tokens``, which
    include ``cached_input_tokens``, ``output_tokens``, ``reasoning_output_tokens``), or
    ``turn.failed``/``error``. No cost: its tokens are priced at OpenAI's prices. An endpoint
    other than OpenAI's is given as a model provider of its own speaking the Responses API
    (``-c model_providers.orchestra...``); it works in a ``workspace-write`` sandbox.
    """

    name = "codex"
    executable = "codex"
    install = "npm install -g @openai/codex"
    key_env: tuple[str, ...] = ("OPENAI_API_KEY",)
    base_url_env = "OPENAI_BASE_URL"
    prices_as = "openai-gpt"
    version_args: tuple[str, ...] = ("--version",)

    def argv(
        self, executable: str, model: str | None, budget_usd: float | None, base_url: str | None
    ) -> list[str]:
        """``codex exec --json -`` (the prompt from stdin), writing in its directory only."""
        argv = [executable, "exec", "--json", "--skip-git-repo-check"]
        argv += ["--sandbox", "workspace-write"]
        if base_url:
            argv += [
                "-c",
                "model_provider=orchestra",
                "-c",
                'model_providers.orchestra.name="orchestra"',
                "-c",
                f"model_providers.orchestra.base_url={json.dumps(base_url)}",
                "-c",
                'model_providers.orchestra.env_key="OPENAI_API_KEY"',
                "-c",
                'model_providers.orchestra.wire_api="responses"',
            ]
        if model:
            argv += ["-m", model]
        return [*argv, "-"]

    def env(self, api_key: str | None, base_url: str | None, home: str) -> dict[str, str]:
        """``OPENAI_API_KEY``, and a home (``CODEX_HOME``) of its own."""
        codex_home = os.path.join(home, ".codex")
        os.makedirs(codex_home, exist_ok=True)
        env = {"HOME": home, "CODEX_HOME": codex_home}
        if api_key:
            env["OPENAI_API_KEY"] = api_key
        return env

    def read(self, stdout: bytes) -> CliReport:
        """The last agent message, the turns' usage summed, and how the run ended."""
        events = _json_lines(stdout)
        messages = [
            str(item.get("text") or "")
            for event in events
            if event.get("type") == "item.completed"
            and isinstance(item := event.get("item"), dict)
            and item.get("type") == "agent_message"
        ]
        turns = [e for e in events if e.get("type") == "turn.completed"]
        # A turn that failed ends the run; an ``error`` event alone may be a retry it made.
        failed = [e for e in events if e.get("type") == "turn.failed"] or (
            [] if turns else [e for e in events if e.get("type") == "error"]
        )
        if not turns and not failed:
            raise UnreadableOutput("codex printed no turn.completed or turn.failed event")
        usages = [t.get("usage") or {} for t in turns]
        error = None
        if failed:
            said = failed[-1].get("error") or failed[-1]
            error = str(said.get("message") if isinstance(said, dict) else said)
        thread = next(
            (e.get("thread_id") for e in events if e.get("type") == "thread.started"), None
        )
        return CliReport(
            text=messages[-1] if messages else (error or ""),
            usage=Usage(
                input_tokens=_sum(usages, "input_tokens") if usages else None,
                output_tokens=_sum(usages, "output_tokens") if usages else None,
                cache_read_tokens=_sum(usages, "cached_input_tokens") if usages else None,
                reasoning_tokens=_sum(usages, "reasoning_output_tokens") if usages else None,
            ),
            turns=len(turns) or None,
            session_id=thread,
            error="turn failed" if error is not None else None,
        )


CLAUDE_CODE = ClaudeCode()
CODEX = Codex()
CLIS: dict[str, CodingCli] = {cli.name: cli for cli in (CLAUDE_CODE, CODEX)}


def _json_lines(stdout: bytes) -> list[dict[str, Any]]:
    events = []
    for line in stdout.decode("utf-8", "replace").splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue  # a CLI's own notices between the events
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict):
            events.append(event)
    if not events:
        raise UnreadableOutput("it printed no JSON events")
    return events


def _sum(rows: list[dict[str, Any]], name: str) -> int | None:
    counts = [_count(row.get(name)) for row in rows]
    return None if any(c is None for c in counts) else sum(c or 0 for c in counts)


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _amount(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None
