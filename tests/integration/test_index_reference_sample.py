"""The ANS reference ITI-41 submissions (ansforge/DRIM-M_DATA) posted byte for byte.

Only the XAdES signature and the VIHF assertion are not checked (the samples' certificates
are masked): the samples are posted with a professional's bearer token, which the index reads
before any assertion. The documents travel as MTOM parts ``cid:0.2`` (KOS) and ``cid:0.3``
(signature) as the samples' ``xop:Include`` say.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import xds_messages as m
from tests.index_fixtures import IndexServer, database_url, running_index

DATA = Path(__file__).parents[3] / "shared" / "drim-m" / "data" / "Echantillons validateurs"
VALIDATOR = DATA / "Validateur XDS" / "XDS.xml"
CROSS = DATA / "Cross-validateur" / "Echantillons de validation" / "XDS.xml"
KOS = b"\x00" * 128 + b"DICM" + uuid.uuid4().bytes * 64
SIGNATURE = b"<ds:Signature xmlns:ds='http://www.w3.org/2000/09/xmldsig#'/>\n"

pytestmark = pytest.mark.skipif(
    not DATA.is_dir(), reason=f"ANS sample folder {DATA} is absent (shared/drim-m/data)"
)


@pytest.fixture(params=["sqlite", "postgresql"])
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[IndexServer]:
    # the samples have fixed uniqueIds: a fresh database per test
    with database_url(request.param, tmp_path) as url, running_index(url) as server:
        yield server


def _post_sample(index: IndexServer, envelope: bytes) -> m.Answer:
    message = m.mtom(envelope, [("0.2", KOS), ("0.3", SIGNATURE)], m.ITI41)
    return m.post(index.client, "/repository", message)


def _leaf_by_symbol(index: IndexServer, patient: str) -> dict[str, dict[str, list[str]]]:
    query = {
        "$XDSDocumentEntryPatientId": [f"'{patient}'"],
        "$XDSDocumentEntryStatus": ["('Approved')"],
    }
    answer = m.post(index.client, "/registry", m.stored_query(m.FIND_DOCUMENTS, query))
    out = {}
    for eo in answer.extrinsic():
        slots = {s.get("name", ""): [v.text or "" for v in s.iter(f"{{{m.RIM}}}Value")]
                 for s in eo.findall("rim:Slot", m.NS)}  # fmt: skip
        out[eo.get("mimeType", "")] = slots
    return out


def test_cross_validation_sample_patient_mismatch_is_caught(index: IndexServer) -> None:
    """The cross-validation sample files its KOS under patient 274075176079430 in a
    submission set of patient 162018885045327 (its signature and VIHF say 162...): a
    registry must refuse it, naming the KOS, and register nothing."""
    answer = _post_sample(index, CROSS.read_bytes())
    assert answer.status() == "Failure"
    assert answer.error_codes() == ["XDSPatientIdDoesNotMatch"]
    assert answer.error_contexts()[0].startswith("DocumentKOS: patientId 274075176079430")
    assert _leaf_by_symbol(index, "162018885045327^^^&1.2.250.1.213.1.4.10&ISO^NH") == {}


def test_cross_validation_sample_registered_once_consistent(index: IndexServer) -> None:
    """With the KOS filed under the submission set's patient, and no hash/size sent (the
    repository computes them, as ITI-41 allows), the sample is registered as sent."""
    text = CROSS.read_text(encoding="utf-8").replace(
        'registryObject="DocumentKOS" value="274075176079430',
        'registryObject="DocumentKOS" value="162018885045327',
    )
    answer = _post_sample(index, text.encode("utf-8"))
    assert answer.status() == "Success", answer.error_contexts()
    leaf = _leaf_by_symbol(index, "162018885045327^^^&1.2.250.1.213.1.4.10&ISO^NH")
    kos = leaf["application/dicom"]
    assert kos["hash"] == [hashlib.sha1(KOS).hexdigest().upper()]
    assert kos["size"] == [str(len(KOS))]
    assert kos["sourcePatientInfo"][0] == "PID-5|PAT-HUIT^FRANCOISE^^^^^L"
    assert kos["serviceStartTime"] == ["20210104092200+0100"]  # returned as sent
    assert leaf["text/xml"]["languageCode"] == ["art"]
    uid = "1.2.250.1.59.844.2.1234567890123.1276394488319797597.955.1.1"
    got = m.post(index.client, "/repository", m.retrieve(index.repository, [uid]))
    assert list(got.parts.values()) == [KOS]
    # the +0100 offset is honoured: 09:22 in Paris is 08:22 UTC
    query = {"$XDSDocumentEntryPatientId": ["'162018885045327^^^&1.2.250.1.213.1.4.10&ISO^NH'"],
             "$XDSDocumentEntryStatus": ["('Approved')"],
             "$XDSDocumentEntryServiceStartTimeFrom": ["202101040830"]}  # fmt: skip
    late = m.post(index.client, "/registry", m.stored_query(m.FIND_DOCUMENTS, query))
    assert [eo.get("mimeType") for eo in late.extrinsic()] == ["text/xml"]


def test_validator_sample_hash_placeholders_are_caught(index: IndexServer) -> None:
    """The validator sample gives both documents the same hash and size (placeholders):
    no real pair of documents matches them, so the repository must refuse both."""
    answer = _post_sample(index, VALIDATOR.read_bytes())
    assert answer.status() == "Failure"
    assert sorted(set(answer.error_codes())) == ["XDSNonIdenticalHash", "XDSNonIdenticalSize"]
    assert {c.split(":")[0] for c in answer.error_contexts()} == {"DocumentKOS", "Signature01"}


def test_validator_sample_with_true_hashes_is_registered(index: IndexServer) -> None:
    text = VALIDATOR.read_text(encoding="utf-8")
    # only the placeholder values change: first occurrence is the KOS, second the signature
    for data in (KOS, SIGNATURE):
        text = text.replace(
            "40F393C8374838DA6115DE7B140CAEEF06866EBF", hashlib.sha1(data).hexdigest().upper(), 1
        )
        text = text.replace("<Value>109448</Value>", f"<Value>{len(data)}</Value>", 1)
    answer = _post_sample(index, text.encode("utf-8"))
    assert answer.status() == "Success", answer.error_contexts()
    leaf = _leaf_by_symbol(index, "162018885045327^^^&1.2.250.1.213.1.4.10&ISO^NH")
    assert leaf["application/dicom"]["URI"] == ["DOC0001.XML"]  # unknown slots kept
    assert leaf["application/dicom"]["legalAuthenticator"][0].startswith(
        "899700367909^DOC0036790^KIT"
    )
    again = _post_sample(index, text.encode("utf-8"))
    assert "XDSDuplicateUniqueIdInRegistry" in again.error_codes()
