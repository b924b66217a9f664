"""The index services with the access rules, on an SQLite store in a temporary folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from drimbox.adapters.storage.index_db import IndexDb, open_index_db
from drimbox.adapters.xds import iti41_provide_and_register, mtom, soap
from drimbox.domain import xds
from drimbox.domain.access import AccessMode, ActorKind, CallerIdentity
from drimbox.domain.xds import AccessDenied
from drimbox.services.index.access import DmpAccessRules
from drimbox.services.index.journal import IndexContext
from drimbox.services.index.patient import PatientControls
from drimbox.services.index.ports import FindDocumentsQuery
from drimbox.services.index.query import QueryService
from drimbox.services.index.register import RegisterService
from tests import xds_messages as m

SYSTEM = CallerIdentity("DRIMbox", ActorKind.SYSTEM)
DOCTOR = CallerIdentity("Dr Other", ActorKind.PROFESSIONAL, rpps="810000000001")
AUTHOR = CallerIdentity("Dr Kit", ActorKind.PROFESSIONAL, rpps="899700367909")


@pytest.fixture
def db(tmp_path: Path) -> Iterator[IndexDb]:
    store = open_index_db(f"sqlite:///{tmp_path / 'index.db'}")
    yield store
    store.close()


@pytest.fixture
def ctx(db: IndexDb) -> IndexContext:
    return IndexContext(db, DmpAccessRules(), "1.2.250.1.999.7")


def submission(patient: str, docs: list[m.Doc]) -> xds.Submission:
    package = mtom.unpack(*m.provide_and_register(patient, docs))
    body = soap.read_envelope(soap.parse_xml(package.root)).body
    return iti41_provide_and_register.parse(body, package.attachments)


def seed(ctx: IndexContext) -> tuple[str, m.Doc, m.Doc]:
    patient = m.new_ins()
    kos = m.Doc(patient, "KOS")
    report = m.Doc(patient, "CR", kind="report", confidentiality=(
        ("N", "2.16.840.1.113883.5.25"), ("INVISIBLE_PATIENT", "1.2.250.1.213.1.1.4.13")))  # fmt: skip
    RegisterService(ctx).provide_and_register(submission(patient, [kos, report]), SYSTEM)
    return patient, kos, report


def visible(ctx: IndexContext, patient: str, caller: CallerIdentity) -> set[str]:
    query = FindDocumentsQuery(patient, [xds.APPROVED])
    return {e.unique_id for e in QueryService(ctx).find_documents(query, caller)}


def test_patient_view_opposition_and_break_glass(ctx: IndexContext) -> None:
    patient, kos, report = seed(ctx)
    me = CallerIdentity("Dominique", ActorKind.PATIENT, patient_id=patient)
    assert visible(ctx, patient, me) == {kos.unique_id}
    assert visible(ctx, patient, DOCTOR) == {kos.unique_id, report.unique_id}
    PatientControls(ctx).set_opposition(me, opposed=True)
    with pytest.raises(AccessDenied, match="opposed"):
        visible(ctx, patient, DOCTOR)
    no_reason = CallerIdentity(
        "Dr U", ActorKind.PROFESSIONAL, rpps="1", access_mode=AccessMode.BREAK_GLASS
    )
    with pytest.raises(AccessDenied, match="reason"):
        visible(ctx, patient, no_reason)
    urgent = CallerIdentity("Dr U", ActorKind.PROFESSIONAL, rpps="1", access_mode=AccessMode.BREAK_GLASS,
                            reason="coma, trauma room")  # fmt: skip
    assert visible(ctx, patient, urgent) == {kos.unique_id, report.unique_id}
    log = QueryService(ctx).access_log(patient, me)
    actions = [(e.action, e.outcome) for e in reversed(log)]
    assert actions[0] == ("ITI-41 Provide and Register", "granted")
    assert ("opposition", "granted") in actions
    assert actions.count(("ITI-18", "denied")) == 2
    emergency = [
        e for e in log if e.caller.access_mode is AccessMode.BREAK_GLASS and e.outcome == "granted"
    ]
    assert emergency[0].caller.reason == "coma, trauma room"


def test_hidden_document_and_author(ctx: IndexContext) -> None:
    patient, kos, report = seed(ctx)
    me = CallerIdentity("Dominique", ActorKind.PATIENT, patient_id=patient)
    PatientControls(ctx).hide_document(me, kos.unique_id, hidden=True)
    assert visible(ctx, patient, DOCTOR) == {report.unique_id}
    assert visible(ctx, patient, AUTHOR) == {kos.unique_id, report.unique_id}
    with pytest.raises(xds.XdsError, match="not found"):  # another patient's: not revealed
        PatientControls(ctx).hide_document(CallerIdentity("x", ActorKind.PATIENT, patient_id=m.new_ins()),
                                           kos.unique_id, hidden=False)  # fmt: skip


def test_a_new_version_of_a_hidden_document_stays_hidden(ctx: IndexContext) -> None:
    patient, kos, report = seed(ctx)
    me = CallerIdentity("Dominique", ActorKind.PATIENT, patient_id=patient)
    PatientControls(ctx).hide_document(me, kos.unique_id, hidden=True)
    [old] = [e for e in ctx.store.entries(unique_ids=[kos.unique_id])]
    new = m.Doc(patient, "KOS2", study_uid=kos.study_uid, accession=kos.accession)
    rplc = m.association("urn:ihe:iti:2007:AssociationType:RPLC", new.symbol, old.entry_uuid)
    package = mtom.unpack(*m.provide_and_register(patient, [new], rplc))
    body = soap.read_envelope(soap.parse_xml(package.root)).body
    sub = iti41_provide_and_register.parse(body, package.attachments)
    RegisterService(ctx).provide_and_register(sub, SYSTEM)
    # the corrected manifest replaced the hidden one: professionals see neither
    assert visible(ctx, patient, DOCTOR) == {report.unique_id}
    [stored] = ctx.store.entries(unique_ids=[new.unique_id])
    assert stored.hidden_by_patient and stored.status == xds.APPROVED


def test_patients_do_not_publish_and_denials_are_logged(ctx: IndexContext) -> None:
    patient = m.new_ins()
    me = CallerIdentity("Dominique", ActorKind.PATIENT, patient_id=patient)
    with pytest.raises(AccessDenied):
        RegisterService(ctx).provide_and_register(submission(patient, [m.Doc(patient)]), me)
    assert [(e.action, e.outcome) for e in ctx.store.access_log(patient)] == [
        ("ITI-41 Provide and Register", "denied")
    ]


def test_access_log_is_append_only(ctx: IndexContext, db: IndexDb) -> None:
    seed(ctx)
    for statement in ("UPDATE access_log SET outcome = 'x'", "DELETE FROM access_log"):
        with pytest.raises(sa.exc.DatabaseError, match="append-only"), db.engine.begin() as conn:
            conn.execute(sa.text(statement))


def test_retrieve_respects_the_rules(ctx: IndexContext) -> None:
    patient, kos, report = seed(ctx)
    me = CallerIdentity("Dominique", ActorKind.PATIENT, patient_id=patient)
    svc = QueryService(ctx)
    assert svc.retrieve("1.2.250.1.999.7", kos.unique_id, me).content == kos.content
    with pytest.raises(xds.XdsError) as err:
        svc.retrieve("1.2.250.1.999.7", report.unique_id, me)
    assert err.value.code is xds.ErrorCode.DOCUMENT_UNIQUE_ID
