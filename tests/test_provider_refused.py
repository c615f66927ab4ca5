"""A refused connection, with every HTTP provider: said as refused, never as a timeout.

The ``openai`` SDK reports a refused connection as a connect timeout ("Request timed out."),
and the error said so: people went looking for a slow server when none was running.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest

from llm_abstractions import BaseLlm, LlmRequest
from llm_abstractions.errors import LLMConnectionError, LLMTimeoutError

pytestmark = pytest.mark.anyio


def closed_port() -> int:
    """A loopback port nothing listens on: bound, then released."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def anthropic(url: str) -> BaseLlm:
    from llm_abstractions.providers.anthropic import AnthropicLlm

    return AnthropicLlm("claude-sonnet-4-6", api_key="k", base_url=url)


def openai(url: str) -> BaseLlm:
    from llm_abstractions.providers.openai import OpenAILlm

    return OpenAILlm("gpt-4o-mini", api_key="k", base_url=f"{url}/v1")


def lmstudio(url: str) -> BaseLlm:
    from llm_abstractions.providers.lmstudio import LmStudioLlm

    return LmStudioLlm("qwen", base_url=f"{url}/v1")


def gemini(url: str) -> BaseLlm:
    from llm_abstractions.providers.gemini import GeminiLlm

    return GeminiLlm(api_key="k", base_url=url)


def huggingface(url: str) -> BaseLlm:
    from llm_abstractions.providers.huggingface import HuggingFaceLlm

    return HuggingFaceLlm("m", api_key="k", base_url=f"{url}/v1")


def ollama(url: str) -> BaseLlm:
    from llm_abstractions.providers.ollama import OllamaLlm

    return OllamaLlm("llama3.2", host=url)


# Each provider, and the setting its message must name.
PROVIDERS: list[tuple[Callable[[str], BaseLlm], str]] = [
    (anthropic, "ANTHROPIC_BASE_URL"),
    (openai, "OPENAI_BASE_URL"),
    (lmstudio, "ORCHESTRA_LMSTUDIO_URL"),
    (gemini, "ORCHESTRA_GEMINI_BASE_URL"),
    (huggingface, "ORCHESTRA_HF_BASE_URL"),
    (ollama, "OLLAMA_HOST"),
]


async def _fail(provider: BaseLlm, streamed: bool) -> None:
    request = LlmRequest.build("hi")
    if streamed:
        async for _ in provider.stream(request):
            pass
    else:
        await provider.generate(request)


@pytest.mark.parametrize("streamed", [False, True], ids=["generate", "stream"])
@pytest.mark.parametrize(("make", "setting"), PROVIDERS, ids=[m.__name__ for m, _ in PROVIDERS])
async def test_a_refused_connection_says_so_and_where(
    make: Callable[[str], BaseLlm], setting: str, streamed: bool
) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    async with make(url) as provider:
        with pytest.raises(LLMConnectionError) as caught:
            await _fail(provider, streamed)
    error = caught.value
    message = str(error)
    assert not isinstance(error, LLMTimeoutError)
    assert "timed out" not in message.lower(), message
    assert f"could not connect to {url}" in message, message
    assert "connection refused" in message, message
    assert setting in message, message
    assert error.retryable  # the server may be starting: a transient failure, as before
    assert error.__cause__ is not None  # mapped at the boundary, ``from`` the vendor's error


def _raised(*chain: BaseException) -> BaseException:
    """The first exception, caused by the second, caused by the third..."""
    for outer, inner in zip(chain, chain[1:], strict=False):
        outer.__cause__ = inner
    return chain[0]


def test_an_unknown_host_is_a_connection_never_made() -> None:
    from llm_abstractions.providers.http_errors import connection_error

    exc = _raised(OSError("Cannot connect to host"), socket.gaierror(-2, "Name or service unknown"))
    error = connection_error(exc, provider="p", url="http://nowhere:1", remedy="Check P_URL.")
    assert str(error) == "p: could not connect to http://nowhere:1: unknown host. Check P_URL."


def test_a_connection_lost_midway_is_not_called_refused() -> None:
    from llm_abstractions.providers.http_errors import connection_error

    exc = _raised(OSError("payload"), ConnectionResetError(104, "Connection reset by peer"))
    error = connection_error(exc, provider="p", url="http://h:1", remedy="Check P_URL.")
    assert str(error) == "p: the connection to http://h:1 failed: connection reset by the server"
    assert error.retryable
