from __future__ import annotations

import pytest

from orchestration import AgentRegistry, AgentTask, GraphValidationError, validate_tasks


@pytest.fixture
def registry() -> AgentRegistry:
    agents = AgentRegistry()
    agents.register_agent("architect", "local")
    agents.register_agent("backend", "local")
    return agents


def task(task_id: str, *deps: str, agent: str | None = "backend") -> AgentTask:
    return AgentTask(task_id=task_id, description=f"do {task_id}", agent=agent, depends_on=deps)


def problems_of(tasks: list[AgentTask], registry: AgentRegistry, **kw: str) -> list[str]:
    with pytest.raises(GraphValidationError) as info:
        validate_tasks(tasks, registry, **kw)
    assert isinstance(info.value, ValueError)
    return info.value.problems


def test_valid_dag_is_returned_with_dependency_edges(registry: AgentRegistry) -> None:
    graph = validate_tasks(
        [task("spec", agent="architect"), task("api", "spec"), task("ui", "spec")], registry
    )
    assert sorted(graph.edges) == [("spec", "api"), ("spec", "ui")]


def test_empty_graph(registry: AgentRegistry) -> None:
    assert problems_of([], registry) == ["the graph is empty: give at least one task"]


def test_duplicates_missing_dependencies_and_self_loops(registry: AgentRegistry) -> None:
    problems = problems_of([task("a"), task("a"), task("b", "ghost"), task("c", "c")], registry)
    assert "task id 'a' is used 2 times" in problems
    assert "task 'b' depends on 'ghost', which is not a task" in problems
    assert "task 'c' depends on itself" in problems


def test_cycle_is_named(registry: AgentRegistry) -> None:
    problems = problems_of([task("a", "c"), task("b", "a"), task("c", "b"), task("d")], registry)
    assert len(problems) == 1
    cycle = problems[0]
    assert cycle.startswith("cycle: ")
    nodes = cycle.removeprefix("cycle: ").split(" -> ")
    assert nodes[0] == nodes[-1] and sorted(nodes[:-1]) == ["'a'", "'b'", "'c'"]


def test_two_separate_cycles_are_both_reported(registry: AgentRegistry) -> None:
    problems = problems_of(
        [task("a", "b"), task("b", "a"), task("x", "y"), task("y", "x")], registry
    )
    assert len([p for p in problems if p.startswith("cycle:")]) == 2


def test_unknown_and_missing_agents(registry: AgentRegistry) -> None:
    problems = problems_of([task("a", agent="archtect"), task("b", agent=None)], registry)
    assert "task 'a' uses unknown agent 'archtect' (did you mean 'architect'?)" in problems
    assert "task 'b' names no agent and no default agent is set" in problems
    assert validate_tasks([task("b", agent=None)], registry, default_agent="backend")


def test_every_problem_is_reported_at_once(registry: AgentRegistry) -> None:
    problems = problems_of([task("a", "ghost", agent="nobody"), task("a")], registry)
    assert len(problems) == 3
