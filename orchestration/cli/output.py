"""``orchestra output RUN [TASK]``: what a task answered, exactly as it answered it.

With a task, the text is printed alone (nothing around it), so that it can be piped or
redirected to a file; ``--attempt N`` prints what one try sent back, refused or not, and with
``--json`` what it was sent too. A task without a usable answer prints nothing on stdout, says
why on stderr, and exits 1.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, NoReturn

import typer

from orchestration.cli.common import open_ledger, resolve

__all__ = ["output"]

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of the text.")]


def output(
    run: Annotated[str, typer.Argument(help="Run id, or its first characters.")],
    task: Annotated[
        str | None, typer.Argument(help="The task (all of them when left out).")
    ] = None,
    attempt: Annotated[
        int | None, typer.Option("--attempt", help="One try of the task, by its number.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Print a task's final output (or every task's, or one attempt's answer)."""
    from orchestration.ledger.history import attempt_answer, resolve_run, task_outputs

    ledger = open_ledger()
    try:
        run_id = resolve(lambda: resolve_run(ledger, run))
        if attempt is not None:
            if task is None:
                _fail("--attempt needs a task: orchestra output RUN TASK --attempt N", code=2)
            one, number = str(task), attempt
            found = resolve(lambda: attempt_answer(ledger, run_id, one, number))
            _print_attempt(found, as_json)
            return
        outputs = resolve(lambda: task_outputs(ledger, run_id, task))
    finally:
        ledger.close()
    if as_json:
        shown = outputs[0] if task is not None else outputs
        typer.echo(json.dumps(_parsed(shown), indent=2, ensure_ascii=False))
    elif task is not None:
        _print_one(run_id, outputs[0])
    else:
        for found in outputs:
            typer.echo(f"=== {found['task_id']}: {found['status']} ===")
            typer.echo(found["output"] if found["status"] == "succeeded" else found["error"] or "")
    if any(found["status"] != "succeeded" for found in outputs):
        raise typer.Exit(1)


def _print_one(run_id: str, found: dict[str, Any]) -> None:
    if found["status"] == "succeeded" and found["output"] is not None:
        typer.echo(found["output"], nl=not found["output"].endswith("\n"))
        return
    why = (found["error"] or found["status"]).splitlines()[0]
    hint = ""
    if found["attempts"]:
        hint = (
            f"; its last answer: orchestra output {run_id[:12]} {found['task_id']} "
            f"--attempt {found['attempts']}"
        )
    _fail(f"task {found['task_id']!r} has no usable output ({why}){hint}")


def _print_attempt(found: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(_parsed(found), indent=2, ensure_ascii=False))
        return
    if found["response"] is None:
        _fail(f"attempt {found['attempt']} of {found['task_id']!r} got no answer: {found['error']}")
    typer.echo(found["response"], nl=not found["response"].endswith("\n"))


def _parsed(found: Any) -> Any:
    """JSON columns (the request, the value) as JSON, not as strings within it."""
    if isinstance(found, list):
        return [_parsed(item) for item in found]
    shown = dict(found)
    for key in ("request", "value"):
        if shown.get(key) is not None:
            shown[key] = json.loads(shown[key])
    return shown


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)
