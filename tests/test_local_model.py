"""The embedded provider, answering for real on the bundled SmolLM2-135M GGUF."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import anyio
import pytest

from llm_abstractions import (
    ConfigurationError,
    LLMContextLengthError,
    LlmFactory,
    LlmRequest,
    LlmResponse,
    ModelFileError,
)
from llm_abstractions.providers import llama_engine
from llm_abstractions.providers.gguf import default_model_path
from llm_abstractions.providers.local import LocalLlm
from llm_abstractions.types import MessagesInput
from tests.support.llama_thread import run_on_llama_thread

pytestmark = [pytest.mark.anyio, pytest.mark.model]

QUESTION = "Name three colours of the rainbow."


def ask(prompt: MessagesInput = QUESTION, **params: object) -> LlmRequest:
    params.setdefault("max_tokens", 24)
    params.setdefault("temperature", 0.0)
    return LlmRequest.build(prompt, **params)


async def collect(llm: LocalLlm, request: LlmRequest) -> tuple[str, LlmResponse]:
    pieces, final = await collect_pieces(llm, request)
    return "".join(pieces), final


async def collect_pieces(llm: LocalLlm, request: LlmRequest) -> tuple[list[str], LlmResponse]:
    pieces: list[str] = []
    final: LlmResponse | None = None
    async for chunk in llm.stream(request):
        if chunk.done:
            final = chunk.response
        else:
            assert chunk.response is None
            pieces.append(chunk.delta)
    assert final is not None, "stream ended without its final chunk"
    return pieces, final


@pytest.fixture
def llm() -> LocalLlm:
    built = LlmFactory.get_provider("local")
    assert isinstance(built, LocalLlm)
    return built


async def test_answers_for_real_with_usage(llm: LocalLlm) -> None:
    response = await llm.generate(ask())
    assert response.text.strip()
    assert response.provider == "local"
    assert response.model == "SmolLM2-135M-Instruct.Q4_1"
    assert response.usage.input_tokens and response.usage.input_tokens > 5
    assert response.usage.output_tokens and 0 < response.usage.output_tokens <= 24
    assert response.finish_reason in ("stop", "length")
    assert response.latency_s and response.latency_s > 0


async def test_temperature_zero_is_repeatable(llm: LocalLlm) -> None:
    first = await llm.generate(ask())
    await llm.generate(ask("Something else entirely: say hello."))  # disturb the context
    second = await llm.generate(ask())
    assert first.text == second.text
    assert first.usage == second.usage


@pytest.mark.parametrize(
    ("prompt", "params"),
    [
        # Each gave another text the second time, reusing the first answer's KV cache.
        ("Explain what a computer is.", {"temperature": 0.0}),
        ("Describe a cat in two sentences.", {"temperature": 0.8, "seed": 11}),
    ],
)
async def test_the_same_request_twice_in_one_process_gives_the_same_text(
    llm: LocalLlm, prompt: str, params: dict[str, object]
) -> None:
    request = ask(prompt, max_tokens=48, **params)
    first = await llm.generate(request)
    second = await llm.generate(request)
    streamed, _ = await collect(llm, request)
    assert second.text == first.text
    assert streamed == first.text


async def test_a_repeatable_answer_does_not_depend_on_what_ran_before(llm: LocalLlm) -> None:
    notes = " ".join(
        f"Note {i}: {['red', 'blue', 'green'][i % 3]} apples cost {i * 7} cents." for i in range(70)
    )
    question = f"{notes} Summarise the notes."
    answer = (await llm.generate(ask(question, max_tokens=48))).text
    follow_up = ask(
        [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": "Describe a cat in two sentences."},
        ],
        max_tokens=48,
    )
    after_the_question = await llm.generate(follow_up)  # most of its prompt is cached
    await llm.generate(ask("Say hello."))  # now none of it is
    from_scratch = await llm.generate(follow_up)
    assert after_the_question.text == from_scratch.text


def test_a_cancelled_prompt_stops_between_two_chunks(llm: LocalLlm) -> None:
    class SetBeforeTheThirdChunk(threading.Event):
        checks = 0

        def is_set(self) -> bool:  # the start, then once before each chunk of the prompt
            self.checks += 1
            return self.checks >= 4 or super().is_set()

    request = ask("Summarise this. " + "The quick brown fox jumps over the dog. " * 60)

    def job() -> object:
        engine = llama_engine.get_engine(llm.path, llm.n_ctx, llm.n_threads)
        assert len(engine.prompt_tokens(request)) > 3 * llama_engine.PROMPT_CHUNK
        engine.run(ask("Hi.", max_tokens=1), None, threading.Event())  # none of it cached
        try:
            engine.run(request, None, SetBeforeTheThirdChunk())
        except llama_engine.GenerationCancelled:
            return engine.llama.n_tokens
        return None

    assert run_on_llama_thread(job) == 2 * llama_engine.PROMPT_CHUNK


async def test_seed_makes_sampling_repeatable(llm: LocalLlm) -> None:
    request = ask("Write a word.", temperature=1.2, seed=7, max_tokens=16)
    texts = {(await llm.generate(request)).text for _ in range(2)}
    assert len(texts) == 1
    many = {
        (await llm.generate(ask("Write a word.", temperature=1.5, seed=s))).text for s in range(5)
    }
    assert len(many) > 1, "different seeds at a high temperature should not all agree"


async def test_stream_yields_the_generated_text_and_usage(llm: LocalLlm) -> None:
    generated = await llm.generate(ask(max_tokens=48))
    pieces, final = await collect_pieces(llm, ask(max_tokens=48))
    assert len(pieces) > 1, "text must arrive in pieces, not all at the end"
    assert "".join(pieces) == generated.text == final.text
    assert final.usage == generated.usage
    assert final.finish_reason == generated.finish_reason


async def test_max_tokens_passes_through_the_familiar_alias(llm: LocalLlm) -> None:
    text = await llm.generate_content_async(
        [{"role": "user", "content": "Count from one to fifty in words."}],
        max_tokens=5,
        temperature=0.0,
    )
    response = await llm.generate(ask("Count from one to fifty in words.", max_tokens=5))
    assert text == response.text
    assert response.usage.output_tokens == 5
    assert response.incomplete


async def test_stop_sequence_cuts_the_text(llm: LocalLlm) -> None:
    free = await llm.generate(ask("Count from one to ten: one, two,", max_tokens=30))
    assert "," in free.text
    stopped = await llm.generate(ask("Count from one to ten: one, two,", max_tokens=30, stop=[","]))
    assert "," not in stopped.text
    assert stopped.finish_reason == "stop"
    assert free.text.startswith(stopped.text)
    streamed, _ = await collect(
        llm, ask("Count from one to ten: one, two,", max_tokens=30, stop=[","])
    )
    assert streamed == stopped.text


async def test_json_mode_returns_json(llm: LocalLlm) -> None:
    response = await llm.generate(
        ask('Give a JSON object with key "colour".', response_format="json", max_tokens=80)
    )
    assert response.finish_reason == "stop", response.text
    assert "colour" in json.loads(response.text)


async def test_max_tokens_is_clamped_to_the_room_left() -> None:
    small = LocalLlm(n_ctx=256)
    response = await small.generate(ask("Write a long story about a dragon.", max_tokens=1000))
    assert response.usage.input_tokens is not None
    assert response.usage.input_tokens + (response.usage.output_tokens or 0) == 256
    assert response.finish_reason == "length"


async def test_concurrent_calls_share_one_model_without_crashing(llm: LocalLlm) -> None:
    other = LocalLlm()  # same file: must reuse the loaded model, not load a second one
    results: list[str] = []

    async def one(index: int) -> None:
        target = llm if index % 2 else other
        if index % 3 == 0:
            text, _ = await collect(target, ask())
        else:
            text = (await target.generate(ask())).text
        results.append(text)

    with anyio.fail_after(240):
        async with anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(one, i)
    assert len(results) == 6
    assert len(set(results)) == 1, "same prompt at temperature 0 must give the same text"
    key = (llm.path, llm.n_ctx, llm.n_threads)
    assert (other.path, other.n_ctx, other.n_threads) == key
    before = len(llama_engine._engines)
    await other.generate(ask(max_tokens=1))
    assert len(llama_engine._engines) == before, "a second instance must not load the model again"
    assert key in llama_engine._engines


async def test_event_loop_stays_free_while_generating(llm: LocalLlm) -> None:
    await llm.generate(ask(max_tokens=1))  # load the model first
    done = False
    ticks_while_generating = 0

    async def ticker() -> None:
        nonlocal ticks_while_generating
        while not done:
            await anyio.sleep(0.005)
            ticks_while_generating += not done

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        await llm.generate(ask(max_tokens=20))
        done = True
    assert ticks_while_generating > 0


def test_engine_stops_between_tokens_when_cancelled(llm: LocalLlm) -> None:
    cancelled = threading.Event()
    pieces: list[str] = []

    def emit(piece: str, _tokens: int) -> None:
        pieces.append(piece)
        if len(pieces) == 3:
            cancelled.set()  # what the provider does when its caller goes away

    def job() -> object:
        engine = llama_engine.get_engine(llm.path, llm.n_ctx, llm.n_threads)
        request = ask("Write a long story about a dragon.", max_tokens=200)
        return engine.run(request, emit, cancelled)

    with pytest.raises(llama_engine.GenerationCancelled):
        run_on_llama_thread(job)
    assert len(pieces) == 3, "generation must stop at the first token after the cancel"


async def test_cancelled_calls_release_the_model(llm: LocalLlm) -> None:
    await llm.generate(ask(max_tokens=1))
    with anyio.move_on_after(0.05) as scope:
        await llm.generate(ask("Write a long story about a dragon.", max_tokens=400))
    assert scope.cancelled_caught
    async for _chunk in llm.stream(ask("Write a long story.", max_tokens=400)):
        break  # the consumer walks away after the first piece
    with anyio.fail_after(60):
        response = await llm.generate(ask())
    assert response.text


async def test_context_overflow_is_a_clear_error() -> None:
    small = LocalLlm(n_ctx=64)
    with pytest.raises(LLMContextLengthError, match="ORCHESTRA_LOCAL_N_CTX"):
        await small.generate(ask("word " * 200))


def test_settings_from_arguments_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHESTRA_LOCAL_N_CTX", "1024")
    monkeypatch.setenv("ORCHESTRA_LOCAL_THREADS", "1")
    assert (LocalLlm().n_ctx, LocalLlm().n_threads) == (1024, 1)
    assert LocalLlm(n_ctx=2048, n_threads=2).n_ctx == 2048  # arguments win
    monkeypatch.setenv("ORCHESTRA_LOCAL_N_CTX", "lots")
    with pytest.raises(ConfigurationError, match="ORCHESTRA_LOCAL_N_CTX must be a positive"):
        LocalLlm()
    with pytest.raises(ConfigurationError, match="n_threads= must be a positive"):
        LocalLlm(n_ctx=512, n_threads=0)


def test_model_path_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    bundled = default_model_path()
    assert bundled is not None
    monkeypatch.setenv("ORCHESTRA_LOCAL_MODEL", str(bundled))
    assert LocalLlm().path == bundled.resolve()


def test_missing_model_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="not found.*ORCHESTRA_LOCAL_MODEL"):
        LlmFactory.get_provider("local", model=str(tmp_path / "nope.gguf"))
    with pytest.raises(ModelFileError, match="not a file"):
        LocalLlm(tmp_path)


def test_non_gguf_file_is_refused_before_llama_cpp_sees_it(tmp_path: Path) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 this is a zip, not a model")
    with pytest.raises(ModelFileError, match="not a GGUF model"):
        LocalLlm(fake)


def test_corrupt_gguf_fails_cleanly_in_a_fresh_interpreter(tmp_path: Path) -> None:
    # llama.cpp itself parses this one, so run it where a hard crash could not hide.
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 64)
    code = (
        "import anyio\n"
        "from llm_abstractions import ModelFileError\n"
        "from llm_abstractions.providers.local import LocalLlm\n"
        "async def main():\n"
        f"    llm = LocalLlm({str(broken)!r})\n"
        "    try:\n"
        "        await llm.generate_content_async('hi', max_tokens=2)\n"
        "    except ModelFileError as exc:\n"
        "        print('ModelFileError:', exc)\n"
        "anyio.run(main)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ModelFileError: llama.cpp could not load" in done.stdout


def test_threads_default_to_the_cores_the_load_leaves_free() -> None:
    from llm_abstractions.providers.llama_engine import default_threads, free_cores

    assert [free_cores(2, load) for load in (0.3, 1.7, 5.0)] == [2, 1, 1]
    assert (free_cores(8, 2.0), free_cores(4, None), free_cores(1, 0.0)) == (6, 4, 1)
    assert default_threads() == default_threads() >= 1  # decided once a process
