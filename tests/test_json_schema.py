"""The strict-schema rewrite and its helpers (``llm_abstractions.providers.json_schema``).

Each rewritten schema is also checked by the OpenAI fake's own reading of the strict rules
(``strict_schema_problem``), written apart from the code under test.
"""

from __future__ import annotations

import copy
import json
from enum import StrEnum
from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, Field, TypeAdapter

from llm_abstractions import LlmRequest
from llm_abstractions.errors import InvalidRequestError
from llm_abstractions.providers.json_schema import (
    NotStrictError,
    free_form_part,
    is_object_schema,
    refuse_grammar,
    strict_json_schema,
    strict_where_possible,
    unwrap_object,
    wrap_in_object,
)
from tests.fakes.openai_api import strict_schema_problem


class Priority(StrEnum):
    LOW = "low"
    HIGH = "high"


class Step(BaseModel):
    text: str
    minutes: int = 5


class Todo(BaseModel):
    title: str
    steps: list[Step]
    tags: list[str] = []
    note: str | None = None
    priority: Priority = Priority.LOW
    parent: Step | None = Field(default=None, description="the step this todo came from")


class Plan(BaseModel):
    todos: list[Todo]


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The rewrite, checked against the fake's independent reading of OpenAI's rules."""
    result = strict_json_schema(schema)
    assert strict_schema_problem(result, ()) is None, json.dumps(result)
    return result


def test_nested_models_are_closed_with_every_property_required() -> None:
    result = strict(Todo.model_json_schema())
    assert result["additionalProperties"] is False
    assert result["required"] == ["title", "steps", "tags", "note", "priority", "parent"]
    step = result["$defs"]["Step"]
    assert (step["additionalProperties"], step["required"]) == (False, ["text", "minutes"])


def test_optional_fields_stay_nullable_and_lose_their_defaults() -> None:
    result = strict(Todo.model_json_schema())
    note = result["properties"]["note"]
    assert note["anyOf"] == [{"type": "string"}, {"type": "null"}]
    assert "default" not in json.dumps(result)  # a required property's default never applies


def test_lists_keep_their_items_rewritten() -> None:
    result = strict(Todo.model_json_schema())
    assert result["properties"]["steps"]["items"] == {"$ref": "#/$defs/Step"}
    assert result["properties"]["tags"]["items"] == {"type": "string"}
    plan = strict(Plan.model_json_schema())
    assert plan["properties"]["todos"]["items"] == {"$ref": "#/$defs/Todo"}
    assert plan["$defs"]["Todo"]["properties"]["steps"]["items"] == {"$ref": "#/$defs/Step"}


def test_enums_are_kept_and_a_ref_with_siblings_goes_into_any_of() -> None:
    result = strict(Todo.model_json_schema())
    assert result["$defs"]["Priority"]["enum"] == ["low", "high"]
    assert result["properties"]["priority"] == {"$ref": "#/$defs/Priority"}  # default dropped
    parent = result["properties"]["parent"]
    assert parent == {
        "anyOf": [{"$ref": "#/$defs/Step"}, {"type": "null"}],
        "description": "the step this todo came from",
    }
    described = {
        "type": "object",
        "properties": {"step": {"$ref": "#/$defs/Step", "description": "the first"}},
        "$defs": {"Step": Step.model_json_schema()},
    }
    step = strict(described)["properties"]["step"]
    assert step == {"description": "the first", "anyOf": [{"$ref": "#/$defs/Step"}]}


class Node(BaseModel):
    name: str
    children: list[Node] = []


def test_a_recursive_model_is_inlined_at_the_top_and_still_refers_to_itself() -> None:
    schema = Node.model_json_schema()
    assert "$ref" in schema  # pydantic's shape: the top level is only a reference
    result = strict(schema)
    assert (result["type"], result["required"]) == ("object", ["name", "children"])
    assert result["properties"]["children"]["items"] == {"$ref": "#/$defs/Node"}
    assert result["$defs"]["Node"]["additionalProperties"] is False
    assert is_object_schema(schema)


class Cat(BaseModel):
    kind: Literal["cat"]
    lives: int


class Dog(BaseModel):
    kind: Literal["dog"]


class Pet(BaseModel):
    pet: Annotated[Cat | Dog, Field(discriminator="kind")]


def test_a_discriminated_union_becomes_any_of() -> None:
    pet = strict(Pet.model_json_schema())["properties"]["pet"]
    assert pet["anyOf"] == [{"$ref": "#/$defs/Cat"}, {"$ref": "#/$defs/Dog"}]
    assert "oneOf" not in pet and "discriminator" not in pet


class Bounded(BaseModel):
    code: str = Field(min_length=2, max_length=8, pattern=r"^[A-Z]+$")
    site: str = Field(json_schema_extra={"format": "uri"})
    day: str = Field(json_schema_extra={"format": "date"})
    ids: set[int]
    score: float = Field(ge=0, le=1)


def test_constraints_strict_mode_refuses_move_into_the_description() -> None:
    props = strict(Bounded.model_json_schema())["properties"]
    assert props["code"]["pattern"] == r"^[A-Z]+$"
    assert "minLength" not in props["code"] and "maxLength" not in props["code"]
    assert props["code"]["description"] == "maxLength: 8; minLength: 2"  # in the schema's order
    assert props["site"]["description"] == 'format: "uri"' and "format" not in props["site"]
    assert props["day"]["format"] == "date"
    assert props["ids"]["description"] == "uniqueItems: true"
    assert (props["score"]["minimum"], props["score"]["maximum"]) == (0, 1)
    lookahead = {"type": "object", "properties": {"p": {"type": "string", "pattern": "(?=a)"}}}
    assert strict(lookahead)["properties"]["p"] == {
        "type": "string",
        "description": 'pattern: "(?=a)"',
    }


class Tally(BaseModel):
    counts: dict[str, int]


class Loose(BaseModel):
    anything: Any


class Pair(BaseModel):
    pair: tuple[int, str]


@pytest.mark.parametrize(
    ("schema", "why"),
    [
        (Tally.model_json_schema(), r"'properties.counts' is a mapping with free keys"),
        (TypeAdapter(dict[str, Any]).json_schema(), "the top level is a mapping with free keys"),
        (Loose.model_json_schema(), r"'properties.anything' allows a value of any type"),
        (Pair.model_json_schema(), r"'properties.pair' uses a tuple \(prefixItems\)"),
        (TypeAdapter(list[int]).json_schema(), "the top level is not an object"),
        ({"type": "object", "properties": {"x": {"not": {"type": "null"}}}}, "negation"),
        ({"type": "object", "properties": {"x": {"type": "string", "x-ui": 1}}}, "'x-ui'"),
        ({"type": "object", "properties": {"x": True}}, "boolean schema"),
        ({"type": "object", "properties": {"x": {"$ref": "other.json"}}}, "refers outside"),
        (
            {"type": "object", "properties": {"x": {"oneOf": [{"type": "integer"}]}}},
            "uses oneOf",
        ),
        ({"type": "object", "properties": {"x": {"type": "array"}}}, "array of values of any"),
    ],
)
def test_what_strict_mode_cannot_express_is_refused_with_where(
    schema: dict[str, Any], why: str
) -> None:
    with pytest.raises(NotStrictError, match=why):
        strict_json_schema(schema)


def test_the_callers_schema_is_never_changed() -> None:
    schema = Todo.model_json_schema()
    before = copy.deepcopy(schema)
    strict_json_schema(schema)
    strict_where_possible(schema, True)
    wrap_in_object(schema, "value")
    assert schema == before


def test_strict_where_possible_falls_back_to_the_schema_as_written() -> None:
    tally = Tally.model_json_schema()
    assert strict_where_possible(tally, True) == (tally, False)
    todo = Todo.model_json_schema()
    assert strict_where_possible(todo, False) == (todo, False)
    rewritten, flag = strict_where_possible(todo, True)
    assert flag and rewritten["additionalProperties"] is False


def test_a_list_is_wrapped_in_an_object_that_strict_mode_takes_and_unwrapped_after() -> None:
    schema = TypeAdapter(list[Step]).json_schema()
    assert not is_object_schema(schema)
    wrapped = wrap_in_object(schema, "value")
    assert wrapped["properties"]["value"] == {"items": {"$ref": "#/$defs/Step"}, "type": "array"}
    assert "Step" in wrapped["$defs"]  # lifted to the top, where the reference points
    assert strict(wrapped)["required"] == ["value"]
    assert unwrap_object('{"value": [{"text": "a", "minutes": 1}]}', "value") == (
        '[{"text": "a", "minutes": 1}]'
    )


@pytest.mark.parametrize("text", ['{"value": 1', '{"other": 1}', "[1]", '{"value": 1, "x": 2}'])
def test_an_answer_of_another_shape_is_left_for_validation_to_reject(text: str) -> None:
    assert unwrap_object(text, "value") == text


def test_free_form_part_names_what_closed_objects_cannot_hold() -> None:
    assert free_form_part(Todo.model_json_schema()) is None
    assert free_form_part(Node.model_json_schema()) is None
    assert (
        free_form_part(Tally.model_json_schema())
        == "'properties.counts' (a mapping with free keys)"
    )
    assert (
        free_form_part(Loose.model_json_schema()) == "'properties.anything' (a value of any type)"
    )
    items = TypeAdapter(list[dict[str, int]]).json_schema()
    assert free_form_part(items) == "'items' (a mapping with free keys)"


def test_only_a_request_with_a_grammar_is_refused() -> None:
    refuse_grammar("openai-gpt", LlmRequest.build("hi"))
    with pytest.raises(InvalidRequestError, match=r"openai-gpt: .* embedded model"):
        refuse_grammar("openai-gpt", LlmRequest.build("hi", grammar='root ::= "a"'))
