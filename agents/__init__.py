"""Specialist agents, and the Todo-app build they run together.

``SpecialistAgent`` is a role (instructions, what it may write, how strong a model it
needs); ``agents.routing`` picks each role's provider and model; ``agents.contract`` parses
their answers into files and writes them safely; ``agents.todo.TodoBuild`` is the flagship
DAG that ``make demo`` runs.
"""

from agents.contract import ContractError, ParsedOutput, parse_files, write_files
from agents.routing import ModelChoice, route, route_team
from agents.specialists import (
    ARCHITECT,
    BACKEND,
    DEVOPS,
    FRONTEND,
    QA,
    REPAIR,
    SPECIALISTS,
    SpecialistAgent,
)
from agents.todo import TodoBuild, qa_verdict

__all__ = [
    "ARCHITECT",
    "BACKEND",
    "DEVOPS",
    "FRONTEND",
    "QA",
    "REPAIR",
    "SPECIALISTS",
    "ContractError",
    "ModelChoice",
    "ParsedOutput",
    "SpecialistAgent",
    "TodoBuild",
    "parse_files",
    "qa_verdict",
    "route",
    "route_team",
    "write_files",
]
