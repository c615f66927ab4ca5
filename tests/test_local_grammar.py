"""Constrained output on the embedded model: JSON schemas, GBNF grammars, the file contract.

Whether llama.cpp admits a string under a grammar is asked of llama.cpp itself (``admits``):
its grammar sampler, fed the string's tokens one at a time, says whether each is allowed and
whether the turn may end there. So the hand-written edge cases check the grammar text that
the model is actually given, not a re-reading of it.
"""

from __future__ import annotations

import ctypes
import math

import llama_cpp
import pytest
from pydantic import BaseModel

from agents.contract import ContractError, parse_files
from agents.grammar import BLANKS, LINE_BREAKS, file_contract_grammar
from llm_abstractions import InvalidRequestError, LlmFactory, LlmRequest, LlmResponse
from llm_abstractions.providers import llama_engine
from llm_abstractions.providers.llama_engine import GrammarCache, LlamaEngine
from llm_abstractions.providers.local import LocalLlm
from llm_abstractions.types import OutputSchema
from tests.support.llama_thread import run_on_llama_thread

PATHS = ("app/models.py", "app/store.py")
FILE_SYSTEM = (
    "Answer with files only. For each file write a line `FILE: <path>` and then the whole "
    "file in a fenced code block. Paths: app/models.py, app/store.py."
)


class Todo(BaseModel):
    title: str
    done: bool


class TodoList(BaseModel):
    owner: str
    items: list[Todo]


@pytest.fixture
def llm() -> LocalLlm:
    built = LlmFactory.get_provider("local")
    assert isinstance(built, LocalLlm)
    return built


def engine_of(llm: LocalLlm) -> LlamaEngine:
    engine = run_on_llama_thread(
        lambda: llama_engine.get_engine(llm.path, llm.n_ctx, llm.n_threads)
    )
    assert isinstance(engine, LlamaEngine)
    return engine


def admits(engine: LlamaEngine, grammar: str, text: str) -> bool:
    """Whether llama.cpp's grammar sampler lets the model write ``text`` and end its turn."""

    def check() -> bool:
        llama = engine.llama
        sampler = llama_cpp.llama_sampler_init_grammar(
            llama._model.vocab, grammar.encode(), b"root"
        )
        assert sampler, "the grammar must parse"
        try:
            eos = llama.token_eos()
            for token in [*llama.tokenize(text.encode(), add_bos=False, special=False), eos]:
                # One candidate: the grammar sets its logit to -inf when it may not come next.
                data = llama_cpp.llama_token_data(token, 0.0, 0.0)
                candidates = llama_cpp.llama_token_data_array(ctypes.pointer(data), 1, -1, False)
                llama_cpp.llama_sampler_apply(sampler, ctypes.byref(candidates))
                if data.logit == -math.inf:
                    return False
                if token != eos:
                    llama_cpp.llama_sampler_accept(sampler, token)
            return True
        finally:
            llama_cpp.llama_sampler_free(sampler)

    return bool(run_on_llama_thread(check))


def files_request(prompt: str, **params: object) -> LlmRequest:
    params.setdefault("temperature", 0.0)
    params.setdefault("max_tokens", 300)
    return LlmRequest.build(
        prompt, system=FILE_SYSTEM, grammar=file_contract_grammar(PATHS), **params
    )


async def streamed(llm: LocalLlm, request: LlmRequest) -> tuple[str, LlmResponse]:
    pieces: list[str] = []
    final: LlmResponse | None = None
    async for chunk in llm.stream(request):
        if chunk.response is not None:
            final = chunk.response
        else:
            pieces.append(chunk.delta)
    assert final is not None
    return "".join(pieces), final


# The file-contract grammar, without the model ------------------------------------------


def test_the_grammar_knows_every_character_that_could_end_or_blank_a_line() -> None:
    breaks = {c for c in range(0x110000) if len(f"a{chr(c)}b".splitlines()) > 1}
    spaces = {c for c in range(0x110000) if chr(c).isspace()}
    assert set(LINE_BREAKS) == breaks - {0x0A}
    assert set(BLANKS) == spaces - breaks


def test_the_grammar_names_only_the_paths_given_once_each() -> None:
    grammar = file_contract_grammar(["app/models.py", "app/store.py", "app/models.py"])
    assert 'path ::= "app/models.py" | "app/store.py"\n' in grammar
    assert grammar.startswith("root ::= ")


@pytest.mark.parametrize(
    "paths",
    [(), ("../etc/passwd",), ("/abs.py",), ("app/",), ('a".py',), ("a b.py",)],
)
def test_paths_the_contract_would_refuse_are_refused_here(paths: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match=r"path"):
        file_contract_grammar(paths)
    for path in paths:
        with pytest.raises(ContractError):
            parse_files(f"FILE: {path}\n```\nx\n```\n")


# The file-contract grammar, as llama.cpp reads it ---------------------------------------

ADMITTED = {
    "smallest": ("FILE: app/models.py\n```\n```", {"app/models.py": "\n"}),
    "language tag and final newline": (
        "FILE: app/models.py\n```python\nx = 1\n```\n",
        {"app/models.py": "x = 1\n"},
    ),
    "two files, a blank line between": (
        "FILE: app/models.py\n```py\na = 1\n```\n\nFILE: app/store.py\n```c++\nb\n```",
        {"app/models.py": "a = 1\n", "app/store.py": "b\n"},
    ),
    "lines that look like fences or contract lines but are not": (
        "FILE: app/store.py\n```objective-c\n``x\n`` ```\n  `` `\nx ```\n` ```\n`\n``\n"
        "\t\n   \nFILE: app/models.py\n~~~\n\xa0``\nnaïve ✓ 🙂\n```",
        {
            "app/store.py": "``x\n`` ```\n  `` `\nx ```\n` ```\n`\n``\n\t\n   \n"
            "FILE: app/models.py\n~~~\n\xa0``\nnaïve ✓ 🙂\n"
        },
    ),
    "the same file twice (the parser keeps the first)": (
        "FILE: app/models.py\n```\none\n```\nFILE: app/models.py\n```\ntwo\n```",
        {"app/models.py": "one\n"},
    ),
}

REFUSED = {
    "prose before the first file": "Here:\nFILE: app/models.py\n```\nx\n```",
    "prose after the last file": "FILE: app/models.py\n```\nx\n```\nDone.",
    "prose between files": "FILE: app/models.py\n```\nx\n```\nnext\nFILE: app/store.py\n```\n```",
    "two blank lines between files": (
        "FILE: app/models.py\n```\nx\n```\n\n\nFILE: app/store.py\n```\n```"
    ),
    "a path not given": "FILE: app/other.py\n```\nx\n```",
    "a fence never closed": "FILE: app/models.py\n```python\nx = 1\n",
    "no fence": "FILE: app/models.py\nx = 1\n",
    "an inner fence": "FILE: app/models.py\n```md\n```python\nx\n```\n```",
    "an indented fence inside": "FILE: app/models.py\n```\n  ```\nx\n```",
    "a tab-indented fence inside": "FILE: app/models.py\n```\n\t```\nx\n```",
    "a no-break-space before a fence inside": "FILE: app/models.py\n```\n\xa0```\nx\n```",
    "a four-backtick line inside": "FILE: app/models.py\n```\n````\nx\n```",
    "a line separator inside a line": "FILE: app/models.py\n```\na\u2028```\nx\n```",
    "CRLF line endings": "FILE: app/models.py\r\n```\r\nx\r\n```",
    "a space in the language tag": "FILE: app/models.py\n```python x\nx\n```",
    "a language tag too long": "FILE: app/models.py\n```" + "a" * 17 + "\nx\n```",
    "a closing fence with a tail": "FILE: app/models.py\n```\nx\n``` \n",
}


@pytest.mark.model
@pytest.mark.parametrize("case", ADMITTED)
def test_what_the_grammar_admits_parses_as_meant(llm: LocalLlm, case: str) -> None:
    text, files = ADMITTED[case]
    assert admits(engine_of(llm), file_contract_grammar(PATHS), text)
    assert parse_files(text, PATHS).files == files


@pytest.mark.model
@pytest.mark.parametrize("case", REFUSED)
def test_what_the_grammar_refuses(llm: LocalLlm, case: str) -> None:
    assert not admits(engine_of(llm), file_contract_grammar(PATHS), REFUSED[case])


@pytest.mark.model
def test_each_once_admits_every_path_once_in_order_and_nothing_after(llm: LocalLlm) -> None:
    grammar = file_contract_grammar(PATHS, each_once=True)
    models = "FILE: app/models.py\n```python\nA = 1\n```"
    store = "FILE: app/store.py\n```\nB = 2\n```"
    engine = engine_of(llm)
    assert admits(engine, grammar, f"{models}\n\n{store}\n")
    assert parse_files(f"{models}\n{store}", PATHS).files == {
        "app/models.py": "A = 1\n",
        "app/store.py": "B = 2\n",
    }
    assert not admits(engine, grammar, models)  # a path left out
    assert not admits(engine, grammar, f"{store}\n{models}")  # out of order
    assert not admits(engine, grammar, f"{models}\n{store}\n{store}")  # written twice
    assert admits(engine, file_contract_grammar(PATHS), f"{models}\n{store}\n{store}")


@pytest.mark.model
def test_the_admission_check_itself_tells_a_prefix_from_a_whole(llm: LocalLlm) -> None:
    engine = engine_of(llm)
    assert admits(engine, 'root ::= "yes" | "no"', "yes")
    assert not admits(engine, 'root ::= "yes" | "no"', "ye")
    assert not admits(engine, 'root ::= "yes" | "no"', "maybe")


# The real model under the file-contract grammar ----------------------------------------

PROMPTS = (
    "Write app/models.py with a User class.",
    "Write a function that adds two numbers.",
    "Write a Todo dataclass in app/models.py and an in-memory TodoStore in app/store.py.",
)


@pytest.mark.model
@pytest.mark.anyio
async def test_answers_under_the_file_grammar_parse_or_say_they_were_cut(llm: LocalLlm) -> None:
    finished = 0
    for prompt in PROMPTS:
        response = await llm.generate(files_request(prompt))
        if response.finish_reason == "stop":
            parsed = parse_files(response.text, PATHS)
            assert parsed.files and set(parsed.files) <= set(PATHS)
            assert all("given twice" in problem for problem in parsed.problems)
            finished += 1
        else:
            assert response.incomplete
            assert response.usage.output_tokens == 300
            assert response.text.startswith(("FILE: app/models.py\n```", "FILE: app/store.py\n```"))
    assert finished >= 2, "the prompts were chosen so that the model ends most answers"


@pytest.mark.model
@pytest.mark.anyio
async def test_an_answer_cut_by_max_tokens_is_detectably_incomplete(llm: LocalLlm) -> None:
    response = await llm.generate(files_request(PROMPTS[0], max_tokens=20))
    assert response.finish_reason == "length"
    assert response.text.startswith("FILE: app/models.py\n```")
    with pytest.raises(ContractError, match="never closed"):
        parse_files(response.text, PATHS)


@pytest.mark.model
@pytest.mark.anyio
async def test_streaming_follows_the_grammar_too(llm: LocalLlm) -> None:
    request = files_request(PROMPTS[1], temperature=0.8, seed=3)
    generated = await llm.generate(request)
    text, final = await streamed(llm, request)
    assert text == final.text == generated.text
    assert parse_files(text, PATHS).files


# JSON schemas ----------------------------------------------------------------------------


@pytest.mark.model
@pytest.mark.anyio
async def test_a_typed_answer_through_the_schema_grammar(llm: LocalLlm) -> None:
    assert LocalLlm.supports_output_schema and LocalLlm.supports_grammar
    request = LlmRequest.build(
        "Give me a todo item for buying milk.",
        output_schema=OutputSchema(name="todo", json_schema=Todo.model_json_schema()),
        temperature=0.0,
        max_tokens=80,
    )
    response = await llm.generate(request)
    assert response.finish_reason == "stop", response.text
    todo = Todo.model_validate_json(response.text)
    assert todo.title
    text, final = await streamed(llm, request)
    assert text == final.text == response.text


@pytest.mark.model
def test_nested_schemas_become_grammars(llm: LocalLlm) -> None:
    engine = engine_of(llm)
    schema = OutputSchema(json_schema=TodoList.model_json_schema())  # with $defs and $ref
    request = LlmRequest.build("list", output_schema=schema)
    assert run_on_llama_thread(lambda: engine.grammars.for_request(request)) is not None


# Grammars llama.cpp cannot use, and the cache --------------------------------------------


@pytest.mark.model
@pytest.mark.anyio
@pytest.mark.parametrize(
    ("grammar", "reason"),
    [
        ('root ::= "a" x', "Undefined rule identifier 'x'"),
        ('root ::= root "a" | "a"', "left recursion"),
        ('answer ::= "a"', "'root' symbol"),
        ("root ::= [a-", "unexpected end of input"),
    ],
)
async def test_a_grammar_llama_cpp_cannot_parse_is_an_invalid_request(
    llm: LocalLlm, grammar: str, reason: str, capfd: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(InvalidRequestError, match=reason):
        await llm.generate(LlmRequest.build("hi", grammar=grammar, max_tokens=4))
    with pytest.raises(InvalidRequestError, match=reason):
        async for _chunk in llm.stream(LlmRequest.build("hi", grammar=grammar, max_tokens=4)):
            pytest.fail("nothing may be generated")
    assert reason not in capfd.readouterr().err, "llama.cpp's message belongs in the error"
    response = await llm.generate(LlmRequest.build("hi", grammar='root ::= "ok"'))
    assert response.text == "ok"


@pytest.mark.model
@pytest.mark.anyio
async def test_a_schema_the_converter_cannot_use_is_an_invalid_request(llm: LocalLlm) -> None:
    schema = OutputSchema(json_schema={"$ref": "https://example.com/todo.json"})
    with pytest.raises(InvalidRequestError, match="JSON-schema converter"):
        await llm.generate(LlmRequest.build("hi", output_schema=schema))
    not_json = OutputSchema(json_schema={"enum": {"a", "b"}})
    with pytest.raises(InvalidRequestError, match="not JSON"):
        await llm.generate(LlmRequest.build("hi", output_schema=not_json))


@pytest.mark.model
@pytest.mark.anyio
async def test_a_grammar_is_compiled_once_per_model(llm: LocalLlm) -> None:
    cache = engine_of(llm).grammars
    grammar = 'root ::= "yes" | "no" # compiled once'  # a text no other test uses
    request = LlmRequest.build("Is the sky blue?", grammar=grammar, max_tokens=4)
    before = cache.compiled
    first = await llm.generate(request)
    assert cache.compiled == before + 1
    second = await llm.generate(request.model_copy(update={"temperature": 0.0}))
    _, third = await streamed(llm, request)
    assert cache.compiled == before + 1, "the same text must not be compiled again"
    assert {first.text, second.text, third.text} <= {"yes", "no"}
    await llm.generate(request.model_copy(update={"grammar": grammar + " "}))
    assert cache.compiled == before + 2


@pytest.mark.model
def test_the_cache_forgets_the_least_recently_used(
    llm: LocalLlm, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = engine_of(llm)
    monkeypatch.setattr(GrammarCache, "SIZE", 2)
    cache = GrammarCache(engine.llama._model.vocab)
    a, b, c = ('root ::= "a"', 'root ::= "b"', 'root ::= "c"')

    def use(*texts: str) -> None:
        for text in texts:
            cache.get("gbnf", text)

    run_on_llama_thread(lambda: use(a, b, a, c))  # b is the least recently used when c comes
    assert cache.compiled == 3
    run_on_llama_thread(lambda: use(a, c))
    assert cache.compiled == 3
    run_on_llama_thread(lambda: use(b))
    assert cache.compiled == 4
