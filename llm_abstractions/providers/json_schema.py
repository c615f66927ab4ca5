"""JSON schemas made to fit what a vendor's structured output accepts.

Pydantic writes JSON Schema 2020-12; OpenAI's strict structured outputs accept a subset of
it, with two rules pydantic's schemas break: every object must say
``"additionalProperties": false``, and every property must be listed in ``required``
(an optional field is one whose type admits ``null``). ``strict_json_schema`` rewrites a
schema into that subset where the meaning survives, in the spirit of the ``openai`` SDK's
own ``to_strict_json_schema`` (which we do not import: it is private and takes only
pydantic types):

- objects are closed and all of their properties required; a ``default`` is dropped (it can
  never apply once the property is required, and Azure OpenAI rejects it);
- a ``$ref`` with siblings (pydantic adds ``description`` or ``default`` next to one) goes
  into a one-branch ``anyOf``: strict mode refuses siblings of ``$ref``, not of ``anyOf``,
  and unlike inlining the definition (the SDK's way) this cannot loop on a recursive model;
- a discriminated union's ``oneOf`` becomes ``anyOf`` (its branches are disjoint, so both
  accept the same documents), a one-entry ``allOf`` too;
- a root ``$ref`` (pydantic's schema of a recursive model) is replaced by its definition;
- constraints strict mode rejects but that only narrow values (``minLength``,
  ``maxLength``, ``uniqueItems``, an unsupported ``format``...) move into the
  ``description``: the model is still told, and the answer is validated against the
  original schema afterwards.

What it cannot express (a mapping with free keys such as ``dict[str, int]``, a value of any
type, a tuple, ``not``, conditionals, an unknown keyword, a top level that is not an object)
raises ``NotStrictError`` saying where; the caller then sends the original schema without
``strict``. ``wrap_in_object`` and ``unwrap_object`` carry a non-object answer (a list, a
number) through an API that insists on an object at the top level.

``refuse_grammar`` is the one refusal every remote provider shares: a GBNF grammar can only
be followed by the embedded llama.cpp model.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from llm_abstractions.errors import InvalidRequestError
from llm_abstractions.types import LlmRequest

__all__ = [
    "NotStrictError",
    "free_form_part",
    "is_object_schema",
    "refuse_grammar",
    "rewrite_keywords",
    "strict_json_schema",
    "strict_where_possible",
    "unwrap_object",
    "wrap_in_object",
]

# Keywords strict mode accepts, passed on as they are.
_KEPT = frozenset(
    {
        "type",
        "enum",
        "const",
        "title",
        "description",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "minItems",
        "maxItems",
    }
)
# Annotations that constrain nothing: dropped.
_DROPPED = frozenset(
    {"default", "examples", "deprecated", "readOnly", "writeOnly", "$comment", "$schema", "$id"}
)
# Constraints strict mode rejects that only narrow which values are valid: described instead.
_HINTS = frozenset(
    {
        "minLength",
        "maxLength",
        "uniqueItems",
        "minProperties",
        "maxProperties",
        "contains",
        "minContains",
        "maxContains",
    }
)
_FORMATS = frozenset(
    {"date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid"}
)
_LOOKAROUND = ("(?=", "(?!", "(?<=", "(?<!")
# Keywords handled by their own rule in ``_Strict.node``.
_STRUCTURE = frozenset(
    {
        "properties",
        "required",
        "additionalProperties",
        "items",
        "anyOf",
        "oneOf",
        "allOf",
        "$ref",
        "$defs",
        "definitions",
        "discriminator",
        "format",
        "pattern",
    }
)
_WHY = {
    "prefixItems": "a tuple (prefixItems)",
    "patternProperties": "keys matching a pattern (patternProperties)",
    "not": "a negation (not)",
    "if": "a conditional (if/then/else)",
    "dependentSchemas": "a dependency between properties (dependentSchemas)",
    "dependentRequired": "a dependency between properties (dependentRequired)",
}
# What fixes a value's shape; a schema with none of these accepts anything.
_SHAPED = ("type", "enum", "const", "anyOf", "oneOf", "allOf", "$ref")


class NotStrictError(ValueError):
    """The schema has a part OpenAI's strict mode cannot express; the message says which."""


def strict_json_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``schema`` in the subset OpenAI's strict structured outputs accept.

    Args:
        schema: A JSON schema whose top level is an object (``is_object_schema``).

    Raises:
        NotStrictError: A part of it cannot be expressed in that subset.
    """
    root = _inline_root_ref(copy.deepcopy(dict(schema)))
    if not _is_object(root):
        raise NotStrictError("the top level is not an object")
    return _Strict().node(root, "")


def strict_where_possible(schema: Mapping[str, Any], strict: bool) -> tuple[dict[str, Any], bool]:
    """The schema to send and the ``strict`` flag to send with it.

    The strict rewrite when ``strict`` is asked for and the schema allows it; else the
    schema as written, with ``strict: false``. An API that validates the strict subset
    answers 400 to ``strict: true`` on anything else, but follows any schema without it,
    and the answer is validated against the original schema either way.
    """
    if strict:
        try:
            return strict_json_schema(schema), True
        except NotStrictError:
            pass
    return dict(schema), False


def is_object_schema(schema: Mapping[str, Any]) -> bool:
    """Whether the documents ``schema`` describes are objects (following a root ``$ref``)."""
    try:
        return _is_object(_inline_root_ref(dict(schema)))
    except NotStrictError:
        return False


def wrap_in_object(schema: Mapping[str, Any], key: str) -> dict[str, Any]:
    """An object schema with ``schema`` as its one required property ``key``.

    The definitions move up to the new top level, so ``#/$defs/...`` references still
    resolve. Undo it on the answer with ``unwrap_object``.
    """
    inner = dict(schema)
    defs: dict[str, Any] = {k: inner.pop(k) for k in ("$defs", "definitions") if k in inner}
    return {
        "type": "object",
        "properties": {key: inner},
        "required": [key],
        "additionalProperties": False,
        **defs,
    }


def unwrap_object(text: str, key: str) -> str:
    """The JSON of ``key``'s value in an answer to a ``wrap_in_object`` schema.

    An answer of another shape (cut off, or not JSON) is returned as it is, for the
    caller's validation to reject with a reason.
    """
    try:
        document = json.loads(text)
    except ValueError:
        return text
    if not isinstance(document, dict) or list(document) != [key]:
        return text
    return json.dumps(document[key], ensure_ascii=False)


def free_form_part(schema: Mapping[str, Any]) -> str | None:
    """Where ``schema`` allows a mapping with free keys or a value of any type, or None.

    Structured outputs that close every object (Anthropic's, OpenAI's strict mode) cannot
    express either: the first would be closed to an empty object.
    """
    for path, node in _walk(schema, ""):
        if not isinstance(node, Mapping):
            return f"{_where(path)} (a boolean schema)"
        if _is_object(node) and _has_free_keys(node):
            return f"{_where(path)} (a mapping with free keys)"
        if not any(key in node for key in _SHAPED):
            return f"{_where(path)} (a value of any type)"
    return None


# Keywords whose value maps names to schemas, and keywords whose value is data, not schema.
_NAMED_SCHEMAS = ("properties", "$defs", "definitions", "patternProperties")
_DATA = ("enum", "const", "default", "examples")


def rewrite_keywords(schema: Any, keyword: Callable[[str, Any], tuple[str, Any] | None]) -> Any:
    """A copy of ``schema`` with each keyword of each (sub)schema passed to ``keyword``.

    ``keyword(key, value)`` returns the pair to keep (the same or another) or None to drop
    it; the value is then rewritten in turn where it holds schemas. Property names (under
    ``properties``, ``$defs``...) are names, not keywords, and ``enum``, ``const``,
    ``default`` and ``examples`` hold data: neither is passed to ``keyword``.
    """

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(item) for item in node]
        if not isinstance(node, dict):
            return node
        found: dict[str, Any] = {}
        for pair in node.items():
            kept = keyword(*pair)
            if kept is None:
                continue
            key, value = kept
            if key in _NAMED_SCHEMAS and isinstance(value, dict):
                found[key] = {name: walk(item) for name, item in value.items()}
            else:
                found[key] = value if key in _DATA else walk(value)
        return found

    return walk(schema)


def refuse_grammar(provider: str, request: LlmRequest) -> None:
    """Raise when ``request`` carries a grammar: only the embedded model can follow one.

    Raises:
        InvalidRequestError: ``request.grammar`` is set.
    """
    if request.grammar is not None:
        raise InvalidRequestError(
            f"{provider}: GBNF grammars are followed only by the embedded model (provider "
            "`local`); send this request there, or describe the answer with output_schema"
        )


class _Strict:
    """One rewrite of a schema into the strict subset (see the module docstring)."""

    def node(self, node: object, path: str) -> dict[str, Any]:
        if not isinstance(node, Mapping):
            raise NotStrictError(f"{_where(path)} is a boolean schema")
        out: dict[str, Any] = {}
        hints: list[str] = []
        for key, value in node.items():
            if key in _KEPT:
                out[key] = value
            elif key in _HINTS:
                hints.append(f"{key}: {json.dumps(value)}")
            elif key in _STRUCTURE:
                self._structure(node, key, value, path, out, hints)
            elif key not in _DROPPED:
                why = _WHY.get(key, f"the keyword {key!r}")
                raise NotStrictError(f"{_where(path)} uses {why}, which strict mode cannot express")
        if not any(key in node for key in _SHAPED):
            raise NotStrictError(f"{_where(path)} allows a value of any type")
        if node.get("type") == "array" and "items" not in node:
            raise NotStrictError(f"{_where(path)} is an array of values of any type")
        if _is_object(node):
            self._close(node, out, path)
        if hints:
            note = "; ".join(hints)
            out["description"] = f"{out['description']} ({note})" if "description" in out else note
        return _ref_alone(out, path)

    def _structure(
        self,
        node: Mapping[str, Any],
        key: str,
        value: Any,
        path: str,
        out: dict[str, Any],
        hints: list[str],
    ) -> None:
        if key in ("properties", "$defs", "definitions"):
            out[key] = {name: self.node(sub, _join(path, key, name)) for name, sub in value.items()}
        elif key == "items":
            out[key] = self.node(value, _join(path, "items"))
        elif key == "anyOf" or (key == "allOf" and len(value) == 1):
            out["anyOf"] = self._branches(value, path, key)
        elif key == "oneOf" and "discriminator" in node:
            out["anyOf"] = self._branches(value, path, key)  # disjoint branches: same meaning
        elif key in ("oneOf", "allOf"):
            raise NotStrictError(f"{_where(path)} uses {key}, which strict mode cannot express")
        elif key == "$ref":
            if not str(value).startswith("#/"):
                raise NotStrictError(f"{_where(path)} refers outside the schema ({value})")
            out[key] = value
        elif key == "format":
            _keep_or_hint(out, hints, key, value, value in _FORMATS)
        elif key == "pattern":
            _keep_or_hint(out, hints, key, value, not any(t in str(value) for t in _LOOKAROUND))
        # required, additionalProperties: ``_close``; discriminator: OpenAPI's, not JSON Schema's

    def _branches(self, branches: Any, path: str, key: str) -> list[dict[str, Any]]:
        return [self.node(sub, _join(path, key, str(i))) for i, sub in enumerate(branches)]

    @staticmethod
    def _close(node: Mapping[str, Any], out: dict[str, Any], path: str) -> None:
        if _has_free_keys(node):
            raise NotStrictError(f"{_where(path)} is a mapping with free keys")
        properties = out.setdefault("properties", {})
        out["required"] = list(properties)
        out["additionalProperties"] = False


def _keep_or_hint(out: dict[str, Any], hints: list[str], key: str, value: Any, ok: bool) -> None:
    if ok:
        out[key] = value
    else:
        hints.append(f"{key}: {json.dumps(value)}")


def _ref_alone(out: dict[str, Any], path: str) -> dict[str, Any]:
    """``out`` with a ``$ref`` that has siblings moved into a one-branch ``anyOf``."""
    if "$ref" not in out or len(out) == 1:
        return out
    if "anyOf" in out:
        raise NotStrictError(f"{_where(path)} combines $ref and anyOf")
    rest = {key: value for key, value in out.items() if key != "$ref"}
    return {**rest, "anyOf": [{"$ref": out["$ref"]}]}


def _inline_root_ref(root: dict[str, Any]) -> dict[str, Any]:
    """``root`` with a top-level ``$ref`` replaced by the definition it points to."""
    ref = root.get("$ref")
    if ref is None:
        return root
    for prefix in ("#/$defs/", "#/definitions/"):
        if isinstance(ref, str) and ref.startswith(prefix):
            target = root.get(prefix[2:-1], {}).get(ref[len(prefix) :])
            if isinstance(target, Mapping):
                rest = {key: value for key, value in root.items() if key != "$ref"}
                return {**target, **rest}
    raise NotStrictError(f"the top level refers to {ref!r}, which cannot be followed")


def _is_object(node: Mapping[str, Any]) -> bool:
    kind = node.get("type")
    return kind == "object" or (isinstance(kind, list) and "object" in kind)


def _has_free_keys(node: Mapping[str, Any]) -> bool:
    extra = node.get("additionalProperties")
    if extra is None:
        return "properties" not in node  # a bare {"type": "object"}: any keys
    return extra is not False


def _walk(node: Any, path: str) -> Iterator[tuple[str, Any]]:
    """Every subschema of ``node`` with its path, ``node`` first."""
    yield path, node
    if not isinstance(node, Mapping):
        return
    for key in ("properties", "$defs", "definitions", "patternProperties"):
        for name, sub in (node.get(key) or {}).items():
            yield from _walk(sub, _join(path, key, name))
    for key in ("items", "additionalProperties", "not", "if", "then", "else", "contains"):
        if isinstance(node.get(key), Mapping):
            yield from _walk(node[key], _join(path, key))
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        for i, sub in enumerate(node.get(key) or []):
            yield from _walk(sub, _join(path, key, str(i)))


def _join(path: str, *parts: str) -> str:
    return ".".join(p for p in (path, *parts) if p)


def _where(path: str) -> str:
    return f"'{path}'" if path else "the top level"
