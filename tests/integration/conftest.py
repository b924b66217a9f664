from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from drimbox.synth import generate_history

# the Source's network parts (module-scoped; a module defining its own overrides them)
from tests.box_pki import pki  # noqa: F401
from tests.peers import Pacs, running_pacs
from tests.source_exams import exams, index, signer_files  # noqa: F401


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic history: a few patients with several modalities over two sites."""
    out = tmp_path_factory.mktemp("synth")
    generate_history(out, patients=3, sites=2, seed=7, size="small")
    return out


@pytest.fixture(scope="session")
def dicom_files(synth_dir: Path) -> list[Path]:
    files = sorted(synth_dir.rglob("*.dcm"))
    assert len(files) > 20
    return files


@pytest.fixture(scope="session")
def studies(dicom_files: list[Path]) -> dict[str, list[Path]]:
    by_study: dict[str, list[Path]] = {}
    for f in dicom_files:
        uid = str(
            dcmread(f, stop_before_pixels=True, specific_tags=["StudyInstanceUID"]).StudyInstanceUID
        )
        by_study.setdefault(uid, []).append(f)
    return by_study


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[Pacs]:
    with running_pacs(tmp_path / "pacs", extra=["--workers", "2"]) as p:
        yield p
