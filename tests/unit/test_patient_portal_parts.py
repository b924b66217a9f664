"""The pieces of the patient's portal that decide something: what a session may reach after
a listing, the forms' forgery checks, whose manifest a token opens at the Source, the
patient's exams with what they hid, and what the access page shows."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import date
from typing import Any

import pytest
from starlette.requests import Request

from drimbox.adapters.conso_web.patient import _index_line, _trail_line
from drimbox.adapters.conso_web.patient_auth import COOKIE, PatientSessions
from drimbox.adapters.dicomweb.errors import HttpProblem
from drimbox.adapters.source_web.wado import Caller
from drimbox.domain import xds
from drimbox.domain.identifiers import Ins
from drimbox.domain.manifest import (
    ImagingManifest,
    ManifestInstance,
    ManifestPatient,
    ManifestSeries,
    ManifestStudy,
)
from drimbox.services.conso.history import IndexedDocument, ManifestBook
from drimbox.services.conso.patient_record import (
    IndexAccess,
    ListedDocuments,
    PatientRecord,
)
from drimbox.services.conso.sessions import SessionStore

OWN = Ins("285067511602105", "1.2.250.1.213.1.4.10")
OTHER = Ins("162011305504325", "1.2.250.1.213.1.4.10")


def test_a_new_listing_replaces_what_the_previous_one_granted() -> None:
    store = SessionStore()
    session = store.open("899700218896", "token", 1e12)
    store.grant(session, OWN.value, {"1.1": "k1", "1.2": "k2"},
                {"r1": ("repo", OWN.value, OWN.oid)})  # fmt: skip
    store.grant(session, OTHER.value, {"2.1": "k3"}, {"r3": ("repo", OTHER.value, OTHER.oid)})
    # the patient hid exam 1.2 and its report: the next listing no longer shows them
    store.grant(session, OWN.value, {"1.1": "k1"}, {})
    assert session.exams == {"1.1": "k1", "2.1": "k3"}
    assert set(session.documents) == {"r3"}  # another patient's listing is untouched
    assert session.patients == {OWN.value, OTHER.value}


def request(headers: dict[str, str], cookie: str = "") -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    if cookie:
        raw.append((b"cookie", f"{COOKIE}={cookie}".encode()))
    return Request({"type": "http", "method": "POST", "scheme": "https", "path": "/patient/",
                    "server": ("box.example", 443), "headers": raw, "query_string": b""})  # fmt: skip


def test_forms_need_the_sessions_token_and_this_sites_origin() -> None:
    sessions = PatientSessions(users_url="https://drimbox.chu.fr/")
    session = sessions.store.open("sub", "token", 1e12)
    session.patient = OWN
    good = {"csrf": session.csrf}
    sessions.check_form(request({}), session, good)  # no Origin (older browsers): the token
    sessions.check_form(request({"Origin": "https://box.example"}), session, good)
    sessions.check_form(request({"Origin": "https://drimbox.chu.fr"}), session, good)
    sessions.check_form(request({"Referer": "https://drimbox.chu.fr/patient/"}), session, good)
    refused = [
        (request({}), {}),
        (request({}), {"csrf": session.csrf + "x"}),
        (request({}), {"csrf": sessions.store.open("sub", "t", 1e12).csrf}),  # another session's
        (request({"Origin": "https://evil.example"}), good),
        (request({"Origin": "null"}), good),
        (request({"Referer": "http://drimbox.chu.fr/"}), good),  # not the same scheme
    ]
    for req, form in refused:
        with pytest.raises(HttpProblem) as info:
            sessions.check_form(req, session, form)
        assert info.value.status == 403


@pytest.mark.anyio
async def test_only_patients_sessions_open_the_portal() -> None:
    sessions = PatientSessions()
    patient = sessions.store.open("sub", "token", 1e12)
    patient.patient = OWN
    assert await sessions.require(request({}, patient.id)) is patient
    professional = sessions.store.open("899700218896", "token", 1e12)  # no INS: never a patient
    for cookie in (professional.id, "", "forged"):
        with pytest.raises(HttpProblem) as info:
            await sessions.require(request({}, cookie))
        assert info.value.status == 401


def manifest(patient: Ins | tuple[str, str], study: str = "1.2.3") -> ImagingManifest:
    ins, oid = (patient.value, patient.oid) if isinstance(patient, Ins) else patient
    series = ManifestSeries("1.2.3.1", "CT", 1, retrieve_url="https://a/dicomweb",
                            instances=(ManifestInstance("1.2.840.10008.5.1.4.1.1.2", "1.2.3.1.1"),))  # fmt: skip
    return ImagingManifest(sop_instance_uid="9.9", series_instance_uid="9.8",
                           patient=ManifestPatient(ins, oid, "MARTIN", "MARIE"),
                           study=ManifestStudy(study, date=date(2024, 1, 15)), series=(series,))  # fmt: skip


def test_a_patients_token_opens_their_own_manifests_only() -> None:
    professional = Caller("899700218896")
    mine = Caller("sub", OWN)
    assert professional.owns(manifest(OTHER))
    assert mine.owns(manifest(OWN))
    assert not mine.owns(manifest(OTHER))
    assert not mine.owns(manifest((OWN.value, "")))  # a foreign KOS without the INS OID
    assert not mine.owns(manifest((OWN.value, "1.2.250.1.213.1.4.8")))


class Index:
    def __init__(self, listed: ListedDocuments) -> None:
        self.listed = listed
        self.tokens: list[str] = []

    def documents(self, token: str, patient: Ins) -> ListedDocuments:
        self.tokens.append(token)
        return self.listed

    def access_log(self, token: str, patient: Ins) -> list[IndexAccess]:
        return []

    def opposition(self, token: str, patient: Ins) -> tuple[bool, bool]:
        return False, False

    def set_opposition(self, token: str, patient: Ins, opposed: bool, obg: bool) -> None:
        raise AssertionError("not used")

    def set_exam_hidden(self, token: str, patient: Ins, study: str, hidden: bool) -> list[str]:
        raise AssertionError("not used")


class Reader:
    """ITI-43 as the index answers the patient's token."""

    def __init__(self, contents: dict[str, bytes]) -> None:
        self.contents = contents
        self.token = ""
        self.seen: list[str] = []

    @contextmanager
    def on_behalf_of(self, access_token: str, emergency_reason: str = "") -> Iterator[None]:
        self.token = access_token
        yield
        self.token = ""

    def find(self, patient_id: str) -> list[IndexedDocument]:
        raise AssertionError("the listing comes from the index API")

    def retrieve(self, repository: str, unique_ids: Sequence[str]) -> dict[str, bytes]:
        assert self.token == "patient-token"
        self.seen += unique_ids
        return {u: self.contents[u] for u in unique_ids if u in self.contents}


class Codec:
    def decode(self, data: bytes) -> ImagingManifest:
        return manifest(OWN, study=data.decode())

    def encode(self, m: ImagingManifest) -> bytes:
        raise AssertionError("not used")


def doc(uid: str, study: str, manifest_: bool) -> IndexedDocument:
    return IndexedDocument(uid, "repo", manifest_, not manifest_, study, "ACC", "20240115100000",
                           "Scanner", (xds.Code("CT", xds.MODALITY_SCHEME),))  # fmt: skip


def test_the_patients_exams_say_what_they_hid() -> None:
    listed = ListedDocuments([doc("k1", "1.1", True), doc("r1", "1.1", False),
                              doc("k2", "1.2", True)], frozenset({"r1"}))  # fmt: skip
    reader = Reader({"k1": b"1.1", "k2": b"1.2"})
    index = Index(listed)
    book = ManifestBook()
    record = PatientRecord(index, reader, Codec(), book)  # type: ignore[arg-type]
    exams = {p.exam.study_uid: p for p in record.exams(OWN, "patient-token")}
    assert index.tokens == ["patient-token"] and sorted(reader.seen) == ["k1", "k2"]
    assert exams["1.1"].hidden and not exams["1.2"].hidden
    assert exams["1.1"].exam.report is not None and exams["1.1"].exam.instance_count == 1
    assert book.get("k2").study.study_uid == "1.2"  # ready for the viewer proxy


def test_the_access_page_leaves_out_the_patients_own_readings() -> None:
    def event(kind: str, action: str, **more: Any) -> IndexAccess:
        return IndexAccess("2024-05-01T10:00:00+00:00", action, "granted", kind,
                           "899700218896" if kind == "professional" else "", "sub", **more)  # fmt: skip

    assert _index_line(event("patient", "API history")) is None
    assert _index_line(event("patient", "ITI-43 Retrieve")) is None
    mine = _index_line(event("patient", "hide document"))
    assert mine is not None and mine.who == "Vous" and "masqué" in mine.what
    pro = _index_line(event("professional", "ITI-18", emergency=True, reason="coma"))
    assert pro is not None and "URGENCE" in pro.what and "coma" in pro.what
    own_trail = {"agent": [{"requestor": True, "who": {"identifier": {"value": "sub"}}}],
                 "subtype": [{"code": "report.read"}], "recorded": "2024-05-01T10:00:00Z"}  # fmt: skip
    assert _trail_line(own_trail, "sub") is None
    line = _trail_line(own_trail, "someone-else")
    assert line is not None and line.what == "a lu un compte rendu" and line.outcome == "autorisé"
