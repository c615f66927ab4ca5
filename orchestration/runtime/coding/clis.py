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
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from llm_abstractions.types import Usage

__all__ = [
    "AIDER",
    "CLAUDE_CODE",
    "CLIS",
    "CODEX",
    "GEMINI_CLI",
    "CliReport",
    "CodingCli",
    "UnreadableOutput",
]


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
    per_model: dict[str, Usage] = field(default_factory=dict)  # each model's own tokens
    extra: dict[str, Any] = field(default_factory=dict)  # more to record with the attempt


class CodingCli(Protocol):
    """One coding-agent CLI."""

    name: str  # the provider name agents use
    executable: str
    install: str  # the command that installs it
    key_env: tuple[str, ...]  # where the key is read from when an agent gives none
    version_args: tuple[str, ...]  # how to ask its version, when its output does not say
    prompt_file: str | None  # where in its home the prompt goes (None: on stdin)
    own_files: tuple[str, ...]  # what it writes for itself in its directory (not its work)
    keeps_budget: bool  # it stops itself at the budget it is given (in ``argv``)

    def endpoint_env(self, model: str | None) -> str:
        """The variable naming the endpoint it talks to, for ``model``."""
        ...

    def default_endpoint(self, model: str | None) -> str:
        """The endpoint it talks to when none is given, for ``model``."""
        ...

    def priced_as(self, model: str) -> tuple[str, str]:
        """The provider and model whose prices price its tokens, when it gives no cost."""
        ...

    def argv(
        self,
        executable: str,
        model: str | None,
        budget_usd: float | None,
        base_url: str | None,
        home: str,
    ) -> list[str]:
        """The command line (the prompt goes on stdin, or in ``prompt_file``)."""
        ...

    def env(
        self, api_key: str | None, base_url: str | None, home: str, model: str | None
    ) -> dict[str, str]:
        """The environment: its key and endpoint, a home of its own, no telemetry."""
        ...

    def read(self, stdout: bytes, stderr: str, home: str) -> CliReport:
        """What it printed (and wrote in its home), read.

        Raises:
            UnreadableOutput: Not its output format.
        """
        ...


class _Cli:
    """What most CLIs share: the prompt on stdin, their own files nowhere, one endpoint."""

    base_url_env: str
    endpoint: str
    prices_as: str
    version_args: tuple[str, ...] = ("--version",)
    prompt_file: str | None = None
    own_files: tuple[str, ...] = ()
    keeps_budget = False

    def endpoint_env(self, model: str | None) -> str:
        """``base_url_env``, whatever the model."""
        return self.base_url_env

    def default_endpoint(self, model: str | None) -> str:
        """``endpoint``, whatever the model."""
        return self.endpoint

    def priced_as(self, model: str) -> tuple[str, str]:
        """``prices_as``' prices of ``model``."""
        return self.prices_as, model


class ClaudeCode(_Cli):
    """Anthropic's Claude Code, in print mode with its stream-json output."""

    name = "claude-code"
    executable = "claude"
    install = "npm install -g @anthropic-ai/claude-code"
    key_env: tuple[str, ...] = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN")
    base_url_env = "ANTHROPIC_BASE_URL"
    endpoint = "https://api.anthropic.com"
    keeps_budget = True
    prices_as = "anthropic-claude"

    def argv(
        self,
        executable: str,
        model: str | None,
        budget_usd: float | None,
        base_url: str | None,
        home: str,
    ) -> list[str]:
        """``claude -p`` reading the prompt from stdin, edits allowed in its directory."""
        argv = [executable, "-p", "--output-format", "stream-json", "--verbose"]
        argv += ["--permission-mode", "acceptEdits"]
        if model:
            argv += ["--model", model]
        if budget_usd is not None:
            argv += ["--max-budget-usd", f"{budget_usd:.6f}"]
        return argv

    def env(
        self, api_key: str | None, base_url: str | None, home: str, model: str | None
    ) -> dict[str, str]:
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

    def read(self, stdout: bytes, stderr: str, home: str) -> CliReport:
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


class Codex(_Cli):
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
    endpoint = "https://api.openai.com/v1"
    prices_as = "openai-gpt"

    def argv(
        self,
        executable: str,
        model: str | None,
        budget_usd: float | None,
        base_url: str | None,
        home: str,
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

    def env(
        self, api_key: str | None, base_url: str | None, home: str, model: str | None
    ) -> dict[str, str]:
        """``OPENAI_API_KEY``, and a home (``CODEX_HOME``) of its own."""
        codex_home = os.path.join(home, ".codex")
        os.makedirs(codex_home, exist_ok=True)
        env = {"HOME": home, "CODEX_HOME": codex_home}
        if api_key:
            env["OPENAI_API_KEY"] = api_key
        return env

    def read(self, stdout: bytes, stderr: str, home: str) -> CliReport:
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


class GeminiCli(_Cli):
    """Google's Gemini CLI: ``gemini --output-format json``, one JSON document at the end.

    The document holds ``response`` (the final message), ``session_id`` and ``stats``:
    ``models`` by name, each with ``api.totalRequests`` and ``tokens`` (``prompt``, which
    includes ``cached``; ``candidates``; ``thoughts``, billed as output; ``tool``, the tool-use
    prompt, billed as input) and ``roles`` (``main``, or a helper such as the router);
    ``tools`` and ``files`` (lines added and removed). A run that fails prints
    ``{"session_id", "error": {"type", "message", "code"}}`` on stderr instead, without its
    tokens. No cost: each model's tokens are priced at Gemini's prices. It reads its auth
    type from ``~/.gemini/settings.json``, which ``env`` writes in the home it is given.
    """

    name = "gemini-cli"
    executable = "gemini"
    install = "npm install -g @google/gemini-cli"
    key_env: tuple[str, ...] = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
    base_url_env = "GOOGLE_GEMINI_BASE_URL"
    endpoint = "https://generativelanguage.googleapis.com"
    prices_as = "google-gemini"

    def argv(
        self,
        executable: str,
        model: str | None,
        budget_usd: float | None,
        base_url: str | None,
        home: str,
    ) -> list[str]:
        """``gemini --output-format json`` (the prompt from stdin), edits allowed."""
        argv = [executable, "--output-format", "json", "--approval-mode", "auto_edit"]
        return [*argv, "-m", model] if model else argv

    def env(
        self, api_key: str | None, base_url: str | None, home: str, model: str | None
    ) -> dict[str, str]:
        """``GEMINI_API_KEY``, its endpoint, and settings of its own.

        The settings: an API key, no usage statistics, telemetry or updates.
        """
        settings = {
            "security": {"auth": {"selectedType": "gemini-api-key"}},
            "privacy": {"usageStatisticsEnabled": False},
            "telemetry": {"enabled": False},
            "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False},
        }
        os.makedirs(os.path.join(home, ".gemini"), exist_ok=True)
        with open(os.path.join(home, ".gemini", "settings.json"), "w", encoding="utf-8") as out:
            json.dump(settings, out)
        env = {"HOME": home, "GEMINI_CLI_TRUST_WORKSPACE": "true", "NO_COLOR": "1"}
        if api_key:
            env["GEMINI_API_KEY"] = api_key
        if base_url:
            env["GOOGLE_GEMINI_BASE_URL"] = base_url
        return env

    def read(self, stdout: bytes, stderr: str, home: str) -> CliReport:
        """The document: its response and each model's tokens; or the error it printed."""
        document = _last_document(stdout.decode("utf-8", "replace")) or _last_document(stderr)
        if document is None or not ({"response", "error"} & document.keys()):
            raise UnreadableOutput("gemini printed no JSON result")
        said = document.get("error")
        if said is not None:
            message = said.get("message") if isinstance(said, dict) else said
            return CliReport(
                text=str(message),
                usage=Usage(),
                session_id=document.get("session_id"),
                error=str(said.get("type") or "an error") if isinstance(said, dict) else "an error",
            )
        stats = document.get("stats") or {}
        models = stats.get("models") or {}
        per_model: dict[str, Usage] = {}
        main: dict[str, int] = {}  # each model's requests in the main role
        for name, row in models.items():
            tokens = (row or {}).get("tokens") or {}
            prompt, tool = _count(tokens.get("prompt")), _count(tokens.get("tool")) or 0
            answer, thoughts = _count(tokens.get("candidates")), _count(tokens.get("thoughts"))
            per_model[name] = Usage(
                input_tokens=None if prompt is None else prompt + tool,
                output_tokens=None if answer is None else answer + (thoughts or 0),
                cache_read_tokens=_count(tokens.get("cached")),
                reasoning_tokens=thoughts,
            )
            role = ((row or {}).get("roles") or {}).get("main") or {}
            main[name] = _count(role.get("totalRequests")) or 0
        files = stats.get("files") or {}
        text = document.get("response")
        return CliReport(
            text=text if isinstance(text, str) else "",
            usage=_total(list(per_model.values())),
            model=max(main, key=lambda name: main[name]) if main else None,
            turns=sum(main.values()) or None,
            session_id=document.get("session_id"),
            per_model=per_model,
            extra={
                "tool_calls": _count((stats.get("tools") or {}).get("totalCalls")),
                "lines_added": _count(files.get("totalLinesAdded")),
                "lines_removed": _count(files.get("totalLinesRemoved")),
            },
        )


class Aider(_Cli):
    """aider (``aider --message-file``), its usage read from its ``--analytics-log``.

    Each model request it completes is a ``message_send`` event in the log with
    ``prompt_tokens``, ``completion_tokens`` and its own ``cost`` (from litellm's prices: 0
    for a model it has no price for, which is then priced at ours). A request that failed
    leaves a ``message_send_starting`` without its ``message_send`` (aider still exits 0,
    saying why on stdout). Its replies are read from its chat history, a markdown file where
    its own notices are quoted (``> ``) and prompts are headings (``#### ``). It talks to an
    OpenAI-compatible endpoint (``OPENAI_API_BASE``), or to Ollama for an ``ollama/`` or
    ``ollama_chat/`` model (``OLLAMA_API_BASE``); it runs without streaming, so the counts are
    the server's, and never commits (its changes are diffed like every CLI's).
    """

    name = "aider"
    executable = "aider"
    install = "pipx install aider-chat"
    key_env: tuple[str, ...] = ("OPENAI_API_KEY",)
    prompt_file: str | None = "prompt.md"
    own_files: tuple[str, ...] = (".aider*",)  # its repository map's cache

    def endpoint_env(self, model: str | None) -> str:
        """``OLLAMA_API_BASE`` for an Ollama model, else ``OPENAI_API_BASE``."""
        return "OLLAMA_API_BASE" if _ollama(model) else "OPENAI_API_BASE"

    def default_endpoint(self, model: str | None) -> str:
        """Ollama on this machine for an Ollama model, else OpenAI's API."""
        return "http://127.0.0.1:11434" if _ollama(model) else "https://api.openai.com/v1"

    def priced_as(self, model: str) -> tuple[str, str]:
        """Ollama's (free) for an Ollama model, else OpenAI's; without litellm's prefix."""
        return ("ollama" if _ollama(model) else "openai-gpt"), model.rpartition("/")[2]

    def argv(
        self,
        executable: str,
        model: str | None,
        budget_usd: float | None,
        base_url: str | None,
        home: str,
    ) -> list[str]:
        """One message, every question answered yes, no commits, its files in its home."""
        argv = [executable, "--message-file", os.path.join(home, "prompt.md")]
        argv += ["--yes-always", "--no-stream", "--no-pretty", "--no-fancy-input"]
        argv += ["--no-auto-commits", "--no-dirty-commits", "--no-gitignore"]
        argv += ["--no-check-update", "--no-show-release-notes", "--no-show-model-warnings"]
        argv += ["--no-analytics", "--analytics-log", os.path.join(home, "events.jsonl")]
        argv += ["--chat-history-file", os.path.join(home, "chat.md")]
        argv += ["--input-history-file", os.path.join(home, "input.history")]
        return [*argv, "--model", model] if model else argv

    def env(
        self, api_key: str | None, base_url: str | None, home: str, model: str | None
    ) -> dict[str, str]:
        """Its key and endpoint (none for Ollama), and prices read from litellm's own copy.

        Its price cache in its home is seeded, so it does not fetch prices on each run.
        """
        caches = os.path.join(home, ".aider", "caches")
        os.makedirs(caches, exist_ok=True)
        with open(os.path.join(caches, "model_prices_and_context_window.json"), "w") as out:
            json.dump({"orchestra": {}}, out)  # not empty: an empty cache is fetched again
        env = {"HOME": home, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "NO_COLOR": "1"}
        if _ollama(model):
            if base_url:
                env["OLLAMA_API_BASE"] = base_url
            return env
        if api_key:
            env["OPENAI_API_KEY"] = api_key
        if base_url:
            env["OPENAI_API_BASE"] = base_url
        return env

    def read(self, stdout: bytes, stderr: str, home: str) -> CliReport:
        """Its events' tokens and cost, its replies, and whether its last request failed."""
        try:
            with open(os.path.join(home, "events.jsonl"), "rb") as log:
                events = [e for e in _json_lines(log.read()) if "event" in e]
        except (OSError, UnreadableOutput):
            raise UnreadableOutput("aider wrote no analytics log") from None
        sent = [e.get("properties") or {} for e in events if e["event"] == "message_send"]
        starts = [i for i, e in enumerate(events) if e["event"] == "message_send_starting"]
        answered = [i for i, e in enumerate(events) if e["event"] == "message_send"]
        failed = bool(starts) and (not answered or answered[-1] < starts[-1])
        said = [line for line in stdout.decode("utf-8", "replace").splitlines() if line.strip()]
        error = next((line for line in reversed(said) if "Error" in line), None)
        costs = [_amount(p.get("cost")) for p in sent]
        cost = sum(c or 0.0 for c in costs)
        return CliReport(
            text=(error or "its request failed") if failed else _replies(home),
            usage=Usage(
                input_tokens=_sum(sent, "prompt_tokens") if sent else None,
                output_tokens=_sum(sent, "completion_tokens") if sent else None,
            ),
            # Its own figure when it has prices for the model; 0 is "no price", not free.
            cost_usd=cost if cost > 0 and None not in costs else None,
            turns=len(sent) or None,
            error="a failed model request" if failed else None,
            extra={"edit_format": sent[-1].get("edit_format") if sent else None},
        )


def _ollama(model: str | None) -> bool:
    return bool(model) and str(model).startswith(("ollama/", "ollama_chat/"))


def _replies(home: str) -> str:
    """The replies in aider's chat history: what is neither its notice nor a prompt."""
    try:
        with open(os.path.join(home, "chat.md"), encoding="utf-8", errors="replace") as chat:
            lines = chat.read().splitlines()
    except OSError:
        return ""
    prompts = [i for i, line in enumerate(lines) if line.startswith("#### ")]
    if not prompts:
        return ""
    kept = [line for line in lines[prompts[0] :] if not line.startswith(("> ", "#### ", ">"))]
    return "\n".join(kept).strip()


CLAUDE_CODE = ClaudeCode()
CODEX = Codex()
GEMINI_CLI = GeminiCli()
AIDER = Aider()
CLIS: dict[str, CodingCli] = {cli.name: cli for cli in (CLAUDE_CODE, CODEX, GEMINI_CLI, AIDER)}


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


def _last_document(text: str) -> dict[str, Any] | None:
    """The last JSON object printed whole from a line's start (notices may come before)."""
    starts = [0] if text.startswith("{") else []
    starts += [found.start() + 1 for found in re.finditer(r"\n\{", text)]
    decoder = json.JSONDecoder()
    for start in reversed(starts):
        try:
            document, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if isinstance(document, dict):
            return document
    return None


def _total(usages: list[Usage]) -> Usage:
    """Several models' tokens added up (a count any of them lacks is unknown)."""

    def added(name: str) -> int | None:
        counts = [getattr(usage, name) for usage in usages]
        return None if not counts or None in counts else sum(counts)

    return Usage(
        input_tokens=added("input_tokens"),
        output_tokens=added("output_tokens"),
        cache_read_tokens=added("cache_read_tokens"),
        reasoning_tokens=added("reasoning_tokens"),
    )


def _sum(rows: list[dict[str, Any]], name: str) -> int | None:
    counts = [_count(row.get(name)) for row in rows]
    return None if any(c is None for c in counts) else sum(c or 0 for c in counts)


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _amount(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None
