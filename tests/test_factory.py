from __future__ import annotations

import threading
from collections.abc import Iterator
from enum import Enum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from llm_abstractions import (
    BaseLlm,
    ConfigurationError,
    LlmFactory,
    MissingCredentialsError,
    ProviderNotImplementedError,
    ProviderNotInstalledError,
    UnknownProviderError,
)
from llm_abstractions.testing import ScriptedLlm

BUILTIN = {
    "anthropic-claude",
    "openai-gpt",
    "google-gemini",
    "huggingface",
    "ollama",
    "lmstudio",
    "local",
    "claude-code",
    "codex",
    "gemini-cli",
    "aider",
}


class Kind(Enum):
    SCRIPTED = "scripted"


class KeyedLlm(ScriptedLlm):
    """A double that needs a key, like a cloud provider."""

    def __init__(self, model: str | None = None, api_key: str | None = None) -> None:
        super().__init__(["ok"], model=model)
        self.api_key = api_key


def fake_provider(name: str, **spec: Any) -> None:
    """Stand in for a built-in provider that this version does not ship yet."""
    LlmFactory.register_provider(name, KeyedLlm, replace=True, **spec)


def test_builtin_names_are_registered() -> None:
    assert set(LlmFactory.names()) == BUILTIN


def test_unknown_provider_lists_names_and_suggests() -> None:
    with pytest.raises(UnknownProviderError) as info:
        LlmFactory.get_provider("antropic-claude")
    message = str(info.value)
    assert "Did you mean 'anthropic-claude'?" in message
    for name in BUILTIN:
        assert name in message
    assert isinstance(info.value, LookupError)
    assert isinstance(info.value, ConfigurationError)


def test_unknown_provider_without_close_match_has_no_suggestion() -> None:
    with pytest.raises(UnknownProviderError) as info:
        LlmFactory.get_provider("zzzz")
    assert info.value.suggestions == []
    assert "Did you mean" not in str(info.value)


def test_register_lazy_target_imports_on_first_use(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.delitem(sys.modules, "tests.support.echo_provider", raising=False)
    LlmFactory.register_provider("echo", "tests.support.echo_provider:EchoLlm")
    assert "tests.support.echo_provider" not in sys.modules
    llm = LlmFactory.get_provider("echo", model="m1")
    assert type(llm).__name__ == "EchoLlm"
    assert llm.model == "m1"
    assert "tests.support.echo_provider" in sys.modules


def test_register_rejects_duplicates_and_bad_targets() -> None:
    LlmFactory.register_provider("dup", KeyedLlm)
    with pytest.raises(ConfigurationError, match="already registered"):
        LlmFactory.register_provider("dup", KeyedLlm)
    LlmFactory.register_provider("dup", KeyedLlm, replace=True)
    with pytest.raises(ConfigurationError, match="package.module:ClassName"):
        LlmFactory.register_provider("bad", "no_colon_here")


def test_enum_names_are_accepted() -> None:
    script = ScriptedLlm(["hi"])
    LlmFactory.register_provider("scripted", lambda **_: script)
    assert LlmFactory.get_provider(Kind.SCRIPTED) is script


def test_target_that_is_not_a_basellm_is_refused() -> None:
    LlmFactory.register_provider("wrong", lambda **_: object())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="not a BaseLlm"):
        LlmFactory.get_provider("wrong")


def test_missing_sdk_names_the_extra() -> None:
    LlmFactory.register_provider(
        "needs-sdk", KeyedLlm, requires=("orchestra_no_such_sdk",), extra="gemini"
    )
    LlmFactory.register_provider(
        "needs-sdk2", "tests.support.echo_provider:EchoLlm", requires=("orchestra_no_such_sdk",)
    )
    with pytest.raises(ProviderNotInstalledError) as info:
        LlmFactory.get_provider("needs-sdk")
    assert 'pip install "orchestra[gemini]"' in str(info.value)
    assert isinstance(info.value, ImportError)
    with pytest.raises(ProviderNotInstalledError) as info:
        LlmFactory.get_provider("needs-sdk2")
    assert "pip install orchestra_no_such_sdk" in str(info.value)


def test_missing_sdk_of_builtin_names_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from llm_abstractions import specs

    real = specs._module_exists
    monkeypatch.setattr(specs, "_module_exists", lambda n: n != "llama_cpp" and real(n))
    with pytest.raises(ProviderNotInstalledError) as info:
        LlmFactory.get_provider("local")
    assert 'pip install "orchestra[local]"' in str(info.value)


def test_a_provider_whose_module_is_not_shipped_says_so() -> None:
    LlmFactory.register_provider("future", "llm_abstractions.providers.future:FutureLlm")
    with pytest.raises(ProviderNotImplementedError) as info:
        LlmFactory.get_provider("future")
    assert "local" in str(info.value)  # names what does work


def test_missing_key_names_the_variable() -> None:
    fake_provider("anthropic-claude", env_keys=("ANTHROPIC_API_KEY",))
    with pytest.raises(MissingCredentialsError) as info:
        LlmFactory.get_provider("anthropic-claude")
    assert "ANTHROPIC_API_KEY" in str(info.value)


def test_missing_key_is_reported_before_importing_the_provider(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    monkeypatch.delitem(sys.modules, "tests.support.echo_provider", raising=False)
    LlmFactory.register_provider(
        "keyed-echo", "tests.support.echo_provider:EchoLlm", env_keys=("ECHO_API_KEY",)
    )
    with pytest.raises(MissingCredentialsError, match="ECHO_API_KEY"):
        LlmFactory.get_provider("keyed-echo")
    assert "tests.support.echo_provider" not in sys.modules


def test_key_from_argument_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_provider("google-gemini", env_keys=("GOOGLE_API_KEY", "GEMINI_API_KEY"))
    explicit = LlmFactory.get_provider("google-gemini", api_key="arg-key")
    assert isinstance(explicit, KeyedLlm) and explicit.api_key == "arg-key"
    monkeypatch.setenv("GEMINI_API_KEY", "gemini-key")
    from_env = LlmFactory.get_provider("google-gemini")
    assert isinstance(from_env, KeyedLlm) and from_env.api_key == "gemini-key"
    monkeypatch.setenv("GOOGLE_API_KEY", "google-key")  # wins when both are set
    both = LlmFactory.get_provider("google-gemini")
    assert isinstance(both, KeyedLlm) and both.api_key == "google-key"


def test_key_given_to_keyless_provider_is_an_error() -> None:
    LlmFactory.register_provider("keyless", lambda **_: ScriptedLlm([]))
    with pytest.raises(ConfigurationError, match="takes no api_key"):
        LlmFactory.get_provider("keyless", api_key="sk-secret")


# -- default provider order ---------------------------------------------------------------


@pytest.fixture
def all_fakes() -> None:
    fake_provider("anthropic-claude", env_keys=("ANTHROPIC_API_KEY",))
    fake_provider("openai-gpt", env_keys=("OPENAI_API_KEY",))
    fake_provider("google-gemini", env_keys=("GOOGLE_API_KEY", "GEMINI_API_KEY"))
    from llm_abstractions import specs

    LlmFactory.register_provider("ollama", KeyedLlm, probe=specs._ollama_probe, replace=True)


class _TagsHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"models": []}'
        self.send_response(200 if self.path == "/api/tags" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fake_ollama(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TagsHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("OLLAMA_HOST", host)
    yield host
    server.shutdown()
    server.server_close()


@pytest.mark.usefixtures("all_fakes")
def test_clean_environment_falls_back_to_embedded_model() -> None:
    choice = LlmFactory.resolve_default()
    assert choice.name == "local"
    assert any(s.startswith("ollama: no server") for s in choice.skipped)


@pytest.mark.usefixtures("all_fakes")
@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"ANTHROPIC_API_KEY": "a", "OPENAI_API_KEY": "o", "GEMINI_API_KEY": "g"},
            "anthropic-claude",
        ),
        ({"OPENAI_API_KEY": "o", "GEMINI_API_KEY": "g"}, "openai-gpt"),
        ({"GEMINI_API_KEY": "g"}, "google-gemini"),
        ({"GOOGLE_API_KEY": "g"}, "google-gemini"),
        ({"ANTHROPIC_API_KEY": ""}, "local"),  # an empty key is no key
    ],
)
def test_keys_are_tried_in_order(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
) -> None:
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert LlmFactory.resolve_default().name == expected


@pytest.mark.usefixtures("all_fakes")
def test_reachable_ollama_beats_embedded_but_not_keys(
    monkeypatch: pytest.MonkeyPatch, fake_ollama: str
) -> None:
    choice = LlmFactory.resolve_default()
    assert (choice.name, choice.reason) == ("ollama", "server reachable")
    monkeypatch.setenv("OPENAI_API_KEY", "o")
    assert LlmFactory.resolve_default().name == "openai-gpt"


@pytest.mark.usefixtures("all_fakes")
def test_orchestra_model_belongs_to_orchestra_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHESTRA_MODEL", "gpt-x")
    assert LlmFactory.resolve_default().model is None  # no ORCHESTRA_PROVIDER: not applied
    assert LlmFactory.resolve_default("local").model is None  # argument wins over env
    monkeypatch.setenv("ORCHESTRA_PROVIDER", "openai-gpt")
    assert LlmFactory.resolve_default().model == "gpt-x"
    assert LlmFactory.resolve_default(model="other").model == "other"


def test_unknown_options_name_the_accepted_ones() -> None:
    with pytest.raises(ConfigurationError) as info:
        LlmFactory.get_provider("local", n_ctxx=512)
    message = str(info.value)
    assert "n_ctxx" in message
    assert "n_ctx, n_threads" in message


def test_bad_module_attribute_names_the_provider() -> None:
    LlmFactory.register_provider("typo", "tests.support.echo_provider:EchoLLM")
    with pytest.raises(ConfigurationError, match="Provider 'typo' points at"):
        LlmFactory.get_provider("typo")


@pytest.mark.usefixtures("all_fakes")
def test_explicit_choice_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "a")
    monkeypatch.setenv("ORCHESTRA_PROVIDER", "openai-gpt")
    monkeypatch.setenv("ORCHESTRA_MODEL", "gpt-x")
    choice = LlmFactory.resolve_default()
    assert (choice.name, choice.model, choice.reason) == (
        "openai-gpt",
        "gpt-x",
        "chosen by ORCHESTRA_PROVIDER",
    )
    by_arg = LlmFactory.resolve_default("local", model="m.gguf")
    assert (by_arg.name, by_arg.model) == ("local", "m.gguf")
    with pytest.raises(UnknownProviderError):
        LlmFactory.resolve_default("nope-provider")


def test_key_for_unshipped_provider_is_passed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    LlmFactory.register_provider(
        "anthropic-claude",
        "llm_abstractions.providers.future:FutureLlm",
        env_keys=("ANTHROPIC_API_KEY",),
        replace=True,
    )
    monkeypatch.setenv("ANTHROPIC_API_KEY", "a")
    choice = LlmFactory.resolve_default()
    assert choice.name == "local"
    assert choice.skipped[0].startswith("anthropic-claude: key set but not shipped")


@pytest.mark.usefixtures("all_fakes")
def test_default_provider_builds_the_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    llm = LlmFactory.default_provider()
    assert isinstance(llm, KeyedLlm)
    assert llm.api_key == "sk-from-env"


# -- available() --------------------------------------------------------------------------


def test_available_reports_every_provider_with_reasons() -> None:
    statuses = {s.name: s for s in LlmFactory.available()}
    assert set(statuses) == BUILTIN
    assert all(status.implemented for status in statuses.values())
    assert statuses["huggingface"].reason == "set HF_TOKEN"
    assert statuses["ollama"].reachable is False
    local = statuses["local"]
    assert (local.ok, local.implemented, local.installed, local.reason) == (
        True,
        True,
        True,
        "ready",
    )


def test_available_explains_missing_key_and_dead_server() -> None:
    fake_provider("openai-gpt", env_keys=("OPENAI_API_KEY",))
    from llm_abstractions import specs

    LlmFactory.register_provider("ollama", KeyedLlm, probe=specs._ollama_probe, replace=True)
    statuses = {s.name: s for s in LlmFactory.available()}
    assert statuses["openai-gpt"].ok is False
    assert statuses["openai-gpt"].credentials is False
    assert statuses["openai-gpt"].reason == "set OPENAI_API_KEY"
    assert statuses["ollama"].reachable is False
    assert "no server at" in statuses["ollama"].reason


def test_ollama_host_forms_and_proxies(monkeypatch: pytest.MonkeyPatch, fake_ollama: str) -> None:
    from llm_abstractions import specs

    port = fake_ollama.rsplit(":", 1)[1]
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{port}")  # no scheme, as Ollama allows
    assert specs._ollama_probe() is None
    # A proxy that answers everything must not make a dead server look alive.
    monkeypatch.setenv("http_proxy", fake_ollama)
    monkeypatch.setenv("OLLAMA_HOST", f"http://user:hunter2@127.0.0.1:{_free_port()}")
    down = specs._ollama_probe()
    assert down is not None and down.startswith("no server at http://127.0.0.1:")
    assert "hunter2" not in down
    assert specs.server_url("127.0.0.1", 11434) == "http://127.0.0.1:11434"
    assert specs.server_url("[::1]", 11434) == "http://[::1]:11434"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_available_sees_a_reachable_server(fake_ollama: str) -> None:
    from llm_abstractions import specs

    LlmFactory.register_provider("ollama", KeyedLlm, probe=specs._ollama_probe, replace=True)
    ollama = next(s for s in LlmFactory.available() if s.name == "ollama")
    assert (ollama.ok, ollama.reachable) == (True, True)


def test_local_status_reports_bad_model_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setenv("ORCHESTRA_LOCAL_MODEL", str(tmp_path / "missing.gguf"))
    local = next(s for s in LlmFactory.available() if s.name == "local")
    assert local.ok is False
    assert "not found" in local.reason


def test_builtin_local_provider_is_a_basellm() -> None:
    llm = LlmFactory.get_provider("local")
    assert isinstance(llm, BaseLlm)
    assert llm.provider == "local"
