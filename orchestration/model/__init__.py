"""What a run is: agents and their registry, tasks and results, graph validation, errors.

The bottom wing of ``orchestration``: it imports no other wing.
"""
