"""The provider factory: names to providers, each imported and built on first use.

``LlmFactory`` keeps the registry of ``ProviderSpec``s (``llm_abstractions.specs``): the
built-in ones and those users register. Building a provider checks, in order, that the name
is known, its module ships, its SDK is installed and its key is set, and only then imports
it. What can serve now and what serves by default are answered in
``llm_abstractions.availability``. Nothing here imports a vendor SDK.
"""

from __future__ import annotations

import difflib
import importlib
import os
from collections.abc import Callable
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar

from llm_abstractions.availability import (
    ProviderChoice,
    ProviderStatus,
    choose_default,
    provider_status,
)
from llm_abstractions.errors import (
    ConfigurationError,
    MissingCredentialsError,
    OrchestraError,
    ProviderNotImplementedError,
    ProviderNotInstalledError,
    UnknownProviderError,
)
from llm_abstractions.specs import BUILTIN_PROVIDERS, Probe, ProviderSpec, ProviderTarget

if TYPE_CHECKING:
    from llm_abstractions.base import BaseLlm

__all__ = ["LlmFactory", "ProviderChoice", "ProviderSpec", "ProviderStatus"]


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
    def provider_class(cls, name: str | Enum) -> type[BaseLlm] | None:
        """The ``BaseLlm`` class the provider is built from (importing its module), if any.

        None when its target is a factory function, or when it cannot be loaded here (not
        shipped, SDK missing): building it says why. Lets callers read its capabilities
        (``supports_output_schema``...) before building one.

        Raises:
            UnknownProviderError: No provider has that name.
        """
        from llm_abstractions.base import BaseLlm

        spec = cls.spec(name)
        try:
            _check_buildable(spec)
            target = _load_target(spec)
        except OrchestraError:
            return None
        return target if isinstance(target, type) and issubclass(target, BaseLlm) else None

    @classmethod
    def available(cls) -> list[ProviderStatus]:
        """For every registered provider: can it serve now, and if not, why not."""
        return [provider_status(spec) for _, spec in sorted(cls._specs.items())]

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
        return choose_default(cls._specs, model)

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
