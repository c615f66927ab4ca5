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

import os
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
# What running the code leaves behind is not the agent's work.
_BUILT = ("*__pycache__/*", "*.pyc")


@dataclass(frozen=True)
class Workdir:
    """A coding agent's directory for one attempt."""

    path: Path
    kind: str  # worktree, copy or empty
    base: str  # the commit it started from

    @property
    def home(self) -> Path:
        """A directory beside it for the CLI's own files (its configuration, its logs).

        Its name cannot be the working directory's: that is the repository's, or ``work``.
        """
        return self.path.parent / ".cli-home"

    def changes(self, own_files: tuple[str, ...] = ()) -> tuple[list[str], str]:
        """The files changed since it was made, and the diff (cut at ``DIFF_LIMIT``).

        Against the commit it started from: commits the agent made are included. Files
        matching ``own_files`` (git patterns, whose ``*`` crosses directories: what a CLI
        keeps for itself there) are left out, and so is Python's bytecode. Binary files are
        in the diff whole (``--binary``), so that it applies.
        """
        _git(self.path, "add", "-A")
        since = ("diff", "--cached", "--no-renames", self.base)
        left_out = (*own_files, *_BUILT)
        paths = ("--", ".", *(f":(exclude){pattern}" for pattern in left_out))
        names = _git(self.path, *since, "--name-only", "-z", *paths).split("\0")
        names = [name for name in names if name]
        diff = _git(self.path, *since, "--no-color", "--binary", *paths)
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
        return Workdir(path, "empty", _baseline(path))
    source = Path(repo).expanduser().resolve()
    if not source.is_dir():
        raise ConfigurationError(
            f"repo {repo!r} is not a directory: point it at the code to work on"
        )
    path = root / source.name
    if (source / ".git").exists():
        with _lock(source):  # git's own locks make a second add at once fail, not wait
            _git(source, "worktree", "add", "--detach", str(path), "HEAD")
        return Workdir(path, "worktree", _git(path, "rev-parse", "HEAD").strip())
    shutil.copytree(source, path, ignore=shutil.ignore_patterns(".git"), symlinks=True)
    return Workdir(path, "copy", _baseline(path))


_locks: dict[Path, threading.Lock] = {}
_locks_lock = threading.Lock()


def _lock(repo: Path) -> threading.Lock:
    with _locks_lock:
        return _locks.setdefault(repo, threading.Lock())


def _baseline(path: Path) -> str:
    """Make ``path`` a repository of one commit of what it holds; that commit."""
    _git(path, "init", "-q")
    _git(path, "add", "-A")
    _git(path, *_GIT_IDENTITY, "commit", "-q", "--allow-empty", "-m", "before the agent")
    return _git(path, "rev-parse", "HEAD").strip()


def plain_env() -> dict[str, str]:
    """Our environment without anything secret: what a helper command needs to start."""
    from orchestration.runtime.subprocess_runner import BASE_ENV

    return {name: os.environ[name] for name in BASE_ENV if name in os.environ}


# The agent may have written the directory's git configuration: none of it runs here.
_SAFE = ["-c", "core.fsmonitor=false", "-c", "core.hooksPath=/dev/null"]


def _git(where: Path, *args: str) -> str:
    try:
        done = subprocess.run(  # noqa: S603 - git, our arguments
            ["git", *_SAFE, "-C", str(where), *args],  # noqa: S607 - git from PATH
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env=plain_env(),  # none of our keys
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigurationError(f"git {args[0]} failed in {where}: {exc}") from None
    if done.returncode != 0:
        said = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise ConfigurationError(f"git {args[0]} failed in {where}: {said}")
    return done.stdout
