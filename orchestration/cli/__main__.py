"""``python -m orchestration.cli``: the ``orchestra`` command without its script."""

from orchestration.cli.main import main

main()
