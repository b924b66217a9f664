"""ORU^R01 / MDM^T02/T10/T04 parsing: every synthetic message, then one broken variant per error."""

from __future__ import annotations

import base64
import dataclasses
import json
import random
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest

from drimbox.adapters.hl7 import errors
from drimbox.adapters.hl7.ack import ack_codes
from drimbox.adapters.hl7.parse import decode, parse_message, read_report
from drimbox.domain.identifiers import INS_OID_TEST, nir_key
from drimbox.domain.report import ReportEvent, ReportMessage
from drimbox.synth import generate_history
from drimbox.synth import hl7 as synth_hl7
from drimbox.synth.cda import ReportDocument, make_report
from drimbox.synth.patients import make_patients
from drimbox.synth.sites import make_physician, make_sites
from drimbox.synth.studies import EXAM_TYPES, Exam, plan_exam

SENT = datetime(2023, 7, 4, 8, 0)


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("hl7-history")
    generate_history(out, patients=4, sites=2, seed=11, size="small")
    return out, json.loads((out / "manifest.json").read_text(encoding="utf-8"))


def _exam(seed: int = 3) -> Exam:
    sites = make_sites(1, seed)
    patient = make_patients(1, sites, seed)[0]
    rng = random.Random(seed)
    return plan_exam(rng, EXAM_TYPES["ct_head"], patient, sites[0], datetime(2023, 7, 3, 10, 15),
                     "small", accession="0123000042", order_number="DEM230000042",
                     visit_number="0100000042", study_id="42",
                     referring=make_physician(rng))  # fmt: skip


def _report(exam: Exam, version: int = 1) -> ReportDocument:
    return make_report(exam, document_id=f"{exam.site.document_oid}.{version}",
                       set_id=f"{exam.site.set_oid}.1", authored=datetime(2023, 7, 3, 12, 0),
                       version=version,
                       replaces=f"{exam.site.document_oid}.1" if version > 1 else None)  # fmt: skip


def _message(kind: synth_hl7.MessageKind = "ORU", event: synth_hl7.Event = "new") -> bytes:
    report = _report(_exam(), version=2 if event == "correction" else 1)
    text = synth_hl7.build_message(report, kind, event, control_id="CTRL1", sent=SENT)
    return text.encode("utf-8")


# --- every synthetic message ----------------------------------------------------------------


def _check_against_manifest(
    parsed: ReportMessage, exam: dict[str, Any], record: dict[str, Any], manifest: dict[str, Any]
) -> None:
    site = next(s for s in manifest["sites"] if s["id"] == exam["site"])
    patient = next(p for p in manifest["patients"] if p["ins"] == exam["patient_ins"])
    report = exam["reports"][0 if record["event"] == "new" else 1]
    h = parsed.header
    assert h.control_id == record["control_id"]
    assert h.sending_application == site["ris_application"]
    expected_type = {"ORU": "ORU^R01", "MDM": "MDM^T02" if record["event"] == "new" else "MDM^T10"}
    assert h.message_type == expected_type[record["kind"]]
    assert h.version == ("2.5" if record["kind"] == "ORU" else "2.6")
    assert parsed.event == (ReportEvent.NEW if record["event"] == "new" else ReportEvent.CORRECTION)
    p = parsed.patient
    assert (p.ins.value, p.ins.oid) == (exam["patient_ins"], exam["ins_oid"])
    assert p.ipp is not None and (p.ipp.value, p.ipp.issuer_oid) == (exam["ipp"], exam["ipp_oid"])
    assert p.birth_family == patient["birth_family"]
    assert list(p.given_names) == patient["given_names"]
    assert p.first_given == patient["given_names"][0]
    assert p.used_family == (patient["used_family"] or patient["birth_family"])
    assert p.birth_date == date.fromisoformat(patient["birth_date"])
    assert p.sex == patient["sex"]
    assert p.identity_reliability == "VALI"
    assert (parsed.accession.value, parsed.accession.issuer_oid) == (
        exam["accession"], exam["accession_oid"])  # fmt: skip
    assert parsed.placer_order is not None and parsed.filler_order is not None
    assert (parsed.placer_order.value, parsed.placer_order.issuer_oid) == (
        exam["order_number"], exam["order_oid"])  # fmt: skip
    assert parsed.filler_order.value == exam["accession"]
    assert parsed.study_uid == exam["study_uid"]
    assert parsed.radiologist is not None and parsed.radiologist.rpps == exam["radiologist_rpps"]
    assert parsed.structure is not None and parsed.structure.national_id == site["structure_id"]
    d = parsed.document
    assert (d.document_id, d.set_id, d.version, d.replaces) == (
        report["document_id"], report["set_id"], report["version"], report["replaces"])  # fmt: skip


def test_every_synthetic_message_parses(history: tuple[Path, dict[str, Any]]) -> None:
    out, manifest = history
    seen: set[tuple[str, str]] = set()
    for exam in manifest["exams"]:
        for record in exam["hl7_messages"]:
            raw = (out / record["path"]).read_bytes()
            parsed = parse_message(raw)
            _check_against_manifest(parsed, exam, record, manifest)
            report = exam["reports"][0 if record["event"] == "new" else 1]
            assert parsed.cda == (out / report["cda"]).read_bytes()
            seen.add((record["kind"], record["event"]))
    assert {("ORU", "new"), ("MDM", "new")} <= seen


@pytest.mark.parametrize("kind", ["ORU", "MDM"])
@pytest.mark.parametrize(
    ("event", "expected"),
    [("new", ReportEvent.NEW), ("correction", ReportEvent.CORRECTION),
     ("cancel", ReportEvent.CANCELLATION)],
)  # fmt: skip
def test_events(kind: synth_hl7.MessageKind, event: synth_hl7.Event, expected: ReportEvent) -> None:
    parsed = parse_message(_message(kind, event))
    assert parsed.event is expected
    if kind == "MDM":
        trigger = {"new": "T02", "correction": "T10", "cancel": "T04"}[event]
        assert parsed.header.message_type == f"MDM^{trigger}"


def test_ans_style_correction_is_recognised_by_the_cda() -> None:
    """The ANS correction sample keeps ORC-1 NW / T02: the CDA version decides."""
    raw = _message("ORU", "correction").replace(b"ORC|RO|", b"ORC|NW|")
    assert parse_message(raw).event is ReportEvent.CORRECTION
    mdm = _message("MDM", "correction").replace(b"MDM^T10^", b"MDM^T02^")
    mdm = mdm.replace(b"ORC|RO|", b"ORC|NW|")
    parsed = parse_message(mdm)
    assert parsed.event is ReportEvent.CORRECTION
    assert parsed.document.version == 2 and parsed.document.replaces is not None


def test_escapes_and_line_feeds() -> None:
    exam = _exam()
    odd = dataclasses.replace(exam.patient, birth_family="O|BRIEN^&~\\X")
    report = _report(dataclasses.replace(exam, patient=odd))
    text = synth_hl7.new_report_message(report, "ORU", control_id="C|1", sent=SENT)
    parsed = parse_message(text.replace("\r", "\r\n").encode("utf-8"))
    assert parsed.patient.birth_family == "O|BRIEN^&~\\X"
    assert parsed.header.control_id == "C|1"


def test_latin1_message() -> None:
    text = _message().decode("utf-8").replace("UNICODE UTF-8", "8859/1")
    parsed = parse_message(text.encode("latin-1"))
    assert parsed.radiologist is not None  # the CDA stays UTF-8: it is base64, self-declared


# --- broken variants ------------------------------------------------------------------------


def set_field(raw: bytes, segment: str, field: int, value: str) -> bytes:
    lines = raw.decode("utf-8").split("\r")
    for i, line in enumerate(lines):
        if line.startswith(segment + "|"):
            fields = line.split("|")
            index = field - 1 if segment == "MSH" else field
            fields += [""] * (index + 1 - len(fields))
            fields[index] = value
            lines[i] = "|".join(fields)
            break
    else:
        raise AssertionError(f"no {segment} segment")
    return "\r".join(lines).encode("utf-8")


def drop_segment(raw: bytes, segment: str) -> bytes:
    lines = raw.split(b"\r")
    return b"\r".join(line for line in lines if not line.startswith(segment.encode() + b"|"))


def edit_cda(raw: bytes, change: Callable[[bytes], bytes]) -> bytes:
    head, _, rest = raw.partition(b"^TEXT^XML^Base64^")
    data, _, tail = rest.partition(b"|")
    cda = change(base64.b64decode(data))
    return head + b"^TEXT^XML^Base64^" + base64.b64encode(cda) + b"|" + tail


def _other_ins() -> str:
    nir = "1850575123456"
    return nir + nir_key(nir)


def _ins_of(raw: bytes) -> str:
    return raw.split(b"PID|||", 1)[1][:15].decode()


def _wrong_key(raw: bytes) -> bytes:
    ins = _ins_of(raw)
    bad = ins[:13] + f"{(int(ins[13:]) + 1) % 97:02d}"
    return raw.replace(ins.encode(), bad.encode(), 1)


_XXE = (b'<?xml version="1.0"?>\n<!DOCTYPE ClinicalDocument [<!ENTITY x SYSTEM '
        b'"file:///etc/passwd">]>\n<ClinicalDocument xmlns="urn:hl7-org:v3">&x;</ClinicalDocument>')  # fmt: skip

Mutation = Callable[[bytes], bytes]
CASES: list[tuple[str, Mutation, type[errors.Hl7Error], str, str]] = [
    ("no MSH", lambda r: drop_segment(r, "MSH"), errors.MalformedMessage, "AR", "100"),
    ("bad delimiters", lambda r: b"MSH|^^~&|" + r[9:], errors.MalformedMessage, "AR", "100"),
    ("not HL7", lambda r: b"GET / HTTP/1.1\r\n\r\n", errors.MalformedMessage, "AR", "100"),
    ("ADT", lambda r: set_field(r, "MSH", 9, "ADT^A01^ADT_A01"), errors.UnsupportedMessage,
     "AR", "200"),
    ("ORU^R30", lambda r: set_field(r, "MSH", 9, "ORU^R30^ORU_R30"), errors.UnsupportedEvent,
     "AR", "201"),
    ("training", lambda r: set_field(r, "MSH", 11, "T"), errors.UnsupportedProcessingId,
     "AR", "202"),
    ("v2.3", lambda r: set_field(r, "MSH", 12, "2.3"), errors.UnsupportedVersion, "AR", "203"),
    ("charset", lambda r: set_field(r, "MSH", 18, "KLINGON"), errors.UnknownCode, "AE", "103"),
    ("not UTF-8", lambda r: r.replace(b"|VALI", b"|VAL\xff"), errors.InvalidValue, "AE", "102"),
    ("no control id", lambda r: set_field(r, "MSH", 10, ""), errors.MissingField, "AE", "101"),
    ("no PID", lambda r: drop_segment(r, "PID"), errors.MissingSegment, "AE", "100"),
    ("no INS", lambda r: set_field(r, "PID", 3, "IPP1^^^SITE&1.2.3&ISO^PI"), errors.MissingIns,
     "AE", "101"),
    ("INS wrong key", _wrong_key, errors.InvalidIns, "AE", "102"),
    ("INS bad issuer", lambda r: r.replace(f"&{INS_OID_TEST}&ISO^INS".encode(),
                                           b"&1.2.3&ISO^INS"), errors.InvalidIns, "AE", "102"),
    ("birth date", lambda r: set_field(r, "PID", 7, "19791340"), errors.InvalidValue, "AE", "102"),
    ("sex", lambda r: set_field(r, "PID", 8, "X"), errors.UnknownCode, "AE", "103"),
    ("no ED OBX", lambda r: r.replace(b"OBX|1|ED|", b"OBX|1|ST|"), errors.MissingCda, "AE", "101"),
    ("empty CDA", lambda r: r.split(b"^TEXT^XML^Base64^")[0] + b"^TEXT^XML^Base64^|"
     + r.split(b"^TEXT^XML^Base64^")[1].partition(b"|")[2], errors.MissingCda, "AE", "101"),
    ("bad base64", lambda r: r.replace(b"^TEXT^XML^Base64^", b"^TEXT^XML^Base64^!!"),
     errors.UndecodableCda, "AE", "102"),
    ("hex encoding", lambda r: r.replace(b"^TEXT^XML^Base64^", b"^TEXT^XML^Hex^"),
     errors.UndecodableCda, "AE", "102"),
    ("CDA not XML", lambda r: edit_cda(r, lambda c: c[:-40]), errors.MalformedCda, "AE", "102"),
    ("CDA with DTD", lambda r: edit_cda(r, lambda c: _XXE), errors.MalformedCda, "AE", "102"),
    ("not a CDA", lambda r: edit_cda(r, lambda c: b"<x/>"), errors.MalformedCda, "AE", "102"),
    ("CDA other INS", lambda r: edit_cda(r, lambda c: c.replace(_ins_of(r).encode(),
                                                                _other_ins().encode())),
     errors.PatientMismatch, "AE", "207"),
    ("CDA no INS", lambda r: edit_cda(r, lambda c: c.replace(INS_OID_TEST.encode(), b"1.2.3")),
     errors.PatientMismatch, "AE", "207"),
    ("CDA no accession", lambda r: edit_cda(r, lambda c: c.replace(b"ps3-20:accessionNumber",
                                                                   b"ps3-20:other")),
     errors.MissingStudyReference, "AE", "101"),
    ("CDA no study", lambda r: edit_cda(r, lambda c: c.replace(b"<serviceEvent", b"<x")
                                        .replace(b"</serviceEvent", b"</x")),
     errors.MissingStudyReference, "AE", "101"),
    ("order control", lambda r: set_field(r, "ORC", 1, "ZZ"), errors.UnknownCode, "AE", "103"),
]  # fmt: skip
MDM_CASES: list[tuple[str, Mutation, type[errors.Hl7Error], str, str]] = [
    ("MDM^T01", lambda r: set_field(r, "MSH", 9, "MDM^T01^MDM_T01"), errors.UnsupportedEvent,
     "AR", "201"),
    ("no TXA", lambda r: drop_segment(r, "TXA"), errors.MissingSegment, "AE", "100"),
    ("T02 with CA", lambda r: set_field(r, "ORC", 1, "CA"), errors.InconsistentContent,
     "AE", "207"),
    ("TXA-12", lambda r: set_field(r, "TXA", 12, "1.2.3.4"), errors.InconsistentContent,
     "AE", "207"),
]  # fmt: skip


def _assert_refused(
    raw: bytes, error: type[errors.Hl7Error], ack: str, code: str
) -> errors.Hl7Error:
    with pytest.raises(error) as caught:
        parse_message(raw)
    assert type(caught.value) is error
    assert ack_codes(caught.value) == (ack, code)
    assert caught.value.reason
    return caught.value


@pytest.mark.parametrize(("mutate", "error", "ack", "code"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_broken_oru(mutate: Mutation, error: type[errors.Hl7Error], ack: str, code: str) -> None:
    raw = mutate(_message("ORU"))
    _assert_refused(raw, error, ack, code)


@pytest.mark.parametrize(("mutate", "error", "ack", "code"), [c[1:] for c in MDM_CASES],
                         ids=[c[0] for c in MDM_CASES])  # fmt: skip
def test_broken_mdm(mutate: Mutation, error: type[errors.Hl7Error], ack: str, code: str) -> None:
    raw = mutate(_message("MDM"))
    _assert_refused(raw, error, ack, code)


def test_errors_name_their_location() -> None:
    raw = _wrong_key(_message("ORU"))
    error = _assert_refused(raw, errors.InvalidIns, "AE", "102")
    assert error.location == errors.Location("PID", 3)
    assert "key" in error.reason
    unsupported = _assert_refused(set_field(_message(), "MSH", 12, "2.3"),
                                  errors.UnsupportedVersion, "AR", "203")  # fmt: skip
    assert unsupported.location == errors.Location("MSH", 12)


def test_training_messages_can_be_allowed() -> None:
    raw = set_field(_message(), "MSH", 11, "T")
    assert read_report(decode(raw), processing_ids={"P", "T"}).event is ReportEvent.NEW
