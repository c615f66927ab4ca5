"""Validating a task graph before anything runs or is spent.

``validate_tasks`` collects every problem it can find (duplicate ids, dependencies on tasks
that do not exist, self-dependencies, unknown or missing agents, cycles) and raises them
together, each naming the task ids involved, so a user fixes a graph in one pass.
networkx is imported here, on first validation, not when ``orchestration`` is imported.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from llm_abstractions.errors import ConfigurationError
from orchestration.model.agent_registry import AgentRegistry
from orchestration.model.contracts import OutputContract
from orchestration.model.errors import GraphValidationError, UnknownAgentError
from orchestration.model.tasks import AgentTask

if TYPE_CHECKING:
    import networkx as nx

__all__ = ["validate_tasks"]


def validate_tasks(
    tasks: Sequence[AgentTask],
    registry: AgentRegistry,
    default_agent: str | None = None,
) -> nx.DiGraph[str]:
    """Check that ``tasks`` form a runnable DAG and return it (edges: dependency -> task).

    Args:
        tasks: The tasks of one run.
        registry: Agents the tasks may name.
        default_agent: Agent for tasks that name none.

    Raises:
        GraphValidationError: Lists every problem found, with the offending ids.
    """
    import networkx as nx

    problems: list[str] = []
    if not tasks:
        raise GraphValidationError(["the graph is empty: give at least one task"])
    counts = Counter(task.task_id for task in tasks)
    problems += [f"task id {tid!r} is used {n} times" for tid, n in counts.items() if n > 1]
    problems += _agent_problems(tasks, registry, default_agent)
    problems += _contract_problems(tasks)
    graph: nx.DiGraph[str] = nx.DiGraph()
    graph.add_nodes_from(counts)
    for task in tasks:
        for dep in task.depends_on:
            if dep == task.task_id:
                problems.append(f"task {dep!r} depends on itself")
            elif dep not in counts:
                problems.append(f"task {task.task_id!r} depends on {dep!r}, which is not a task")
            else:
                graph.add_edge(dep, task.task_id)
    problems += _cycle_problems(graph)
    if problems:
        raise GraphValidationError(problems)
    return graph


def _agent_problems(
    tasks: Sequence[AgentTask], registry: AgentRegistry, default_agent: str | None
) -> list[str]:
    problems = []
    for task in tasks:
        name = task.agent or default_agent
        if name is None:
            problems.append(f"task {task.task_id!r} names no agent and no default agent is set")
            continue
        try:
            registry.get(name)
        except UnknownAgentError as exc:
            hint = f" (did you mean {exc.suggestions[0]!r}?)" if exc.suggestions else ""
            problems.append(f"task {task.task_id!r} uses unknown agent {name!r}{hint}")
    return problems


def _contract_problems(tasks: Sequence[AgentTask]) -> list[str]:
    """Output types pydantic cannot handle, validators that are not callables."""
    problems = []
    for task in tasks:
        try:
            OutputContract.of(task.output_type, task.validators)
        except ConfigurationError as exc:
            problems.append(f"task {task.task_id!r}: {exc}")
    return problems


def _cycle_problems(graph: nx.DiGraph[str]) -> list[str]:
    import networkx as nx

    problems = []
    for component in nx.strongly_connected_components(graph):
        if len(component) < 2:
            continue
        cycle = nx.find_cycle(graph.subgraph(component))
        path = [edge[0] for edge in cycle] + [cycle[0][0]]
        problems.append(f"cycle: {' -> '.join(repr(node) for node in path)}")
    return problems
