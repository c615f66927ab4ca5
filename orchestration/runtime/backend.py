"""Where an attempt's work runs: in this process (``local``) or on a Ray cluster (``ray``).

The executor keeps the scheduling, rate limits, budgets, breakers and the ledger in the
process that runs the DAG (the driver), so they stay global and exact. A backend decides
where the work of an attempt happens: the provider's call (each model turn of a tool loop;
the tools themselves run in the driver) and a script or CLI agent's subprocess.

``TaskExecutor(backend=...)`` takes ``"local"`` (the default), ``"ray"`` (a ``RayBackend``
connecting as ``ray.init()`` does: ``RAY_ADDRESS``, else a running local cluster, else a new
one), or a backend object such as ``RayBackend(address="ray://head:10001")``; given none, it
takes ``ORCHESTRA_BACKEND`` (so the CLI's ``run`` and ``resume`` can use a cluster too).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from llm_abstractions.errors import ConfigurationError
from orchestration.runtime.subprocess_runner import ScriptOutcome, run_script

if TYPE_CHECKING:
    from llm_abstractions.base import BaseLlm
    from orchestration.model.agent_registry import AgentConfig

__all__ = ["ENV", "Backend", "LocalBackend", "backend_of"]

ENV = "ORCHESTRA_BACKEND"  # the backend of executors given none: local or ray


class Backend(Protocol):
    """Runs the work of attempts; the executor keeps everything else."""

    name: str

    async def start(self, agents: Sequence[AgentConfig]) -> None:
        """Get ready for a run using ``agents``, before anything is recorded or spent.

        Raises:
            ConfigurationError: The backend cannot run these agents (say, no node has the
                resources one asks for).
        """
        ...

    def provider(self, agent: AgentConfig, built: BaseLlm) -> BaseLlm:
        """The provider the agent's attempts call, given the one built in this process."""
        ...

    async def run_script(
        self,
        agent: AgentConfig,
        argv: Sequence[str],
        payload: Mapping[str, Any],
        *,
        timeout_s: float,
        max_output_bytes: int,
        env: Mapping[str, str],
        cwd: str | None,
    ) -> ScriptOutcome:
        """Run a script attempt (``subprocess_runner.run_script``'s contract)."""
        ...

    async def aclose(self) -> None:
        """Release what the backend holds (its connection to a cluster)."""
        ...


class LocalBackend:
    """Every attempt in this process (scripts as its children): the default."""

    name = "local"

    async def start(self, agents: Sequence[AgentConfig]) -> None:
        """Nothing to prepare."""

    def provider(self, agent: AgentConfig, built: BaseLlm) -> BaseLlm:
        """The provider itself."""
        return built

    async def run_script(
        self,
        agent: AgentConfig,
        argv: Sequence[str],
        payload: Mapping[str, Any],
        *,
        timeout_s: float,
        max_output_bytes: int,
        env: Mapping[str, str],
        cwd: str | None,
    ) -> ScriptOutcome:
        """The script as a child of this process."""
        return await run_script(
            argv, payload, timeout_s=timeout_s, max_output_bytes=max_output_bytes, env=env, cwd=cwd
        )

    async def aclose(self) -> None:
        """Nothing to release."""


def backend_of(given: str | Backend | None) -> Backend:
    """The backend ``TaskExecutor(backend=...)`` names; None: ``ORCHESTRA_BACKEND``, else local.

    The variable lets a command choose without code: ``ORCHESTRA_BACKEND=ray orchestra
    resume RUN`` finishes a run on the cluster.

    Raises:
        ConfigurationError: An unknown name.
    """
    source = "backend"
    if given is None:
        given, source = os.environ.get(ENV, "").strip() or "local", ENV
    if given == "local":
        return LocalBackend()
    if given == "ray":
        from orchestration.runtime.ray_backend import RayBackend

        return RayBackend()
    if isinstance(given, str):
        raise ConfigurationError(
            f"{source} {given!r} is not one orchestra knows: use 'local' or 'ray' (or, in "
            "code, a backend object such as RayBackend(address=...))"
        )
    return given
