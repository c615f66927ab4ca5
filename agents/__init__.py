"""Specialist agents (architect, backend, frontend, QA, devops).

Empty until the specialist-agents issue lands: the package exists so that the layering
(``demos -> agents -> orchestration -> llm_abstractions``) is fixed from the start.
"""
