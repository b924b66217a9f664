"""The patient's own controls at the index: hiding an exam (every document of it) from
professionals and undoing it, opposition, over the services and over the JSON API, with the
access rules deciding and the access log recording."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.testclient import TestClient

from drimbox.adapters.index_api.client import listed_documents
from drimbox.adapters.index_api.routes import OPENAPI, IndexApi
from drimbox.adapters.trust.index_caller import Unauthenticated
from drimbox.domain import xds
from drimbox.domain.access import ActorKind, CallerIdentity
from drimbox.domain.xds import AccessDenied
from drimbox.services.index.journal import IndexContext
from drimbox.services.index.patient import PatientControls
from drimbox.services.index.query import QueryService
from drimbox.services.index.register import RegisterService
from tests import xds_messages as m
from tests.unit.test_xds_services import AUTHOR, DOCTOR, SYSTEM, ctx, db, submission, visible

__all__ = ["ctx", "db"]  # fixtures


def exam(ctx: IndexContext) -> tuple[str, m.Doc, m.Doc, m.Doc]:
    """A patient with one exam (manifest and report) and another exam."""
    patient = m.new_ins()
    kos = m.Doc(patient, "KOS")
    report = m.Doc(patient, "CR", kind="report", study_uid=kos.study_uid,
                   accession=kos.accession)  # fmt: skip
    other = m.Doc(patient, "OTHER")
    RegisterService(ctx).provide_and_register(submission(patient, [kos, report, other]), SYSTEM)
    return patient, kos, report, other


def me(patient: str) -> CallerIdentity:
    return CallerIdentity("sub-of-the-patient", ActorKind.PATIENT, patient_id=patient)


def test_hiding_an_exam_hides_its_documents_from_professionals_only(ctx: IndexContext) -> None:
    patient, kos, report, other = exam(ctx)
    controls = PatientControls(ctx)
    done = controls.hide_exam(me(patient), patient, kos.study_uid, hidden=True)
    assert set(done) == {kos.unique_id, report.unique_id}
    assert visible(ctx, patient, DOCTOR) == {other.unique_id}
    everything = {kos.unique_id, report.unique_id, other.unique_id}
    assert visible(ctx, patient, me(patient)) == everything  # the patient still sees them
    assert visible(ctx, patient, AUTHOR) == everything  # and their author
    controls.hide_exam(me(patient), patient, kos.study_uid, hidden=False)
    assert visible(ctx, patient, DOCTOR) == everything
    log = [(e.action, e.documents) for e in ctx.store.access_log(patient)]
    assert ("hide document", (report.unique_id,)) in log
    assert ("show document", (kos.unique_id,)) in log


def test_only_the_patient_hides_their_exams(ctx: IndexContext) -> None:
    patient, kos, _, _ = exam(ctx)
    controls = PatientControls(ctx)
    stranger = me(m.new_ins())
    for caller in (DOCTOR, SYSTEM, stranger):
        with pytest.raises(AccessDenied, match="only the patient"):
            controls.hide_exam(caller, patient, kos.study_uid, hidden=True)
    with pytest.raises(AccessDenied):  # their own record named, another patient's document
        controls.hide_document(stranger, kos.unique_id, True, patient_id=patient)
    with pytest.raises(xds.XdsError, match="not found"):
        controls.hide_exam(me(patient), patient, "1.2.3.4", hidden=True)
    assert visible(ctx, patient, DOCTOR) >= {kos.unique_id}
    denied = [e for e in ctx.store.access_log(patient) if e.outcome == "denied"]
    assert len(denied) == 4  # every refusal is in the patient's log


def test_opposition_is_read_and_set_by_the_patient(ctx: IndexContext) -> None:
    patient, *_ = exam(ctx)
    controls = PatientControls(ctx)
    assert not controls.opposition(me(patient), patient).opposed
    controls.set_opposition(me(patient), True, True, patient_id=patient)
    policy = controls.opposition(me(patient))
    assert policy.opposed and policy.opposes_break_glass
    with pytest.raises(AccessDenied):
        controls.opposition(DOCTOR, patient)
    with pytest.raises(AccessDenied):
        controls.set_opposition(me(m.new_ins()), False, patient_id=patient)
    with pytest.raises(AccessDenied, match="opposed"):
        visible(ctx, patient, DOCTOR)


# -- over HTTP --------------------------------------------------------------------------


@pytest.fixture
def callers() -> dict[str, CallerIdentity]:
    """Bearer "tokens" of the test: the caller each one stands for."""
    return {"doctor": DOCTOR}


@pytest.fixture
def api(ctx: IndexContext, callers: dict[str, CallerIdentity]) -> Iterator[TestClient]:
    def caller_for(request: Request) -> CallerIdentity:
        name = request.headers.get("authorization", "").removeprefix("Bearer ")
        if name not in callers:
            raise Unauthenticated("token refused")
        return callers[name]

    app = Starlette(routes=IndexApi(QueryService(ctx), caller_for).routes())
    with TestClient(app) as client:
        yield client


def test_the_json_api_gives_the_patient_their_controls(
    ctx: IndexContext, api: TestClient, callers: dict[str, CallerIdentity]
) -> None:
    patient, kos, report, other = exam(ctx)
    ins = patient.split("^", 1)[0]
    callers["patient"] = me(patient)
    url = f"/api/patients/{ins}/exams/{kos.study_uid}/hidden"
    as_patient = {"Authorization": "Bearer patient"}
    r = api.put(url, json={"hidden": True}, headers=as_patient)
    assert r.status_code == 200, r.text
    assert set(r.json()["documents"]) == {kos.unique_id, report.unique_id}
    history = api.get(f"/api/patients/{ins}/history", headers=as_patient).json()
    listed = listed_documents(history)
    assert listed.hidden == {kos.unique_id, report.unique_id}
    assert {d.unique_id for d in listed.documents} == {kos.unique_id, report.unique_id,
                                                       other.unique_id}  # fmt: skip
    [hidden] = [e for e in history["exams"] if e["studyInstanceUid"] == kos.study_uid]
    assert hidden["hiddenByPatient"] is True
    # the professional sees neither the exam nor whether anything was hidden
    seen = api.get(f"/api/patients/{ins}/history", headers={"Authorization": "Bearer doctor"})
    assert [e["studyInstanceUid"] for e in seen.json()["exams"]] == [other.study_uid]
    assert "hiddenByPatient" not in str(seen.json())
    assert api.put(url, json={"hidden": False}, headers={"Authorization": "Bearer doctor"}
                   ).status_code == 403  # fmt: skip
    assert api.put(url, json={"hidden": False}).status_code == 401
    bad: object
    for bad in ({"hidden": "no"}, {"hidden": False, "more": 1}, [], None):
        assert api.put(url, json=bad, headers=as_patient).status_code == 400
    unknown = f"/api/patients/{ins}/exams/1.2.3/hidden"
    assert api.put(unknown, json={"hidden": True}, headers=as_patient).status_code == 404
    assert api.put(url, json={"hidden": False}, headers=as_patient).status_code == 200
    one = f"/api/patients/{ins}/documents/{report.unique_id}/hidden"
    assert api.put(one, json={"hidden": True}, headers=as_patient).json()["hidden"] is True
    history = api.get(f"/api/patients/{ins}/history", headers=as_patient).json()
    assert listed_documents(history).hidden == {report.unique_id}
    # opposition
    opposition = f"/api/patients/{ins}/opposition"
    assert api.get(opposition, headers=as_patient).json() == {"opposed": False,
                                                             "opposesBreakGlass": False}  # fmt: skip
    r = api.put(opposition, json={"opposed": True, "opposesBreakGlass": False}, headers=as_patient)
    assert r.status_code == 200 and api.get(opposition, headers=as_patient).json()["opposed"]
    assert api.get(opposition, headers={"Authorization": "Bearer doctor"}).status_code == 403
    assert api.get(f"/api/patients/{ins}/history",
                   headers={"Authorization": "Bearer doctor"}).status_code == 403  # fmt: skip
    # another patient's record named in the path: refused, whatever the token says
    callers["stranger"] = me(m.new_ins())
    r = api.put(url, json={"hidden": True}, headers={"Authorization": "Bearer stranger"})
    assert r.status_code == 403


def test_the_openapi_document_lists_every_route(api: TestClient) -> None:
    served = api.get("/api/openapi.json").json()
    assert served == OPENAPI
    routes = {(r.path, m.lower()) for r in api.app.routes  # type: ignore[attr-defined]
              for m in (r.methods or []) if r.path != "/api/openapi.json" and m != "HEAD"}  # fmt: skip
    documented = {(p, m) for p, ops in served["paths"].items() for m in ops}
    assert routes == documented
    put = served["paths"]["/api/patients/{ins}/exams/{study}/hidden"]["put"]
    assert put["requestBody"]["content"]["application/json"]["schema"]["required"] == ["hidden"]
