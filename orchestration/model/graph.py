"""Validating a task graph before anything runs or is spent.

``validate_tasks`` collects every problem it can find (duplicate ids, dependencies on tasks
that do not exist, self-dependencies, unknown or missing agents, cycles) and raises them
together, each naming the task ids involved, so a user fixes a graph in one pass.
networkx is imported here, on first validation, not when ``orchestration`` is imported.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llm_abstractions.errors import ConfigurationError
from orchestration.model.agent_registry import AgentRegistry
from orchestration.model.contracts import OutputContract
from orchestration.model.errors import GraphValidationError, UnknownAgentError
from orchestration.model.tasks import AgentTask

if TYPE_CHECKING:
    import networkx as nx

__all__ = ["TaskGraph", "checked_graph", "validate_tasks"]


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
    return checked_graph(tasks, registry, default_agent).networkx()


@dataclass(frozen=True)
class TaskGraph:
    """A run's tasks as a checked DAG: each task's dependents, in plain dictionaries.

    What the executor schedules with: building a networkx graph cost 4 us an edge, more
    than scheduling a task.
    """

    dependents: dict[str, list[str]]  # every task, in order, with the tasks that need it
    edges: list[tuple[str, str]]  # (dependency, task)

    def waiting_on(self) -> dict[str, int]:
        """How many dependencies each task has."""
        counts = dict.fromkeys(self.dependents, 0)
        for _, task in self.edges:
            counts[task] += 1
        return counts

    def descendants(self, task_id: str) -> set[str]:
        """Every task that needs ``task_id``, directly or not."""
        found: set[str] = set()
        todo = [task_id]
        while todo:
            for child in self.dependents[todo.pop()]:
                if child not in found:
                    found.add(child)
                    todo.append(child)
        return found

    def networkx(self) -> nx.DiGraph[str]:
        """The same graph in networkx."""
        import networkx as nx

        graph: nx.DiGraph[str] = nx.DiGraph()
        graph.add_nodes_from(self.dependents)
        graph.add_edges_from(self.edges)
        return graph


def checked_graph(
    tasks: Sequence[AgentTask],
    registry: AgentRegistry,
    default_agent: str | None = None,
) -> TaskGraph:
    """``validate_tasks``, as a ``TaskGraph``.

    Raises:
        GraphValidationError: Lists every problem found, with the offending ids.
    """
    problems: list[str] = []
    if not tasks:
        raise GraphValidationError(["the graph is empty: give at least one task"])
    counts = Counter(task.task_id for task in tasks)
    problems += [f"task id {tid!r} is used {n} times" for tid, n in counts.items() if n > 1]
    problems += _agent_problems(tasks, registry, default_agent)
    problems += _contract_problems(tasks)
    dependents: dict[str, list[str]] = {tid: [] for tid in counts}
    edges: list[tuple[str, str]] = []
    for task in tasks:
        for dep in task.depends_on:
            if dep == task.task_id:
                problems.append(f"task {dep!r} depends on itself")
            elif dep not in counts:
                problems.append(f"task {task.task_id!r} depends on {dep!r}, which is not a task")
            else:
                edges.append((dep, task.task_id))
                dependents[dep].append(task.task_id)
    graph = TaskGraph(dependents, edges)
    if not _acyclic(graph):  # networkx's search, slower, only to name the cycles
        problems += _cycle_problems(graph.networkx())
    if problems:
        raise GraphValidationError(problems)
    return graph


def _acyclic(graph: TaskGraph) -> bool:
    """Whether the graph has no cycle (Kahn's algorithm: every task can be taken in order)."""
    waiting = graph.waiting_on()
    ready = [task for task, count in waiting.items() if count == 0]
    taken = 0
    while ready:
        task = ready.pop()
        taken += 1
        for child in graph.dependents[task]:
            waiting[child] -= 1
            if waiting[child] == 0:
                ready.append(child)
    return taken == len(waiting)


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
