"""The XDS client against a real ``drimbox index`` (SQLite), with synthetic exams, used as the
Source box uses it: every call carries a VIHF assertion (mode INDIRECTE, for the exam's
radiologist and patient) signed with the box's key, which the index verifies against its
anchors (the ``index`` fixture of ``tests/source_exams.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, closing
from dataclasses import replace
from pathlib import Path

import pytest
from lxml import etree

from drimbox.adapters.documents.kos import kos_bytes
from drimbox.adapters.trust.chain import load_trust_anchors
from drimbox.adapters.trust.pki import load_key
from drimbox.adapters.xds import submission_builder as sb
from drimbox.adapters.xds.client import RegistryRejected, XdsClient
from drimbox.adapters.xds.source_assertion import SourceAssertions, SourceIdentity
from drimbox.domain import xds
from drimbox.domain.errors import PeerUnavailable
from drimbox.domain.manifest import new_uid
from tests.index_fixtures import IndexServer
from tests.peers import free_port
from tests.unit.test_xds_client_builder import NS, PATIENT_ID, SOURCE, SynthExam, synth_exams

ALL = (xds.APPROVED, xds.DEPRECATED)


@pytest.fixture(scope="module")
def exams(tmp_path_factory: pytest.TempPathFactory) -> list[SynthExam]:
    found = synth_exams(tmp_path_factory.mktemp("synth"), patients=2)
    assert len(found) >= 5
    return found


class BoxClient(XdsClient):
    """An XDS client with the Source box's signing key."""

    def __init__(self, url: str, assertions: SourceAssertions) -> None:
        super().__init__(url, timeout=30, source=SOURCE)
        self.assertions = assertions

    def acting_for(self, exam: SynthExam) -> AbstractContextManager[None]:
        """Calls in this block as the box publishing ``exam`` (a fresh assertion each)."""
        return self.acting_as(lambda: self.assertions(patient_of(exam), exam.report))


@pytest.fixture(scope="module")
def assertions(signer_files: tuple[Path, Path]) -> SourceAssertions:
    me = SourceIdentity(lps_id=SOURCE.source_id, lps_homologation="TEST", sector=None,
                        structure_id="499700367909006", structure_name="CABINET DRIMBOX")  # fmt: skip
    return SourceAssertions(me, load_key(signer_files[0]), load_trust_anchors(signer_files[1]))


@pytest.fixture
def client(index: IndexServer, assertions: SourceAssertions) -> Iterator[BoxClient]:
    with closing(BoxClient(index.url, assertions)) as c:
        yield c


def patient_of(exam: SynthExam) -> str:
    return f"{exam.record.patient_ins}^^^&{exam.record.ins_oid}&ISO^NH"


def accession_ref(exam: SynthExam) -> str:
    r = exam.record
    return f"{r.accession}^^^&{r.accession_oid}&ISO^{xds.ACCESSION_REF}"


def publish(client: XdsClient, exam: SynthExam, **changes: object) -> sb.ProvideAndRegisterRequest:
    sub = sb.ExamSubmission(exam.manifest, exam.kos, report=exam.report)
    req = sb.build_provide_and_register(replace(sub, **changes), SOURCE)  # type: ignore[arg-type]
    assert client.provide_and_register(req).short_status == "Success"
    return req


def test_publish_find_retrieve(
    client: BoxClient, index: IndexServer, exams: list[SynthExam]
) -> None:
    exam = exams[0]
    with client.acting_for(exam):
        req = publish(client, exam)
        listed = client.find_documents(patient_of(exam))
        by_uid = {e.unique_id: e for e in listed}
        assert {req.kos_unique_id, req.report_unique_id} <= set(by_uid)
        kos, report = by_uid[req.kos_unique_id], by_uid[req.report_unique_id]
        assert kos.status == xds.APPROVED and kos.entry_uuid.startswith("urn:uuid:")
        assert kos.class_code is not None and kos.class_code.code == "31"
        assert report.type_code is not None and report.type_code.code == "18748-4"
        assert kos.mime_type == "application/dicom" and kos.repository_unique_id == index.repository
        assert kos.reference(xds.STUDY_UID_REF) == exam.record.study_uid
        assert kos.title and kos.creation_time == "20240601120000"

        by_reference = client.find_documents(patient_of(exam), reference_ids=[accession_ref(exam)])
        assert {e.unique_id for e in by_reference} == {req.kos_unique_id, req.report_unique_id}
        modality = exam.manifest.modalities[0]
        by_event = client.find_documents(
            patient_of(exam), event_codes=[xds.Code(modality, xds.MODALITY_SCHEME)]
        )
        assert req.kos_unique_id in {e.unique_id for e in by_event}
        kos_only = client.find_documents(
            patient_of(exam), class_codes=[xds.Code("31", xds.CLASS_SCHEME)],
            reference_ids=[accession_ref(exam)],
        )  # fmt: skip
        assert [e.unique_id for e in kos_only] == [req.kos_unique_id]

        got = client.retrieve(index.repository, [req.kos_unique_id, req.report_unique_id])
        assert got == {req.kos_unique_id: exam.kos, req.report_unique_id: exam.report.cda}
        assert client.get_documents([req.kos_unique_id]) == [kos.entry_uuid]
        full = client.get_documents([req.kos_unique_id], object_ref=False)
        assert [e.entry_uuid for e in full] == [kos.entry_uuid]
    # what the box published, a professional finds with their own token
    with client.on_behalf_of(index.token):
        read = client.find_documents(patient_of(exam), reference_ids=[accession_ref(exam)])
    assert {e.unique_id for e in read} == {req.kos_unique_id, req.report_unique_id}


def test_replacement_deprecates_the_old_kos(client: BoxClient, exams: list[SynthExam]) -> None:
    exam = exams[1]
    with client.acting_for(exam):
        first = publish(client, exam)
        [old_uuid] = client.get_documents([first.kos_unique_id])
        manifest = replace(exam.manifest, sop_instance_uid=new_uid())
        new = sb.build_provide_and_register(
            sb.ExamSubmission(manifest, kos_bytes(manifest), replaces=old_uuid), SOURCE
        )
        client.provide_and_register(new)
        found = client.find_documents(
            patient_of(exam), status=ALL, reference_ids=[accession_ref(exam)]
        )
        status = {e.unique_id: e.status for e in found}
        assert status[first.kos_unique_id] == xds.DEPRECATED
        assert status[new.kos_unique_id] == xds.APPROVED
        assert status[first.report_unique_id] == xds.APPROVED


def test_deprecate_then_delete(client: BoxClient, exams: list[SynthExam]) -> None:
    exam = exams[2]
    with client.acting_for(exam):
        req = publish(client, exam)
        patient = patient_of(exam)
        kos_uuid, report_uuid = client.get_documents([req.kos_unique_id, req.report_unique_id])
        assert client.deprecate(patient, kos_uuid).ok
        client.delete(patient, kos_uuid, original_status=xds.DEPRECATED)
        client.delete(patient, report_uuid)
        refs = [accession_ref(exam)]
        assert client.find_documents(patient, status=ALL, reference_ids=refs) == []
        assert client.get_documents([req.kos_unique_id]) == []
        with pytest.raises(RegistryRejected) as caught:  # Deleted is final
            client.deprecate(patient, kos_uuid)
        assert caught.value.codes == ["UnresolvedReferenceException"]


def test_wrong_patient_in_one_entry_is_rejected(client: BoxClient, exams: list[SynthExam]) -> None:
    exam = exams[3]
    other = next(e for e in exams if e.record.patient_ins != exam.record.patient_ins)
    with client.acting_for(exam):
        req = sb.build_provide_and_register(
            sb.ExamSubmission(exam.manifest, exam.kos, report=exam.report), SOURCE
        )
        report = req.body.find(".//rim:ExtrinsicObject[@id='DocumentReport']", NS)
        assert report is not None
        ident = report.find(f"rim:ExternalIdentifier[@identificationScheme='{PATIENT_ID}']", NS)
        assert ident is not None
        ident.set("value", patient_of(other))
        with pytest.raises(RegistryRejected) as caught:
            client.provide_and_register(req)
        assert "XDSPatientIdDoesNotMatch" in caught.value.codes
        assert any("DocumentReport" in e.code_context for e in caught.value.errors)
        assert client.get_documents([req.kos_unique_id]) == []  # all or nothing


def test_duplicate_unique_id_is_rejected(client: BoxClient, exams: list[SynthExam]) -> None:
    exam = exams[4]
    with client.acting_for(exam):
        publish(client, exam)
        with pytest.raises(RegistryRejected) as caught:
            publish(client, exam)
        assert "XDSDuplicateUniqueIdInRegistry" in caught.value.codes


def test_unexpected_body_is_a_rejection(client: BoxClient, exams: list[SynthExam]) -> None:
    with client.acting_for(exams[0]), pytest.raises(RegistryRejected) as caught:
        client.provide_and_register(
            sb.ProvideAndRegisterRequest(etree.Element("{urn:x}Nonsense"), (), "", "")
        )
    assert "FailedAuthentication" not in str(caught.value)  # the body, not the caller


def test_index_down_is_peer_unavailable(tmp_path: Path, exams: list[SynthExam]) -> None:
    with XdsClient(f"http://127.0.0.1:{free_port()}", timeout=2, source=SOURCE) as down:
        with pytest.raises(PeerUnavailable):
            down.provide_and_register(sb.ExamSubmission(exams[0].manifest, exams[0].kos))
        with pytest.raises(PeerUnavailable):
            down.find_documents(patient_of(exams[0]))
