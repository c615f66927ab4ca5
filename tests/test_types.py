from __future__ import annotations

import pytest

from llm_abstractions import (
    InvalidRequestError,
    LlmRequest,
    LlmResponse,
    Message,
    OutputSchema,
    Usage,
)


def test_build_from_string_and_dicts() -> None:
    from_text = LlmRequest.build("hello", max_tokens=5)
    assert from_text.messages == (Message(role="user", content="hello"),)
    assert from_text.max_tokens == 5
    from_dicts = LlmRequest.build([{"role": "user", "content": "hi"}], temperature=0.2)
    assert from_dicts.messages[0].content == "hi"
    assert from_dicts.temperature == 0.2


def test_system_messages_are_lifted_into_system() -> None:
    request = LlmRequest.build(
        [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "q"},
            {"role": "system", "content": "be kind"},
        ],
        system="you are a bot",
    )
    assert request.system == "you are a bot\n\nbe brief\n\nbe kind"
    assert [m.role for m in request.messages] == ["user"]


@pytest.mark.parametrize(
    ("messages", "params", "needle"),
    [
        ([], {}, "messages"),
        ([{"role": "system", "content": "only system"}], {}, "add a user message"),
        ([{"role": "robot", "content": "x"}], {}, "messages.0.role"),
        ("hi", {"max_tokens": 0}, "max_tokens"),
        ("hi", {"temperature": 3.5}, "temperature"),
        ("hi", {"max_tokns": 5}, "max_tokns"),
    ],
)
def test_invalid_requests_name_the_field(
    messages: object, params: dict[str, object], needle: str
) -> None:
    with pytest.raises(InvalidRequestError) as info:
        LlmRequest.build(messages, **params)  # type: ignore[arg-type]
    assert needle in str(info.value)
    assert isinstance(info.value, ValueError)


def test_unknown_usage_is_none_not_zero() -> None:
    usage = Usage()
    assert usage.input_tokens is None and usage.output_tokens is None
    assert usage.total_tokens is None
    assert Usage(input_tokens=3, output_tokens=0).total_tokens == 3
    assert LlmResponse(text="", provider="p", model="m").usage == Usage()


def test_incomplete_means_cut_by_length() -> None:
    assert LlmResponse(text="", provider="p", model="m", finish_reason="length").incomplete
    assert not LlmResponse(text="", provider="p", model="m", finish_reason="stop").incomplete


def test_prompt_text_includes_system_and_roles() -> None:
    request = LlmRequest.build("q", system="s")
    assert request.prompt_text() == "system: s\nuser: q"


def test_a_request_asks_for_one_output_constraint_at_most() -> None:
    schema = OutputSchema(name="todo", json_schema={"type": "object"})
    assert LlmRequest.build("hi", output_schema=schema).output_schema == schema
    assert LlmRequest.build("hi", grammar='root ::= "yes"').grammar == 'root ::= "yes"'
    assert LlmRequest.build("hi", response_format="text", grammar="root ::= [a-z]+").grammar
    with pytest.raises(InvalidRequestError, match="at most one of response_format, output_schema"):
        LlmRequest.build("hi", response_format="json", output_schema=schema)
    with pytest.raises(InvalidRequestError, match="output_schema.name"):
        LlmRequest.build("hi", output_schema={"name": "no spaces", "json_schema": {}})
