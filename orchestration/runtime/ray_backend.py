"""Attempts on a Ray cluster: ``TaskExecutor(backend="ray")`` or ``backend=RayBackend(...)``.

The driver (the process running the DAG) keeps the scheduler, rate limits, budgets,
breakers, the tool loop and the ledger. The work of each attempt runs on the cluster:

- **Provider calls** go to a *provider host*: an async Ray actor of this backend, one per
  node (per set of resources the agents ask for), that builds each provider once and
  answers many calls at once in one process. The embedded model is a provider like the
  others, so its GGUF loads once per node, in that node's host, not once per task. A call
  goes to the host, among the nodes that have the agent's resources, with the fewest calls
  of this driver in flight. A host holds its resources while it lives (until ``aclose``).
- **Scripts and CLI agents** (and the bundled script fallback) run as Ray tasks, placed by
  the agent's resources (one CPU unless it names ``num_cpus``); the subprocess rules are the
  local backend's (``runtime.subprocess_runner``), applied on the node.

An agent's ``resources`` are Ray's: ``num_cpus``, ``num_gpus``, ``memory`` (bytes) and custom
resources such as ``{"llama": 1}``. A run whose agents ask for more than any node has is
refused before it starts. Ray retries nothing itself here (``max_retries=0``): a worker or
actor that dies mid-attempt (``kill -9``, its node lost, Ray's memory monitor) becomes a
``crashed`` attempt in the ledger (``WorkerLostError``) and the task's retry policy decides
what follows; after a host's death, hosts are placed again on the nodes that are alive (a
new one where it died). A host that cannot start, or an environment Ray cannot set up, ends
the task with the reason (``HostError``).

What the driver knows of a provider travels with each call: the provider's registration
(so providers registered in the driver work on the nodes), its model, its key and its
endpoint (``base_url`` or ``host``). The key crosses Ray's connections in the clear unless
Ray's TLS is on (``RAY_USE_TLS``); it is masked in errors before they leave a node, and
Ray's task events (which keep errors) are off for this work. Nodes need orchestra and the
agents' SDKs installed, and the files an agent names (a GGUF, a script, its working
directory) at the same paths as the driver.

Not here (yet): streaming (``on_progress`` hears nothing from calls on the cluster; they
answer whole); a script's process tree outliving a worker killed mid-script; a script
waiting in Ray's queue has no time limit until it starts.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from llm_abstractions.base import BaseLlm
from llm_abstractions.errors import ConfigurationError
from llm_abstractions.threads import LoopCompletion
from orchestration.model.agent_registry import AgentInterface
from orchestration.model.errors import WorkerLostError
from orchestration.runtime.subprocess_runner import ScriptError, ScriptOutcome, run_script

if TYPE_CHECKING:
    from llm_abstractions.specs import ProviderSpec
    from llm_abstractions.types import LlmRequest, LlmResponse
    from orchestration.model.agent_registry import AgentConfig

__all__ = ["ProviderHost", "RayBackend"]

SCRIPT_CPUS = 1.0  # what a script agent reserves when it names no resources
HOST_CALLS = 1000  # calls one provider host answers at once
_NAMED = {"num_cpus": "CPU", "num_gpus": "GPU", "memory": "memory"}  # Ray's names in a node
ResourceKey = tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class ProviderCall:
    """What a node needs to build the driver's provider for an agent."""

    spec: ProviderSpec
    token: str  # the registration in the driver, so a re-registered name is built anew
    model: str | None
    api_key: str | None = field(repr=False)
    endpoint: tuple[tuple[str, str], ...]  # base_url or host, as the driver resolved it

    def key(self) -> tuple[str, str, str | None, str | None, tuple[tuple[str, str], ...]]:
        secret = self.api_key and hashlib.sha256(self.api_key.encode()).hexdigest()
        return (self.spec.name, self.token, self.model, secret, self.endpoint)


class ProviderHost:
    """A Ray actor (async): builds each provider once and answers many calls at once."""

    def __init__(self) -> None:
        self._built: dict[Any, BaseLlm] = {}

    async def generate(self, call: ProviderCall, request: LlmRequest) -> LlmResponse:
        """The provider's answer to ``request``; an error's message without the key.

        (Ray keeps the errors of calls in its worker logs: the key must not be in them.)
        """
        try:
            return await self._provider(call).generate(request)
        except Exception as exc:
            if call.api_key and call.api_key in str(exc):
                exc.args = tuple(_masked(arg, [call.api_key]) for arg in exc.args)
            raise

    def where(self) -> tuple[str, int, list[str]]:
        """This host's node id, process id, and the providers it built (name:model)."""
        import ray

        built = [f"{key[0]}:{llm.model}" for key, llm in self._built.items()]
        return ray.get_runtime_context().get_node_id(), os.getpid(), built

    def _provider(self, call: ProviderCall) -> BaseLlm:
        key = call.key()
        llm = self._built.get(key)
        if llm is None:
            from llm_abstractions.factory import LlmFactory

            spec = call.spec
            LlmFactory.register_provider(
                spec.name,
                spec.target,
                requires=spec.requires,
                extra=spec.extra,
                env_keys=spec.env_keys,
                probe=spec.probe,
                default_model=spec.default_model,
                replace=True,
            )
            llm = LlmFactory.get_provider(
                spec.name, model=call.model, api_key=call.api_key, **dict(call.endpoint)
            )
            self._built[key] = llm
        return llm


def script_on_node(
    argv: Sequence[str], payload: Mapping[str, Any], options: Mapping[str, Any]
) -> ScriptOutcome:
    """Run a script attempt on this node (a Ray task's body).

    A failure's message (a script's stderr may echo its key) leaves the node with the keys
    in the script's environment masked: Ray keeps the errors of tasks in its worker logs.
    """
    try:
        return anyio.run(functools.partial(run_script, argv, payload, **options))
    except ScriptError as exc:
        env: Mapping[str, str] = options.get("env") or {}
        keys = [value for name, value in env.items() if not name.endswith(("_URL", "_HOST"))]
        if not any(key and key in str(exc) for key in keys):
            raise
        raise ScriptError(
            exc.kind, _masked(exc.message, keys), _masked(exc.stderr_tail, keys)
        ) from None


def _masked(text: Any, secrets: list[str]) -> Any:
    """``text`` with ``secrets`` masked (what is not text is left alone)."""
    if not isinstance(text, str):
        return text
    from orchestration.ledger.accounting import redact

    return redact(text, secrets)


@dataclass
class _Host:
    handle: Any
    node: str
    in_flight: int = 0


class RayBackend:
    """Runs attempts' work on a Ray cluster (see the module docstring).

    Args:
        address: The cluster to join (``"auto"``, ``"ray://head:10001"``...); None joins as
            ``ray.init()`` does: ``RAY_ADDRESS``, a running local cluster, or a new one.
        namespace: The Ray namespace this backend joins in (when it calls ``ray.init``).
        init_options: More keyword arguments for ``ray.init`` (``runtime_env``, ...).

    Ray is started or joined when the first run starts. ``aclose`` stops this backend's
    provider hosts (their resources go back to the cluster) and leaves Ray
    (``ray.shutdown``) only if this backend joined it.
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        namespace: str = "orchestra",
        init_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.address = address
        self.namespace = namespace
        self.init_options = dict(init_options or {})
        self._joined = False  # this backend called ray.init
        self._id = uuid.uuid4().hex[:8]  # in its hosts' names: each backend has its own
        self._hosts: dict[ResourceKey, list[_Host]] = {}
        # Hosts this driver saw die, per node: a new host gets a new name (a dead actor's
        # name may still answer for a moment).
        self._deaths: dict[str, int] = {}
        self._placing = anyio.Lock()
        self._script: Any = None
        self._host_class: Any = None

    async def start(self, agents: Sequence[AgentConfig]) -> None:
        """Join the cluster and check that some node has each agent's resources.

        Raises:
            ConfigurationError: Ray is not installed, cannot be joined, or no node has what
                an agent asks for.
        """
        await anyio.to_thread.run_sync(self._join)
        nodes = await anyio.to_thread.run_sync(_alive_nodes)
        for agent in agents:
            wanted = _wanted(agent, host=agent.interface is AgentInterface.API)
            if not any(_fits(node, wanted) for node in nodes):
                offered = "; ".join(_offer(node) for node in nodes) or "no live node"
                raise ConfigurationError(
                    f"agent {agent.name!r} asks for resources {dict(wanted)} that no node of "
                    f"the Ray cluster has (nodes: {offered}); lower them, or add a node that "
                    "has them"
                )

    def _join(self) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigurationError(
                "backend='ray' needs Ray: pip install 'orchestra[ray]'"
            ) from None
        if self._script is None:
            self._script = ray.remote(max_retries=0)(script_on_node)
            self._host_class = ray.remote(max_restarts=0, max_task_retries=0)(ProviderHost)
        if ray.is_initialized():
            return
        options = {"namespace": self.namespace, "log_to_driver": False, **self.init_options}
        try:
            ray.init(address=self.address, **options)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = self.address or os.environ.get("RAY_ADDRESS") or "a new local cluster"
            raise ConfigurationError(f"cannot join the Ray cluster at {where}: {exc}") from None
        self._joined = True

    def provider(self, agent: AgentConfig, built: BaseLlm) -> BaseLlm:
        """A stand-in for ``built`` whose calls run in a provider host."""
        return remote_provider(self, agent, built)

    async def generate(self, agent: AgentConfig, call: ProviderCall, request: LlmRequest) -> Any:
        """``request`` answered by a provider host placed for ``agent``."""
        host = await self._host(_wanted(agent, host=True))
        host.in_flight += 1
        try:
            return await _result(host.handle.generate.remote(call, request))
        except (WorkerLostError, HostError):
            self._forget(host)
            raise
        finally:
            host.in_flight -= 1

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
        """The script run by a Ray task placed by the agent's resources."""
        if self._script is None:  # (a run joins in ``start``; this is for direct callers)
            await anyio.to_thread.run_sync(self._join)
        options = {
            "timeout_s": timeout_s,
            "max_output_bytes": max_output_bytes,
            "env": dict(env),
            "cwd": cwd,
        }
        # Ray's task events would keep a failure's message: none for this work.
        placed = self._script.options(**_ray_options(_wanted(agent)), enable_task_events=False)
        outcome: ScriptOutcome = await _result(placed.remote(list(argv), dict(payload), options))
        return outcome

    async def hosts(self) -> list[tuple[str, int, list[str]]]:
        """Each provider host of this backend: its node id, process id and providers."""
        handles = [host.handle for hosts in self._hosts.values() for host in hosts]
        return [await _result(handle.where.remote()) for handle in handles]

    async def aclose(self) -> None:
        """Stop this backend's provider hosts; leave Ray if this backend joined it."""
        hosts = [host for placed in self._hosts.values() for host in placed]
        self._hosts.clear()
        if not hosts and not self._joined:
            return
        import ray

        def stop() -> None:
            for host in hosts:
                ray.kill(host.handle)
            if self._joined:
                ray.shutdown()

        self._joined = False
        await anyio.to_thread.run_sync(stop)

    async def _host(self, wanted: ResourceKey) -> _Host:
        hosts = self._hosts.get(wanted)
        if not hosts:
            async with self._placing:
                hosts = self._hosts.get(wanted)
                if not hosts:
                    hosts = await anyio.to_thread.run_sync(self._place, wanted)
                    self._hosts[wanted] = hosts
        return min(hosts, key=lambda host: host.in_flight)

    def _place(self, wanted: ResourceKey) -> list[_Host]:
        """A host on every live node that has ``wanted`` (made, or found by name)."""
        self._join()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        nodes = [node for node in _alive_nodes() if _fits(node, wanted)]
        if not nodes:
            raise WorkerLostError(f"no live node of the Ray cluster has {dict(wanted)}")
        suffix = hashlib.sha256(repr(wanted).encode()).hexdigest()[:8]
        hosts = []
        for node in nodes:
            node_id = node["NodeID"]
            generation = self._deaths.get(node_id, 0)
            handle = self._host_class.options(
                name=f"orchestra-host-{self._id}-{node_id[:16]}-{suffix}-{generation}",
                get_if_exists=True,
                max_concurrency=HOST_CALLS,
                enable_task_events=False,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
                **_ray_options(wanted),
            ).remote()
            hosts.append(_Host(handle, node_id))
        return hosts

    def _forget(self, host: _Host) -> None:
        """Drop a host that died: the next call places hosts again on the live nodes."""
        self._deaths[host.node] = self._deaths.get(host.node, 0) + 1
        for wanted, hosts in list(self._hosts.items()):
            if host in hosts:
                del self._hosts[wanted]


_CAPABILITIES = (
    "provider",
    "default_model",
    "is_local",
    "supports_output_schema",
    "supports_grammar",
    "supports_tools",
    "cacheable",
)


@functools.cache
def _remote_class(name: str, capabilities: tuple[tuple[str, Any], ...]) -> type[RemoteProvider]:
    """A ``RemoteProvider`` class with a built provider's capabilities."""
    return type(f"Remote{name}", (RemoteProvider,), dict(capabilities))


class RemoteProvider(BaseLlm):
    """An agent's provider whose calls run on the cluster (answered whole, not streamed)."""

    can_stream = False

    def __init__(self, backend: RayBackend, agent: AgentConfig, built: BaseLlm) -> None:
        super().__init__(built.model)
        from llm_abstractions.factory import LlmFactory

        self._backend, self._agent, self._built = backend, agent, built
        spec = LlmFactory.spec(agent.agent_type)
        key = agent.resolved_api_key()
        if key is None and spec.env_keys:
            key = spec.api_key_from_env()  # the driver's, as the provider built here has
        accepted = inspect.signature(type(built).__init__).parameters
        endpoint = tuple(
            (name, value)
            for name in ("base_url", "host")
            if name in accepted and isinstance(value := getattr(built, name, None), str)
        )
        for name, value in endpoint:
            setattr(self, name, value)  # the response cache keys answers by endpoint
        self._call = ProviderCall(spec, f"{os.getpid()}-{id(spec)}", agent.model, key, endpoint)

    async def generate(self, request: LlmRequest) -> LlmResponse:
        """The answer of the agent's provider, built and called in a provider host."""
        response: LlmResponse = await self._backend.generate(self._agent, self._call, request)
        return response

    async def aclose(self) -> None:
        """Close the provider built in the driver."""
        await self._built.aclose()


def remote_provider(backend: RayBackend, agent: AgentConfig, built: BaseLlm) -> BaseLlm:
    """``built``'s stand-in, with its capabilities, calling through ``backend``."""
    capabilities = tuple((name, getattr(built, name, True)) for name in _CAPABILITIES)
    return _remote_class(type(built).__name__, capabilities)(backend, agent, built)


async def _result(ref: Any) -> Any:
    """The value of a Ray object ref, awaited on any event loop; Ray's errors translated.

    Cancelled, the Ray task is cancelled too (an actor's call gets ``CancelledError``).
    """
    import ray

    done: LoopCompletion[Any] = LoopCompletion()

    def deliver(future: Any) -> None:
        error = future.exception()
        if error is None:
            done.set_result(future.result())
        else:
            done.set_exception(_translated(error))

    ref.future().add_done_callback(deliver)
    try:
        return await done.wait()
    except anyio.get_cancelled_exc_class():
        ray.cancel(ref)
        raise


class HostError(ConfigurationError):
    """The cluster could not run an attempt: no retry helps, the task ends with the reason.

    A provider host that could not start, an environment Ray could not set up.
    """


def _translated(error: BaseException) -> BaseException:
    """What a failure on the cluster means here: the attempt's own error, or a lost worker."""
    from ray import exceptions

    said = (str(error).strip().splitlines() or [type(error).__name__])[0]
    if isinstance(error, exceptions.ActorDiedError) and error.actor_init_failed:
        return HostError(f"a provider host could not start on the Ray cluster: {said}")
    if isinstance(error, exceptions.RayTaskError) and not isinstance(
        error, exceptions.RayActorError
    ):
        cause = error.cause
        if isinstance(cause, Exception) and not isinstance(cause, exceptions.RayError):
            return cause
    lost = (
        exceptions.WorkerCrashedError,
        exceptions.RayActorError,  # the host died, or cannot be reached
        exceptions.NodeDiedError,
        exceptions.LocalRayletDiedError,
        exceptions.OutOfMemoryError,  # Ray's memory monitor killed the worker
        exceptions.ObjectLostError,
        exceptions.ActorUnschedulableError,  # its node is gone
        exceptions.TaskUnschedulableError,
        exceptions.RaySystemError,  # a worker that could not start
    )
    if isinstance(error, lost):
        return WorkerLostError(f"the Ray worker making the attempt died ({said})")
    return HostError(f"Ray could not run the attempt: {type(error).__name__}: {said}")


def _wanted(agent: AgentConfig, host: bool = False) -> ResourceKey:
    """The agent's resources, sorted: for its provider host, or for a script it runs.

    A script reserves one CPU unless its agent names ``num_cpus``; a host nothing unasked.
    """
    wanted = dict(agent.resources or {})
    if not host:
        wanted.setdefault("num_cpus", SCRIPT_CPUS)
    return tuple(sorted(wanted.items()))


def _ray_options(wanted: ResourceKey) -> dict[str, Any]:
    """``.options()`` keyword arguments for ``wanted``; a provider host takes no CPU unasked."""
    given = dict(wanted)
    options: dict[str, Any] = {"num_cpus": given.pop("num_cpus", 0)}
    for name in ("num_gpus", "memory"):
        if name in given:
            options[name] = given.pop(name)
    if given:
        options["resources"] = given
    return options


def _alive_nodes() -> list[dict[str, Any]]:
    import ray

    return [node for node in ray.nodes() if node.get("Alive")]  # type: ignore[no-untyped-call]


def _fits(node: Mapping[str, Any], wanted: ResourceKey) -> bool:
    total = node.get("Resources", {})
    return all(total.get(_NAMED.get(name, name), 0) >= amount for name, amount in wanted)


def _offer(node: Mapping[str, Any]) -> str:
    total = node.get("Resources", {})
    shown = {
        name: total[ray_name]
        for name, ray_name in (*_NAMED.items(),)
        if ray_name in total and name != "memory"
    }
    custom = {
        name: amount
        for name, amount in total.items()
        if name not in _NAMED.values()
        and not name.startswith("node:")
        and name != "object_store_memory"
    }
    return str({**shown, **custom})
