"""Output contracts: what a task's answer must be before it counts as its output.

A task may name an ``output_type`` (anything ``pydantic.TypeAdapter`` takes: a model, a
dataclass, ``list[...]``, ``dict[...]``) and ``validators``: functions of the parsed value
(or of the text, without an ``output_type``) that raise ``OutputRejected("why")`` to refuse
it, or return a replacement value. ``OutputContract.check`` applies both to an answer:

- the value, when the answer is usable;
- ``OutputRejected`` with a message for the model saying exactly what was wrong (every
  invalid field, with its path), when it is not: the executor records an ``invalid_output``
  attempt and asks again with that message;
- ``ValidatorCrashed`` when a validator itself raised something else: that is the caller's
  bug, not the model's, and is not retried.

Adapters and schemas are built once per type: building one costs far more than a check.
"""

from __future__ import annotations

import inspect
import json
import re
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from llm_abstractions.errors import ConfigurationError

if TYPE_CHECKING:
    from pydantic import TypeAdapter, ValidationError

__all__ = ["OutputContract", "OutputRejected", "ValidatorCrashed", "describe_type", "feedback"]

Validator = Callable[[Any], Any]

_FENCED = re.compile(r"^\s*```[\w+-]*\s*\n(?P<body>.*?)\n\s*```\s*$", re.DOTALL)
_MAX_SHOWN_INPUT = 80  # characters of an invalid value quoted back to the model


class OutputRejected(Exception):  # noqa: N818 - named as users of pydantic-ai's ModelRetry expect
    """Raised by a validator to refuse an answer; the message tells the model what to fix.

    The task's next attempt carries the message (up to ``RetryPolicy.max_output_retries``
    times); when none is left, the task fails with it.
    """


class ValidatorCrashed(Exception):  # noqa: N818 - a crash of the caller's code, reported as such
    """A validator raised something other than ``OutputRejected``: a bug in the validator."""

    def __init__(self, validator: Validator, exc: Exception) -> None:
        last_line = traceback.format_exception_only(exc)[-1].strip()
        self.validator = _name(validator)
        super().__init__(f"validator {self.validator} crashed: {last_line}")


@dataclass(frozen=True)
class OutputContract:
    """A task's ``output_type`` and ``validators``, ready to check answers."""

    output_type: Any
    validators: tuple[Validator, ...]

    @classmethod
    def of(cls, output_type: Any, validators: Sequence[Validator]) -> OutputContract | None:
        """The contract for a task, or None when it has none.

        Raises:
            ConfigurationError: pydantic cannot validate ``output_type`` or write its JSON
                schema, or a validator is not callable.
        """
        if output_type is None and not validators:
            return None
        for validator in validators:
            if not callable(validator):
                raise ConfigurationError(f"validators must be callables, not {validator!r}.")
            if _is_async(validator):
                raise ConfigurationError(
                    f"validator {_name(validator)} is async: validators must be plain "
                    "functions (do the awaiting before the run, or in a later task)."
                )
        contract = cls(output_type, tuple(validators))
        if output_type is not None:
            _schema(output_type)  # fails here, before the run, not at the first answer
        return contract

    @property
    def typed(self) -> bool:
        """Whether answers are parsed as JSON into ``output_type``."""
        return self.output_type is not None

    @property
    def schema_name(self) -> str:
        """A name for the schema, as providers want one (letters, digits, ``_``, ``-``)."""
        return re.sub(r"[^A-Za-z0-9_-]", "_", describe_type(self.output_type))[:64] or "output"

    def json_schema(self) -> dict[str, Any] | None:
        """The JSON schema answers must match (None without an ``output_type``)."""
        return None if self.output_type is None else _schema(self.output_type)

    def describe(self) -> dict[str, Any]:
        """What the ledger keeps of the contract: the type's name and schema, validator names."""
        return {
            "output_type": describe_type(self.output_type) if self.typed else None,
            "json_schema": self.json_schema(),
            "validators": [_name(v) for v in self.validators],
        }

    def check(self, text: str) -> Any:
        """The usable value of an answer.

        Raises:
            OutputRejected: The answer is not usable; the message says why, field by field.
            ValidatorCrashed: A validator failed with another exception.
        """
        value: Any = text
        if self.output_type is not None:
            value = _parse(self.output_type, text)
        for validator in self.validators:
            try:
                replaced = validator(value)
            except OutputRejected:
                raise
            except Exception as exc:
                raise ValidatorCrashed(validator, exc) from exc
            if inspect.isawaitable(replaced):  # an async callable that hid from ``of``
                getattr(replaced, "close", lambda: None)()
                raise ValidatorCrashed(validator, TypeError("it returned an awaitable"))
            if replaced is not None:
                value = replaced
        return value

    def load_json(self, recorded: str) -> Any:
        """A value ``dump_json`` wrote, read back (the JSON itself when it no longer parses)."""
        from pydantic import ValidationError

        if self.output_type is None:
            return json.loads(recorded)
        try:
            return _adapter(self.output_type).validate_json(recorded)
        except ValidationError:  # the type changed since: the recorded JSON is what there is
            return json.loads(recorded)

    def dump_json(self, value: Any) -> str | None:
        """``value`` as JSON for the ledger (None when it cannot be written as JSON).

        Written by the value's own type: a validator may have replaced the parsed value
        with one of another type.
        """
        from pydantic_core import PydanticSerializationError, to_json

        try:
            return to_json(value).decode()
        except (PydanticSerializationError, TypeError, ValueError):
            return None


def describe_type(output_type: Any) -> str:
    """A short name for a type: ``Todo``, ``list[Todo]``, ``dict``."""
    if isinstance(output_type, type):
        return output_type.__name__
    return re.sub(r"\b[\w.]+\.(\w+)", r"\1", str(output_type))


def feedback(reason: str, typed: bool) -> str:
    """The message that asks the model to answer again, after ``reason``."""
    again = (
        "Reply again with only the corrected JSON value, matching the schema."
        if typed
        else "Reply again with the whole answer, corrected."
    )
    return f"Your answer was not accepted:\n{reason}\n{again}"


def _parse(output_type: Any, text: str) -> Any:
    from pydantic import ValidationError

    adapter = _adapter(output_type)
    try:
        return adapter.validate_json(text)
    except ValidationError as exc:
        fenced = _FENCED.match(text)  # a model that wrapped its JSON in a code fence
        if fenced is not None:
            try:
                return adapter.validate_json(fenced.group("body"))
            except ValidationError:
                pass
        raise OutputRejected(_describe_errors(output_type, exc)) from None


def _describe_errors(output_type: Any, exc: ValidationError) -> str:
    """Every invalid field of an answer, one a line, as the model needs to fix it."""
    lines = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or "the answer"
        shown = ""
        if error["type"] not in ("missing", "json_invalid"):
            given = json.dumps(error.get("input"), ensure_ascii=False, default=str)
            if len(given) > _MAX_SHOWN_INPUT:
                given = given[: _MAX_SHOWN_INPUT - 3] + "..."
            shown = f" (got {given})"
        lines.append(f"- {where}: {error['msg']}{shown}")
    return f"It is not a valid {describe_type(output_type)}:\n" + "\n".join(lines)


@lru_cache(maxsize=256)
def _adapter_for(output_type: Any) -> TypeAdapter[Any]:
    from pydantic import TypeAdapter

    return TypeAdapter(output_type)


def _adapter(output_type: Any) -> TypeAdapter[Any]:
    try:
        return _adapter_for(output_type)
    except TypeError:  # unhashable (an Annotated with a dict in it): build it each time
        from pydantic import TypeAdapter

        return TypeAdapter(output_type)


@lru_cache(maxsize=256)
def _schema_for(output_type: Any) -> str:
    return json.dumps(_adapter(output_type).json_schema())


def _schema(output_type: Any) -> dict[str, Any]:
    """The type's JSON schema (a fresh copy: callers may change it).

    Raises:
        ConfigurationError: pydantic cannot handle the type.
    """
    from pydantic import PydanticSchemaGenerationError, PydanticUserError

    try:
        try:
            text = _schema_for(output_type)
        except TypeError:  # unhashable
            text = json.dumps(_adapter(output_type).json_schema())
    except Exception as exc:  # pydantic raises its own errors, and KeyError or worse on junk
        kind = (PydanticSchemaGenerationError, PydanticUserError, TypeError, ValueError)
        said = str(exc).strip() if isinstance(exc, kind) else ""
        first = said.splitlines()[0] if said else f"{type(exc).__name__}: {exc}"
        raise ConfigurationError(
            f"output_type {describe_type(output_type)} cannot be used: pydantic cannot "
            f"validate it or write its JSON schema ({first}). Use a pydantic model, a "
            "dataclass, or list/dict of those."
        ) from None
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def _is_async(validator: Validator) -> bool:
    call = getattr(validator, "__call__", None)  # noqa: B004 - an object's own async __call__
    return inspect.iscoroutinefunction(validator) or inspect.iscoroutinefunction(call)


def _name(validator: Validator) -> str:
    return getattr(validator, "__qualname__", None) or type(validator).__name__
