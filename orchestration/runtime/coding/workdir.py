"""A working directory of its own for each attempt of a coding agent, and what it changed.

So that coding agents running at once do not trample each other, each attempt works in a
directory of its own, made from the agent's ``repo`` setting:

- a git repository: a git worktree of its ``HEAD`` (detached; what is not committed there
  is not in it), beside the repository's own worktrees;
- any other directory: a copy of it (without its ``.git``);
- no ``repo``: a new, empty directory.

Each starts as a git commit of what it holds (a worktree already is one), so that what the
agent changed is a ``git diff`` against it: the files (added, changed, deleted) and the
diff itself, new files included. The directory is kept after the attempt (its path is in
the attempt's metadata): the agent's work is there for the user to take.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from llm_abstractions.errors import ConfigurationError

__all__ = ["Workdir", "prepare"]

_GIT_IDENTITY = ["-c", "user.name=orchestra", "-c", "user.email=orchestra@localhost"]
DIFF_LIMIT = 200_000  # characters of diff kept in the task's output


@dataclass(frozen=True)
class Workdir:
    """A coding agent's directory for one attempt."""

    path: Path
    kind: str  # worktree, copy or empty

    def changes(self) -> tuple[list[str], str]:
        """The files changed since it was made, and the diff (cut at ``DIFF_LIMIT``)."""
        _git(self.path, "add", "-A")
        names = _git(self.path, "diff", "--cached", "--name-only", "--no-renames").split()
        diff = _git(self.path, "diff", "--cached", "--no-renames", "--no-color")
        if len(diff) > DIFF_LIMIT:
            diff = diff[:DIFF_LIMIT] + f"\n[diff cut at {DIFF_LIMIT} characters]\n"
        return names, diff


def prepare(repo: str | None, label: str) -> Workdir:
    """A new working directory for an attempt labelled ``label`` (a task id).

    Raises:
        ConfigurationError: ``repo`` is not a directory, or git is missing or fails.
    """
    if shutil.which("git") is None:
        raise ConfigurationError("coding agents need git (to diff their work): install git")
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in label)[:40]
    root = Path(tempfile.mkdtemp(prefix=f"orchestra-{safe}-"))
    if repo is None:
        path = root / "work"
        path.mkdir()
        _baseline(path)
        return Workdir(path, "empty")
    source = Path(repo).expanduser().resolve()
    if not source.is_dir():
        raise ConfigurationError(
            f"repo {repo!r} is not a directory: point it at the code to work on"
        )
    path = root / source.name
    if (source / ".git").exists():
        with _lock(source):  # git's own locks make a second add at once fail, not wait
            _git(source, "worktree", "add", "--detach", str(path), "HEAD")
        return Workdir(path, "worktree")
    shutil.copytree(source, path, ignore=shutil.ignore_patterns(".git"), symlinks=True)
    _baseline(path)
    return Workdir(path, "copy")


_locks: dict[Path, threading.Lock] = {}
_locks_lock = threading.Lock()


def _lock(repo: Path) -> threading.Lock:
    with _locks_lock:
        return _locks.setdefault(repo, threading.Lock())


def _baseline(path: Path) -> None:
    _git(path, "init", "-q")
    _git(path, "add", "-A")
    _git(path, *_GIT_IDENTITY, "commit", "-q", "--allow-empty", "-m", "before the agent")


def _git(where: Path, *args: str) -> str:
    done = subprocess.run(  # noqa: S603 - git, our arguments
        ["git", "-C", str(where), *args],  # noqa: S607 - git from PATH, as users run it
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        said = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise ConfigurationError(f"git {args[0]} failed in {where}: {said}")
    return done.stdout
