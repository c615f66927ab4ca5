"""The DAG a writer process runs into a shared ledger (tests and ``bench/ledger_backends.py``)."""

from __future__ import annotations

from orchestration import AgentTask

__all__ = ["layers"]


def layers(name: str) -> list[AgentTask]:
    """Ten layers of a hundred tasks on agent ``w``, each after two of the layer before."""
    return [
        AgentTask(
            task_id=f"L{layer}-{i}",
            description=f"{name} {layer} {i}",
            agent="w",
            depends_on=() if layer == 0 else (f"L{layer - 1}-{i}", f"L{layer - 1}-{(i + 7) % 100}"),
        )
        for layer in range(10)
        for i in range(100)
    ]
