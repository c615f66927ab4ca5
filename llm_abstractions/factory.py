"""Provider registry: names to ``"module:Class"`` targets, imported on first use.

Nothing here imports a vendor SDK. ``available()`` answers "could this provider serve now?"
from cheap checks only (is the module importable, is a key set, does a local server answer),
so it can run in a CLI without paying for SDK imports.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar

from llm_abstractions.errors import (
    ConfigurationError,
    MissingCredentialsError,
    OrchestraError,
    ProviderNotImplementedError,
    ProviderNotInstalledError,
    UnknownProviderError,
    install_hint,
)

if TYPE_CHECKING:
    from llm_abstractions.base import BaseLlm

__all__ = ["LlmFactory", "ProviderChoice", "ProviderSpec", "ProviderStatus"]

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
    """

    name: str
    target: ProviderTarget
    requires: tuple[str, ...] = ()
    extra: str | None = None
    env_keys: tuple[str, ...] = ()
    probe: Probe | None = None
    default_model: str | None = None

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


def _server_url(raw: str, default_port: int) -> str:
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
    host = _server_url(os.environ.get("OLLAMA_HOST") or OLLAMA_DEFAULT_HOST, 11434)
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


_PROVIDERS = "llm_abstractions.providers"
BUILTIN_PROVIDERS: tuple[ProviderSpec, ...] = (
    ProviderSpec(
        "anthropic-claude",
        f"{_PROVIDERS}.anthropic:AnthropicLlm",
        requires=("anthropic",),
        env_keys=("ANTHROPIC_API_KEY",),
        default_model="claude-sonnet-4-6",
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
)

# default_provider() tries these in order; the embedded model is the last resort.
_KEYED_DEFAULTS = ("anthropic-claude", "openai-gpt", "google-gemini")
_SERVER_DEFAULTS = ("ollama",)
_LAST_RESORT = "local"


class LlmFactory:
    """Builds providers by name.

    Built-in names: ``anthropic-claude``, ``openai-gpt``, ``google-gemini``,
    ``huggingface``, ``ollama``, ``lmstudio`` and ``local`` (the embedded model). A
    provider's module is imported only when that provider is first built.
    """

    _specs: ClassVar[dict[str, ProviderSpec]] = {s.name: s for s in BUILTIN_PROVIDERS}

    @classmethod
    def register_provider(
        cls,
        name: str,
        target: ProviderTarget,
        *,
        requires: tuple[str, ...] = (),
        extra: str | None = None,
        env_keys: tuple[str, ...] = (),
        probe: Probe | None = None,
        default_model: str | None = None,
        replace: bool = False,
    ) -> ProviderSpec:
        """Register a provider under ``name``.

        Args:
            name: The name to build it by.
            target: ``"module:Class"`` to import lazily, or a callable (a ``BaseLlm``
                subclass or a factory function) taking ``model=`` and, when ``env_keys`` is
                set, ``api_key=``.
            requires: Modules that must be importable.
            extra: The extra that installs ``requires``, for the error message.
            env_keys: Environment variables holding its API key, if it needs one.
            probe: Tells whether it can serve now (None) or why not.
            default_model: Shown by ``available()``.
            replace: Allow replacing an existing registration.

        Raises:
            ConfigurationError: ``name`` is taken and ``replace`` is false, or ``target`` is a
                string without ``:``.
        """
        key = _normalize(name)
        if key in cls._specs and not replace:
            raise ConfigurationError(
                f"A provider named {key!r} is already registered; pass replace=True to override."
            )
        if isinstance(target, str) and ":" not in target:
            raise ConfigurationError(
                f"Provider target {target!r} must look like 'package.module:ClassName'."
            )
        spec = ProviderSpec(key, target, requires, extra, env_keys, probe, default_model)
        cls._specs[key] = spec
        return spec

    @classmethod
    def unregister_provider(cls, name: str) -> None:
        """Forget a provider (built-in or not); unknown names are ignored."""
        cls._specs.pop(_normalize(name), None)

    @classmethod
    def reset(cls) -> None:
        """Restore the built-in registrations (for tests)."""
        cls._specs = {s.name: s for s in BUILTIN_PROVIDERS}

    @classmethod
    def names(cls) -> list[str]:
        """Registered provider names, sorted."""
        return sorted(cls._specs)

    @classmethod
    def spec(cls, name: str | Enum) -> ProviderSpec:
        """The registration for ``name``.

        Raises:
            UnknownProviderError: No provider has that name; close matches are suggested.
        """
        key = _normalize(name)
        try:
            return cls._specs[key]
        except KeyError:
            known = cls.names()
            close = difflib.get_close_matches(key, known, n=2, cutoff=0.5)
            raise UnknownProviderError(key, known, close) from None

    @classmethod
    def get_provider(
        cls,
        agent_type: str | Enum,
        model: str | None = None,
        api_key: str | None = None,
        **options: Any,
    ) -> BaseLlm:
        """Build the provider registered as ``agent_type``.

        Args:
            agent_type: A provider name such as ``"anthropic-claude"`` or an ``AgentType``.
            model: The model to use; the provider's default when None.
            api_key: The API key; read from the provider's environment variable when None.
            **options: Passed to the provider's constructor (``base_url``, ``timeout``...).

        Raises:
            UnknownProviderError: No provider has that name.
            ProviderNotImplementedError: The name is reserved but not built yet.
            ProviderNotInstalledError: The provider's SDK is not installed.
            MissingCredentialsError: The provider needs a key and none was found.
            ConfigurationError: A key was given to a provider that takes none.
        """
        spec = cls.spec(agent_type)
        _check_buildable(spec)
        kwargs: dict[str, Any] = dict(options)
        if spec.env_keys:
            key = api_key or spec.api_key_from_env()
            if not key:
                raise MissingCredentialsError(spec.name, spec.env_keys)
            kwargs["api_key"] = key
        elif api_key is not None:
            raise ConfigurationError(f"Provider {spec.name!r} takes no api_key; remove it.")
        # Only now pay for importing the provider (and its SDK).
        from llm_abstractions.base import BaseLlm

        factory = _load_target(spec)

        _check_options(spec.name, factory, model, kwargs)
        llm = factory(model=model, **kwargs)
        if not isinstance(llm, BaseLlm):
            raise ConfigurationError(
                f"Provider {spec.name!r} built a {type(llm).__name__}, not a BaseLlm."
            )
        return llm

    @classmethod
    def available(cls) -> list[ProviderStatus]:
        """For every registered provider: can it serve now, and if not, why not."""
        return [_status(spec) for _, spec in sorted(cls._specs.items())]

    @classmethod
    def resolve_default(
        cls, provider: str | Enum | None = None, model: str | None = None
    ) -> ProviderChoice:
        """Decide which provider ``default_provider`` would build, without building it.

        Order: the ``provider`` argument, then ``ORCHESTRA_PROVIDER`` (whose model
        ``ORCHESTRA_MODEL`` names, unless ``model`` is given), then the first of
        ANTHROPIC_API_KEY, OPENAI_API_KEY, GOOGLE_API_KEY/GEMINI_API_KEY that is set, then a
        reachable Ollama, then the embedded model. A provider that is configured but cannot
        be built (SDK missing, not shipped yet) is passed over and the reason is kept in
        ``skipped``.

        Raises:
            UnknownProviderError: The explicit provider name is not registered.
        """
        if provider:
            return ProviderChoice(cls.spec(provider).name, model, "chosen by argument")
        from_env = os.environ.get("ORCHESTRA_PROVIDER")
        if from_env:
            chosen_model = model or os.environ.get("ORCHESTRA_MODEL") or None
            return ProviderChoice(
                cls.spec(from_env).name, chosen_model, "chosen by ORCHESTRA_PROVIDER"
            )
        skipped: list[str] = []
        for name in _KEYED_DEFAULTS:
            keyed = cls._specs.get(name)
            if keyed is None or keyed.api_key_from_env() is None:
                continue
            missing = keyed.unusable_reason()
            if missing is None:
                var = next(v for v in keyed.env_keys if os.environ.get(v))
                return ProviderChoice(name, model, f"{var} is set", tuple(skipped))
            skipped.append(f"{name}: key set but {missing}")
        for name in _SERVER_DEFAULTS:
            server = cls._specs.get(name)
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
        return ProviderChoice(
            _LAST_RESORT, model, "no API key or local server found", tuple(skipped)
        )

    @classmethod
    def default_provider(
        cls, provider: str | Enum | None = None, model: str | None = None
    ) -> BaseLlm:
        """Build the provider ``resolve_default`` picks (see there for the order)."""
        choice = cls.resolve_default(provider, model)
        return cls.get_provider(choice.name, model=choice.model)


def _normalize(name: str | Enum) -> str:
    value = name.value if isinstance(name, Enum) else name
    return str(value).strip().lower()


def _check_buildable(spec: ProviderSpec) -> None:
    """Raise unless the provider ships and its SDK is installed (checked without importing)."""
    if not spec.is_implemented():
        working = sorted(s.name for s in LlmFactory._specs.values() if s.is_implemented())
        raise ProviderNotImplementedError(
            f"Provider {spec.name!r} is not implemented in this version of Orchestra "
            f"({spec.target}). Providers that ship now: {', '.join(working)}."
        )
    missing = spec.missing_requirement()
    if missing is not None:
        raise ProviderNotInstalledError(spec.name, missing, spec.extra)


def _load_target(spec: ProviderSpec) -> Callable[..., BaseLlm]:
    if not isinstance(spec.target, str):
        return spec.target
    module_name, _, attr = spec.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ProviderNotInstalledError(spec.name, exc.name or module_name, spec.extra) from exc
    try:
        loaded: Callable[..., BaseLlm] = getattr(module, attr)
    except AttributeError:
        raise ConfigurationError(
            f"Provider {spec.name!r} points at {spec.target!r}, but {module_name} has no "
            f"attribute {attr!r}; fix the target given to register_provider()."
        ) from None
    return loaded


def _check_options(
    name: str, factory: Callable[..., BaseLlm], model: str | None, kwargs: dict[str, Any]
) -> None:
    """Refuse options the provider does not take, naming the ones it does."""
    import inspect

    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return  # a builtin or C callable: let the call itself complain
    try:
        signature.bind(model=model, **kwargs)
    except TypeError as exc:
        accepted = [p for p in signature.parameters if p not in ("self", "model", "api_key")]
        raise ConfigurationError(
            f"Provider {name!r} does not accept these options ({exc}). "
            f"It takes: {', '.join(accepted) or 'no options'}."
        ) from None


def _status(spec: ProviderSpec) -> ProviderStatus:
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
