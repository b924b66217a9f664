"""Synthetic exams for the Source's integration tests, and the module-scoped network parts
they share (see ``tests/integration/conftest.py``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from drimbox.adapters.trust.pki import create_ca, issue, write_issued
from drimbox.synth import generate_history
from tests.index_fixtures import IndexServer, database_url, running_index, vihf_roots


@dataclass
class Exam:
    record: dict[str, Any]
    folder: Path

    @property
    def study_uid(self) -> str:
        return str(self.record["study_uid"])

    @property
    def patient_id(self) -> str:
        r = self.record
        return f"{r['patient_ins']}^^^&{r['ins_oid']}&ISO^NH"

    @property
    def sops(self) -> set[str]:
        return {u for s in self.record["series"] for u in s["sop_instance_uids"]}

    def files(self) -> list[Path]:
        return [self.folder / f for s in self.record["series"] for f in s["files"]]

    def message(self, kind: str, event: str = "new") -> bytes:
        m = next(
            m for m in self.record["hl7_messages"] if m["kind"] == kind and m["event"] == event
        )
        return (self.folder / m["path"]).read_bytes()


@pytest.fixture(scope="module")
def exams(tmp_path_factory: pytest.TempPathFactory) -> list[Exam]:
    out = tmp_path_factory.mktemp("synth-source")
    # seed 2: 3 patients, 11 exams, one of them with a corrected report (version 2)
    generate_history(out, patients=3, sites=1, seed=2, size="small", message_type="both")
    manifest = json.loads((out / "manifest.json").read_text())
    return [Exam(e, out) for e in manifest["exams"]]


@pytest.fixture(scope="module")
def signer_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("pki")
    ca, _ = create_ca()
    write_issued(issue(ca, "CABINET DRIMBOX", kind="signing"), folder, "signer")
    return folder / "signer.key", folder / "signer-fullchain.pem"


@pytest.fixture(scope="module")
def index(
    tmp_path_factory: pytest.TempPathFactory, signer_files: tuple[Path, Path]
) -> Iterator[IndexServer]:
    """The boxes publish with VIHF assertions signed by ``signer_files``; readers call with a
    professional's token (``index.token``)."""
    folder = tmp_path_factory.mktemp("index-source")
    anchors = vihf_roots(signer_files[1], folder / "vihf-roots.pem")
    with database_url("sqlite", folder) as url, \
            running_index(url, vihf_trust_anchors=anchors) as server:  # fmt: skip
        yield server
