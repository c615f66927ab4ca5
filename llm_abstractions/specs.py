"""What a provider is: its ``ProviderSpec``, the built-in ones, and how to tell it can serve.

A spec names a ``"module:Class"`` target imported on first use, the modules it needs
(checked with ``importlib.util.find_spec``, never imported), the extra that installs them,
the environment variables holding its key, and an optional probe: a cheap check that a local
server answers or a model file is there. Nothing here imports a vendor SDK.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llm_abstractions.errors import OrchestraError, install_hint

if TYPE_CHECKING:
    from llm_abstractions.base import BaseLlm

__all__ = [
    "BUILTIN_PROVIDERS",
    "LMSTUDIO_DEFAULT_URL",
    "OLLAMA_DEFAULT_HOST",
    "Probe",
    "ProviderSpec",
    "ProviderTarget",
    "server_url",
]

ProviderTarget = str | Callable[..., "BaseLlm"]
Probe = Callable[[], str | None]

OLLAMA_DEFAULT_HOST = "http://127.0.0.1:11434"
LMSTUDIO_DEFAULT_URL = "http://localhost:1234/v1"


@dataclass(frozen=True)
class ProviderSpec:
    """How to build one provider and how to tell whether it can serve.

    Attributes:
        name: The name users pass as ``agent_type``.
        target: ``"package.module:Class"`` (imported on first use) or a callable returning
            a ``BaseLlm``.
        requires: Importable modules the provider needs (checked without importing them).
        extra: The ``orchestra[...]`` extra that installs ``requires``.
        env_keys: Environment variables holding the API key, in order of precedence; empty
            for providers that need no key.
        probe: Returns None when the provider can serve now, otherwise why not (a local
            server that does not answer, a model file that is missing).
        default_model: The model used when none is given, for display.
        default_max_tokens: The ``max_tokens`` the provider sends when a request sets none
            (None: it sends none, and the model may write up to its limit).
    """

    name: str
    target: ProviderTarget
    requires: tuple[str, ...] = ()
    extra: str | None = None
    env_keys: tuple[str, ...] = ()
    probe: Probe | None = None
    default_model: str | None = None
    default_max_tokens: int | None = None

    def api_key_from_env(self) -> str | None:
        """The first non-empty key among ``env_keys``, or None."""
        for var in self.env_keys:
            value = os.environ.get(var)
            if value:
                return value
        return None

    def is_implemented(self) -> bool:
        """Whether the provider's own module ships with this version (callables always do)."""
        return not isinstance(self.target, str) or _module_exists(self.target.partition(":")[0])

    def missing_requirement(self) -> str | None:
        """The first module in ``requires`` that is not installed, or None."""
        return next((m for m in self.requires if not _module_exists(m)), None)

    def unusable_reason(self) -> str | None:
        """Why this provider cannot even be built here (not shipped, SDK missing), or None."""
        if not self.is_implemented():
            return "not shipped in this version"
        missing = self.missing_requirement()
        if missing is not None:
            return f"{missing} is not installed ({install_hint(missing, self.extra)})"
        return None


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _http_probe(url: str, timeout: float = 0.5) -> str | None:
    """GET ``url`` directly (never through a proxy); None if a server answered, else why not.

    Any HTTP status counts as an answer: the provider sorts out what it means. Reasons name
    the URL without its credentials.
    """
    import urllib.error  # http.client pulls in ssl: only pay for it when probing
    import urllib.request
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        shown = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return f"{shown!r} is not an http(s) URL"
        # A proxy from the environment would answer for a dead local server.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url, timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"no server at {shown} ({reason})"


def server_url(raw: str, default_port: int) -> str:
    """``host``, ``host:port`` or a URL, as a URL with a port (Ollama accepts all three)."""
    from urllib.parse import urlsplit

    url = raw.strip().rstrip("/")
    if "://" not in url:
        url = f"http://{url}"
    parts = urlsplit(url)
    try:
        if parts.port is not None or not parts.netloc:
            return url
    except ValueError:
        return url  # a malformed port: the probe reports it
    return parts._replace(netloc=f"{parts.netloc}:{default_port}").geturl()


def _ollama_probe() -> str | None:
    host = server_url(os.environ.get("OLLAMA_HOST") or OLLAMA_DEFAULT_HOST, 11434)
    return _http_probe(f"{host}/api/tags")


def _lmstudio_probe() -> str | None:
    base = os.environ.get("ORCHESTRA_LMSTUDIO_URL") or LMSTUDIO_DEFAULT_URL
    return _http_probe(f"{base.rstrip('/')}/models")


def _local_probe() -> str | None:
    from llm_abstractions.providers.gguf import resolve_model_path

    try:
        resolve_model_path()
    except OrchestraError as exc:
        return str(exc)
    return None


def _on_path(command: str, install: str) -> Probe:
    """A probe: can ``command`` be run (a coding CLI)?"""

    def probe() -> str | None:
        import shutil

        return None if shutil.which(command) else f"no {command!r} on PATH ({install})"

    return probe


_PROVIDERS = "llm_abstractions.providers"
BUILTIN_PROVIDERS: tuple[ProviderSpec, ...] = (
    ProviderSpec(
        "anthropic-claude",
        f"{_PROVIDERS}.anthropic:AnthropicLlm",
        requires=("anthropic",),
        env_keys=("ANTHROPIC_API_KEY",),
        default_model="claude-sonnet-4-6",
        default_max_tokens=4096,  # the API needs one: providers.anthropic.DEFAULT_MAX_TOKENS
    ),
    ProviderSpec(
        "openai-gpt",
        f"{_PROVIDERS}.openai:OpenAILlm",
        requires=("openai",),
        env_keys=("OPENAI_API_KEY",),
        default_model="gpt-4o-mini",
    ),
    ProviderSpec(
        "google-gemini",
        f"{_PROVIDERS}.gemini:GeminiLlm",
        requires=("google.genai",),
        extra="gemini",
        # The SDK prefers GOOGLE_API_KEY when both are set; so do we.
        env_keys=("GOOGLE_API_KEY", "GEMINI_API_KEY"),
        default_model="gemini-2.5-flash",
    ),
    ProviderSpec(
        "huggingface",
        f"{_PROVIDERS}.huggingface:HuggingFaceLlm",
        requires=("huggingface_hub",),
        extra="huggingface",
        env_keys=("HF_TOKEN",),
    ),
    ProviderSpec(
        "ollama", f"{_PROVIDERS}.ollama:OllamaLlm", requires=("aiohttp",), probe=_ollama_probe
    ),
    ProviderSpec(
        "lmstudio",
        f"{_PROVIDERS}.lmstudio:LmStudioLlm",
        requires=("openai",),
        probe=_lmstudio_probe,
    ),
    ProviderSpec(
        "local",
        f"{_PROVIDERS}.local:LocalLlm",
        requires=("llama_cpp",),
        extra="local",
        probe=_local_probe,
        default_model="SmolLM2-135M-Instruct (bundled GGUF)",
    ),
    # Coding-agent CLIs, run in a directory of their own (orchestration.runtime.coding)
    ProviderSpec(
        "claude-code",
        "orchestration.runtime.coding.provider:ClaudeCodeLlm",
        env_keys=("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"),
        probe=_on_path("claude", "npm install -g @anthropic-ai/claude-code"),
        default_model="the CLI's own",
    ),
    ProviderSpec(
        "codex",
        "orchestration.runtime.coding.provider:CodexLlm",
        env_keys=("OPENAI_API_KEY",),
        probe=_on_path("codex", "npm install -g @openai/codex"),
        default_model="the CLI's own",
    ),
    ProviderSpec(
        "gemini-cli",
        "orchestration.runtime.coding.provider:GeminiCliLlm",
        env_keys=("GEMINI_API_KEY", "GOOGLE_API_KEY"),
        probe=_on_path("gemini", "npm install -g @google/gemini-cli"),
        default_model="the CLI's own",
    ),
    ProviderSpec(
        "aider",
        "orchestration.runtime.coding.provider:AiderLlm",
        env_keys=("OPENAI_API_KEY",),
        probe=_on_path("aider", "pipx install aider-chat"),
        default_model="the CLI's own",
    ),
)
