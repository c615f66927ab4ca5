"""A typed task: the answer must be a ``Todo``, and a validator may refuse it with a reason.

Runs on the embedded model with no key (its decoding is held to the schema by a llama.cpp
grammar); with ANTHROPIC_API_KEY or OPENAI_API_KEY set, pass ``--provider`` to use that.
"""

from __future__ import annotations

import argparse

import anyio
from pydantic import BaseModel

from orchestration import AgentRegistry, AgentTask, OutputRejected, TaskExecutor


class Todo(BaseModel):  # noqa: D101 - its docstring would be in the schema the model reads
    title: str
    done: bool = False


def short_title(todo: Todo) -> None:
    if not 0 < len(todo.title) <= 60:
        raise OutputRejected("The title must be 1 to 60 characters long.")


async def main(provider: str) -> None:
    registry = AgentRegistry()
    registry.register_agent("planner", provider, metadata={"max_tokens": 96, "temperature": 0})
    task = AgentTask(
        task_id="todo",
        agent="planner",
        description="Give one todo for learning Python this week.",
        output_type=Todo,
        validators=(short_title,),
    )
    async with TaskExecutor(registry) as executor:
        result = await executor.execute(task)
    print(result.status.value, repr(result.value), result.error or "")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--provider", default="local", help="provider of the agent")
    anyio.run(main, parser.parse_args().provider)
