"""Coding-agent CLIs (Claude Code...) as agents: each task in a directory of its own.

``clis`` knows each CLI (command line, environment, output), ``workdir`` makes the
directories and reads what changed, ``provider`` runs them as ``BaseLlm`` providers
(``register_agent("coder", "claude-code", repo=".")``).
"""
