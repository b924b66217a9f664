"""Every XDS transaction of ``drimbox index`` over HTTP, on SQLite and on PostgreSQL, as a
professional with their token (:data:`~tests.index_fixtures.PROFESSIONAL`, the author of the
documents submitted here)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import xds_messages as m
from tests.index_fixtures import IndexServer, database_url, running_index
from tests.xds_messages import Doc, new_ins, post

OTHER_PROFESSIONAL = "899700000001"  # not the author of any document here


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def index(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[IndexServer]:
    folder = tmp_path_factory.mktemp(f"index-{request.param}")
    with database_url(request.param, folder) as url, running_index(url) as server:
        yield server


def submit(index: IndexServer, patient: str, docs: list[Doc], extra: str = "") -> m.Answer:
    return post(index.client, "/repository", m.provide_and_register(patient, docs, extra))


def find(
    index: IndexServer, patient: str, return_type: str = "LeafClass", **params: list[str]
) -> m.Answer:
    query = {"$XDSDocumentEntryPatientId": [f"'{patient}'"],
             "$XDSDocumentEntryStatus": [f"('{m.APPROVED}')"]}  # fmt: skip
    query.update({f"$XDSDocumentEntry{k}": v for k, v in params.items()})
    return post(index.client, "/registry", m.stored_query(m.FIND_DOCUMENTS, query, return_type))


def unique_ids(answer: m.Answer) -> set[str]:
    out = set()
    for eo in answer.extrinsic():
        for ext in eo.findall("rim:ExternalIdentifier", m.NS):
            if ext.get("identificationScheme") == "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab":
                out.add(ext.get("value"))
    return out


def entry_uuid(index: IndexServer, unique_id: str) -> str:
    answer = post(index.client, "/registry", m.stored_query(
        m.GET_DOCUMENTS, {"$XDSDocumentEntryUniqueId": [f"('{unique_id}')"]}, "ObjectRef"))  # fmt: skip
    refs = answer.body.findall("rim:RegistryObjectList/rim:ObjectRef", m.NS)
    assert len(refs) == 1, answer.error_codes()
    return refs[0].get("id", "")


def test_register_query_retrieve(index: IndexServer) -> None:
    patient = new_ins()
    kos, report = Doc(patient, "KOS"), Doc(patient, "Report", kind="report", content=b"<cda/>")
    report.study_uid = kos.study_uid
    answer = submit(index, patient, [kos, report])
    assert answer.status_code == 200 and answer.status() == "Success", answer.error_contexts()
    found = find(index, patient)
    assert found.status() == "Success"
    assert unique_ids(found) == {kos.unique_id, report.unique_id}
    for eo in found.extrinsic():
        assert eo.get("status") == m.APPROVED
        names = {s.get("name") for s in eo.findall("rim:Slot", m.NS)}
        assert {"hash", "size", "repositoryUniqueId", "sourcePatientInfo"} <= names
    refs = find(index, patient, "ObjectRef").body.findall(
        "rim:RegistryObjectList/rim:ObjectRef", m.NS
    )
    assert len(refs) == 2
    got = post(
        index.client, "/repository", m.retrieve(index.repository, [kos.unique_id, report.unique_id])
    )
    assert got.status() == "Success"
    docs = got.body.findall("xdsb:DocumentResponse", m.NS)
    by_uid = {}
    for d in docs:
        cid = d.find("xdsb:Document/xop:Include", m.NS).get("href")[4:]  # type: ignore[union-attr]
        by_uid[d.findtext("xdsb:DocumentUniqueId", namespaces=m.NS)] = got.parts[cid]
    assert by_uid == {kos.unique_id: kos.content, report.unique_id: report.content}


def test_retrieve_partial_success(index: IndexServer) -> None:
    patient = new_ins()
    kos = Doc(patient)
    assert submit(index, patient, [kos]).status() == "Success"
    got = post(
        index.client, "/repository", m.retrieve(index.repository, [kos.unique_id, m.new_uid()])
    )
    assert got.status() == "PartialSuccess"
    assert got.error_codes() == ["XDSDocumentUniqueIdError"]
    other = post(index.client, "/repository", m.retrieve("1.2.3", [kos.unique_id]))
    assert other.status() == "Failure" and other.error_codes() == ["XDSUnknownRepositoryId"]


@pytest.fixture(scope="module")
def history(index: IndexServer) -> tuple[str, dict[str, Doc]]:
    patient = new_ins()
    docs = {
        "ct2023": Doc(patient, "D1", modality="CT", creation_time="20230310080000", service_start="20230310070000"),
        "mr2024": Doc(patient, "D2", modality="MR", creation_time="20240601120000", service_start="20240601110000"),
        "report": Doc(patient, "D3", kind="report", modality="US", creation_time="20240602090000", service_start="20240601110000",
                      confidentiality=(("N", "2.16.840.1.113883.5.25"), ("INVISIBLE_PATIENT", "1.2.250.1.213.1.1.4.13"))),
    }  # fmt: skip
    assert submit(index, patient, list(docs.values())).status() == "Success"
    return patient, docs


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, {"ct2023", "mr2024", "report"}),
        ({"ClassCode": ["('31^^1.2.250.1.213.1.1.4.1')"]}, {"ct2023", "mr2024"}),
        ({"TypeCode": ["('18748-4^^2.16.840.1.113883.6.1')"]}, {"report"}),
        ({"FormatCode": ["('1.2.840.10008.5.1.4.1.1.88.59^^1.2.840.10008.2.6.1')"]}, {"ct2023", "mr2024"}),
        ({"PracticeSettingCode": ["('AMBULATOIRE^^1.2.250.1.213.1.1.4.9')"]}, {"ct2023", "mr2024", "report"}),
        ({"PracticeSettingCode": ["('HOSPITALISATION^^1.2.250.1.213.1.1.4.9')"]}, set()),
        ({"HealthcareFacilityTypeCode": ["('SA07^^1.2.250.1.71.4.2.4')"]}, {"ct2023", "mr2024", "report"}),
        ({"EventCodeList": ["('MR^^1.2.250.1.213.1.1.5.618')"]}, {"mr2024"}),
        ({"EventCodeList": ["('MR^^1.2.250.1.213.1.1.5.618','CT^^1.2.250.1.213.1.1.5.618')"]}, {"ct2023", "mr2024"}),
        ({"EventCodeList": ["('MR^^1.2.250.1.213.1.1.5.618')", "('CT^^1.2.250.1.213.1.1.5.618')"]}, set()),
        ({"EventCodeList": ["('63337009^^1.2.250.1.213.2.5')", "('CT^^1.2.250.1.213.1.1.5.618')"]}, {"ct2023"}),
        ({"CreationTimeFrom": ["20240101"]}, {"mr2024", "report"}),
        ({"CreationTimeTo": ["20240101"]}, {"ct2023"}),
        ({"CreationTimeFrom": ["20240601"], "CreationTimeTo": ["20240602"]}, {"mr2024"}),
        ({"ServiceStartTimeFrom": ["202406"]}, {"mr2024", "report"}),
        ({"ServiceStartTimeTo": ["202306"]}, {"ct2023"}),
        ({"ServiceStopTimeFrom": ["20240601"]}, {"mr2024", "report"}),
        ({"ServiceStopTimeTo": ["20240101"]}, {"ct2023"}),
        ({"ConfidentialityCode": ["('INVISIBLE_PATIENT^^1.2.250.1.213.1.1.4.13')"]}, {"report"}),
        ({"ConfidentialityCode": ["('N^^2.16.840.1.113883.5.25')"]}, {"ct2023", "mr2024", "report"}),
    ],
)  # fmt: skip
def test_find_documents_filters(
    index: IndexServer,
    history: tuple[str, dict[str, Doc]],
    params: dict[str, list[str]],
    expected: set[str],
) -> None:
    patient, docs = history
    answer = find(index, patient, **params)
    assert answer.status() == "Success", answer.error_contexts()
    assert unique_ids(answer) == {docs[k].unique_id for k in expected}


def test_find_documents_by_reference_id(
    index: IndexServer, history: tuple[str, dict[str, Doc]]
) -> None:
    patient, docs = history
    ref = f"{docs['mr2024'].accession}^^^&1.2.250.1.999.2&ISO^urn:ihe:iti:xds:2013:accession"
    query = {"$XDSDocumentEntryPatientId": [f"'{patient}'"], "$XDSDocumentEntryStatus": ["('Approved')"],
             "$XDSDocumentEntryReferenceIdList": [f"('{ref}')"]}  # fmt: skip
    answer = post(index.client, "/registry", m.stored_query(m.FIND_BY_REFERENCE, query))
    assert unique_ids(answer) == {docs["mr2024"].unique_id}
    del query["$XDSDocumentEntryReferenceIdList"]
    missing = post(index.client, "/registry", m.stored_query(m.FIND_BY_REFERENCE, query))
    assert missing.error_codes() == ["XDSStoredQueryParamNumber"]


def test_find_submission_sets_and_unknown_query(
    index: IndexServer, history: tuple[str, dict[str, Doc]]
) -> None:
    patient, _ = history
    query = {
        "$XDSSubmissionSetPatientId": [f"'{patient}'"],
        "$XDSSubmissionSetStatus": ["('Approved')"],
    }
    answer = post(index.client, "/registry", m.stored_query(m.FIND_SUBMISSION_SETS, query))
    assert len(answer.body.findall("rim:RegistryObjectList/rim:RegistryPackage", m.NS)) == 1
    unknown = post(
        index.client,
        "/registry",
        m.stored_query("urn:uuid:00000000-0000-0000-0000-000000000000", query),
    )
    assert unknown.status() == "Failure" and unknown.error_codes() == ["XDSUnknownStoredQuery"]


def test_replacement_deprecates_the_old_entry(index: IndexServer) -> None:
    patient = new_ins()
    old = Doc(patient, "Old")
    assert submit(index, patient, [old]).status() == "Success"
    old_uuid = entry_uuid(index, old.unique_id)
    new = Doc(patient, "New", study_uid=old.study_uid, accession=old.accession)
    rplc = m.association("urn:ihe:iti:2007:AssociationType:RPLC", "New", old_uuid)
    answer = submit(index, patient, [new], rplc)
    assert answer.status() == "Success", answer.error_contexts()
    assert unique_ids(find(index, patient)) == {new.unique_id}
    deprecated = find(index, patient, Status=[f"('{m.DEPRECATED}')"])
    assert unique_ids(deprecated) == {old.unique_id}
    assert deprecated.extrinsic()[0].get("status") == m.DEPRECATED
    related = post(index.client, "/registry", m.stored_query(m.GET_RELATED, {
        "$XDSDocumentEntryUniqueId": [f"'{new.unique_id}'"],
        "$AssociationTypes": ["('urn:ihe:iti:2007:AssociationType:RPLC')"]}))  # fmt: skip
    assert unique_ids(related) == {old.unique_id, new.unique_id}
    assert len(related.body.findall("rim:RegistryObjectList/rim:Association", m.NS)) == 1
    assocs = post(
        index.client,
        "/registry",
        m.stored_query(m.GET_ASSOCIATIONS, {"$uuid": [f"('{old_uuid}')"]}),
    )
    types = {a.get("associationType") for a in assocs.body.iter(f"{{{m.RIM}}}Association")}
    assert types == {"urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember",
                     "urn:ihe:iti:2007:AssociationType:RPLC"}  # fmt: skip
    again = submit(index, patient, [Doc(patient, "Third")],
                   m.association("urn:ihe:iti:2007:AssociationType:RPLC", "Third", old_uuid))  # fmt: skip
    assert again.status() == "Failure" and again.error_codes() == ["XDSRegistryError"]


def test_deprecate_restore_and_delete(index: IndexServer) -> None:
    patient = new_ins()
    kos = Doc(patient)
    assert submit(index, patient, [kos]).status() == "Success"
    uuid_ = entry_uuid(index, kos.unique_id)
    for original, new in (
        (m.APPROVED, m.DEPRECATED),
        (m.DEPRECATED, m.APPROVED),
        (m.APPROVED, m.DELETED),
    ):
        answer = post(index.client, "/registry", m.update_status(patient, uuid_, original, new))
        assert answer.status() == "Success", answer.error_contexts()
    every = find(index, patient, Status=[f"('{m.APPROVED}','{m.DEPRECATED}','{m.DELETED}')"])
    assert unique_ids(every) == set()
    by_id = post(
        index.client,
        "/registry",
        m.stored_query(m.GET_DOCUMENTS, {"$XDSDocumentEntryEntryUUID": [f"'{uuid_}'"]}),
    )
    assert by_id.extrinsic() == []
    gone = post(index.client, "/repository", m.retrieve(index.repository, [kos.unique_id]))
    assert gone.error_codes() == ["XDSDocumentUniqueIdError"]
    sets_query = {
        "$XDSSubmissionSetPatientId": [f"'{patient}'"],
        "$XDSSubmissionSetStatus": ["('Approved')"],
    }
    sets = post(
        index.client, "/registry", m.stored_query(m.FIND_SUBMISSION_SETS, sets_query, "ObjectRef")
    )
    ss_ids = [r.get("id") for r in sets.body.iter(f"{{{m.RIM}}}ObjectRef")]
    assert len(ss_ids) == 4  # the original submission and three updates
    assocs = post(
        index.client,
        "/registry",
        m.stored_query(
            m.GET_ASSOCIATIONS, {"$uuid": ["(" + ",".join(f"'{i}'" for i in ss_ids) + ")"]}
        ),
    )
    assert assocs.status() == "Success"
    assert all(
        uuid_ not in (a.get("sourceObject"), a.get("targetObject"))
        for a in assocs.body.iter(f"{{{m.RIM}}}Association")
    )
    back = post(index.client, "/registry", m.update_status(patient, uuid_, m.DELETED, m.APPROVED))
    assert back.status() == "Failure" and back.error_codes() == ["UnresolvedReferenceException"]


def test_status_update_checks_original_status(index: IndexServer) -> None:
    patient = new_ins()
    kos = Doc(patient)
    submit(index, patient, [kos])
    uuid_ = entry_uuid(index, kos.unique_id)
    wrong = post(
        index.client, "/registry", m.update_status(patient, uuid_, m.DEPRECATED, m.APPROVED)
    )
    assert wrong.error_codes() == ["XDSMetadataUpdateError"]
    other = post(
        index.client, "/registry", m.update_status(new_ins(), uuid_, m.APPROVED, m.DEPRECATED)
    )
    assert other.error_codes() == ["XDSPatientIdDoesNotMatch"]


def test_metadata_update_creates_a_new_version(index: IndexServer) -> None:
    patient = new_ins()
    kos = Doc(patient)
    submit(index, patient, [kos])
    uuid_ = entry_uuid(index, kos.unique_id)
    kos.lid, kos.symbol = uuid_, "NewVersion"
    kos.confidentiality = (("N", "2.16.840.1.113883.5.25"), ("MASQUE_PS", "1.2.250.1.213.1.1.4.13"))
    answer = post(index.client, "/registry", m.update_metadata(patient, kos, "1"))
    assert answer.status() == "Success", answer.error_contexts()
    found = find(index, patient, ConfidentialityCode=["('MASQUE_PS^^1.2.250.1.213.1.1.4.13')"])
    assert unique_ids(found) == {kos.unique_id}
    eo = found.extrinsic()[0]
    assert eo.get("lid") == uuid_ and eo.get("id") != uuid_
    assert eo.find("rim:VersionInfo", m.NS).get("versionName") == "2"  # type: ignore[union-attr]
    stale = post(index.client, "/registry", m.update_metadata(patient, kos, "1"))
    assert stale.error_codes() == ["XDSMetadataUpdateError"]
    # MASQUE_PS: for its author only; another professional neither finds nor updates it
    other = index.issue(OTHER_PROFESSIONAL)
    query = {"$XDSDocumentEntryPatientId": [f"'{patient}'"],
             "$XDSDocumentEntryStatus": [f"('{m.APPROVED}')"]}  # fmt: skip
    hidden = post(index.client, "/registry", m.stored_query(m.FIND_DOCUMENTS, query), other)
    assert hidden.status() == "Success" and hidden.extrinsic() == []
    deprecate = m.update_status(patient, eo.get("id", ""), m.APPROVED, m.DEPRECATED)
    refused = post(index.client, "/registry", deprecate, other)
    assert refused.error_codes() == ["urn:drimbox:xds:AccessDenied"]


def _bad_doc(case: str, patient: str) -> tuple[str, Doc, bool]:
    doc, attach = Doc(patient), True
    if case == "metadata":
        doc.class_code = ("10", "1.2.250.1.213.1.1.4.1")
    elif case == "patient":
        doc.patient_in_entry = new_ins()
    elif case == "unknown_patient":
        patient = patient.replace(patient[13:15], "00" if patient[13:15] != "00" else "01", 1)
        doc.patient = patient
    elif case == "missing":
        attach = False
    elif case == "hash":
        doc.hash = "0" * 40
    elif case == "size":
        doc.size = "12"
    return patient, doc, attach


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("metadata", "XDSRegistryMetadataError"),
        ("patient", "XDSPatientIdDoesNotMatch"),
        ("unknown_patient", "XDSUnknownPatientId"),
        ("missing", "XDSMissingDocument"),
        ("hash", "XDSNonIdenticalHash"),
        ("size", "XDSNonIdenticalSize"),
    ],
)
def test_rejected_submissions(index: IndexServer, case: str, code: str) -> None:
    patient, doc, attach = _bad_doc(case, new_ins())
    answer = post(
        index.client, "/repository", m.provide_and_register(patient, [doc], attach=attach)
    )
    assert answer.status_code == 200 and answer.status() == "Failure"
    assert code in answer.error_codes()
    assert any("Document01" in c for c in answer.error_contexts()), answer.error_contexts()
    assert unique_ids(find(index, doc.patient if case != "unknown_patient" else new_ins())) == set()


def test_duplicate_unique_id_and_all_or_nothing(index: IndexServer) -> None:
    patient = new_ins()
    first = Doc(patient)
    assert submit(index, patient, [first]).status() == "Success"
    again = Doc(patient, "Again", unique_id=first.unique_id)
    answer = submit(index, patient, [again])
    assert answer.error_codes() == ["XDSDuplicateUniqueIdInRegistry"]
    good, bad = Doc(patient, "Good"), Doc(patient, "Bad", hash="1" * 40)
    answer = submit(index, patient, [good, bad])
    assert answer.error_codes() == ["XDSNonIdenticalHash"]
    assert unique_ids(find(index, patient)) == {first.unique_id}


def test_hostile_xml_is_refused(index: IndexServer) -> None:
    laughs = (
        '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
        '<soap:Envelope xmlns:soap="http://www.w3.org/2003/05/soap-envelope"><soap:Body>'
        "<x>&lol2;</x></soap:Body></soap:Envelope>"
    )
    xxe = laughs.replace('<!ENTITY lol "lol">', '<!ENTITY lol SYSTEM "file:///etc/passwd">')
    for text in (laughs, xxe):
        resp = index.client.post(
            "/registry", content=text, headers={"content-type": "application/soap+xml"}
        )
        assert resp.status_code == 400
        assert b"Fault" in resp.content and b"root:" not in resp.content


def test_protocol_faults(index: IndexServer) -> None:
    bad_action = m.envelope("urn:example:nothing", "<x/>").encode()
    resp = index.client.post(
        "/registry", content=bad_action, headers={"content-type": "application/soap+xml"}
    )
    assert resp.status_code == 400 and b"ActionNotSupported" in resp.content
    resp = index.client.post(
        "/registry", content=b"<not-xml", headers={"content-type": "application/soap+xml"}
    )
    assert resp.status_code == 400 and b"Fault" in resp.content
    resp = index.client.post("/registry", content=b"x", headers={"content-type": "text/plain"})
    assert resp.status_code == 400


def test_body_size_limit(tmp_path: Path) -> None:
    with running_index(f"sqlite:///{tmp_path / 'i.db'}", max_body_bytes=4096) as small:
        resp = small.client.post("/repository", content=b"x" * 10_000,
                                 headers={"content-type": "application/soap+xml"})  # fmt: skip
        assert resp.status_code == 413


def test_repository_error_rolls_back(tmp_path: Path) -> None:
    with running_index(f"sqlite:///{tmp_path / 'i.db'}") as server:
        with server.db.engine.begin() as conn:
            conn.exec_driver_sql(
                "CREATE TRIGGER full_disk BEFORE INSERT ON document_contents "
                "BEGIN SELECT RAISE(ABORT, 'simulated storage failure'); END"
            )
        patient = new_ins()
        answer = submit(server, patient, [Doc(patient)])
        assert answer.status() == "Failure" and answer.error_codes() == ["XDSRepositoryError"]
        assert unique_ids(find(server, patient)) == set()


def test_replacement_of_unknown_or_foreign_entries(index: IndexServer) -> None:
    rplc = "urn:ihe:iti:2007:AssociationType:RPLC"
    patient, other = new_ins(), new_ins()
    theirs = Doc(other)
    assert submit(index, other, [theirs]).status() == "Success"
    cases = {
        "urn:uuid:00000000-0000-4000-8000-000000000000": "UnresolvedReferenceException",
        entry_uuid(index, theirs.unique_id): "XDSPatientIdDoesNotMatch",
    }
    for target, code in cases.items():
        answer = submit(index, patient, [Doc(patient)], m.association(rplc, "Document01", target))
        assert answer.error_codes() == [code]
    assert unique_ids(find(index, other)) == {theirs.unique_id}
