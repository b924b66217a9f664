"""ACK content: swapped sender/receiver, MSA codes, ERR location/code/reason (read with ``hl7``)."""

from __future__ import annotations

from datetime import datetime

import hl7
import pytest

from drimbox.adapters.hl7 import errors
from drimbox.adapters.hl7.ack import ack_codes, build_ack
from drimbox.adapters.hl7.message import Message
from drimbox.adapters.hl7.parse import decode, parse_message

RAW = (
    b"MSH|^~\\&|RIS_A^1.2.3^ISO|SITE A|DRIMBOX|SITE A|20230704080000+0200||MDM^T02^MDM_T02|"
    b"C42|P|2.6|||||FRA|UNICODE UTF-8|||2.1^CISIS_CDA_HL7_V2\rEVN||20230704080000\r"
)
NOW = datetime(2024, 1, 2, 3, 4, 5).astimezone()


def _read(ack: bytes) -> hl7.Message:
    text = ack.decode("utf-8")
    assert text.endswith("\r") and "\n" not in text
    return hl7.parse(text)


def test_aa_swaps_sender_and_receiver() -> None:
    ack = _read(build_ack(decode(RAW).msh, now=NOW))
    msh = ack.segment("MSH")
    assert str(msh[3]) == "DRIMBOX" and str(msh[4]) == "SITE A"
    assert str(msh[5]) == "RIS_A^1.2.3^ISO" and str(msh[6]) == "SITE A"
    assert str(msh[7]) == NOW.strftime("%Y%m%d%H%M%S%z")
    assert str(msh[9]) == "ACK^T02^ACK"
    assert str(msh[10]).startswith("DRB") and len(str(msh[10])) == 20
    assert (str(msh[11]), str(msh[12]), str(msh[18])) == ("P", "2.6", "UNICODE UTF-8")
    msa = ack.segment("MSA")
    assert (str(msa[1]), str(msa[2])) == ("AA", "C42")
    assert len(ack) == 2  # no ERR


def test_ae_has_err_with_location_code_and_reason() -> None:
    error = errors.InvalidIns("INS '123': key 12 is wrong | expected 34", errors.Location("PID", 3))
    ack = _read(build_ack(decode(RAW).msh, error))
    msa, err = ack.segment("MSA"), ack.segment("ERR")
    assert (str(msa[1]), str(msa[2])) == ("AE", "C42")
    assert ack.unescape(str(msa[3])).startswith("INS '123'")
    assert str(err[2]) == "PID^1^3^1"
    assert str(err[3]) == "102^Data type error^HL70357"
    assert str(err[4]) == "E"
    assert str(err[5]) == "INVALID_INS^^99DRB"
    assert ack.unescape(str(err[8])) == "INS '123': key 12 is wrong | expected 34"


def test_ar_for_unsupported_version_and_for_internal_errors() -> None:
    unsupported = errors.UnsupportedVersion("2.3 is not supported", errors.Location("MSH", 12))
    ack = _read(build_ack(decode(RAW).msh, unsupported))
    assert str(ack.segment("MSA")[1]) == "AR"
    assert str(ack.segment("ERR")[3][0][0]) == "203"
    internal = _read(build_ack(decode(RAW).msh, OSError("disk full")))
    assert str(internal.segment("MSA")[1]) == "AR"
    assert str(internal.segment("ERR")[3]) == "207^Application internal error^HL70357"
    assert str(internal.segment("ERR")[5][0][0]) == "INTERNAL_ERROR"
    assert "disk" not in internal.unescape(str(internal.segment("ERR")[8]))  # no internals leak


def test_ack_without_readable_msh() -> None:
    ack = _read(build_ack(None, errors.MalformedMessage("no MSH", errors.Location("MSH"))))
    assert str(ack.segment("MSA")[1]) == "AR" and str(ack.segment("MSA")[2]) == ""
    assert str(ack.segment("MSH")[12]) == "2.5"
    assert str(ack.segment("ERR")[2]) == "MSH^1"


def test_ack_keeps_custom_delimiters_and_charset() -> None:
    raw = RAW.decode().replace("|", "#").replace("UNICODE UTF-8", "8859/1").encode("latin-1")
    msh = Message.decode(raw).msh
    ack = build_ack(msh, errors.MissingIns("PID-3 has no INS (é)", errors.Location("PID", 3)))
    assert ack.startswith(b"MSH#^~\\&#DRIMBOX#")
    assert b"#8859/1\r" in ack and "(é)".encode("latin-1") in ack


def test_codes_table() -> None:
    assert ack_codes(None) == ("AA", "0")
    assert ack_codes(errors.UnsupportedMessage("x")) == ("AR", "200")
    assert ack_codes(errors.UnsupportedEvent("x")) == ("AR", "201")
    assert ack_codes(errors.UnsupportedProcessingId("x")) == ("AR", "202")
    assert ack_codes(errors.MissingSegment("x")) == ("AE", "100")
    assert ack_codes(errors.MissingCda("x")) == ("AE", "101")
    assert ack_codes(errors.MalformedCda("x")) == ("AE", "102")
    assert ack_codes(errors.UnknownCode("x")) == ("AE", "103")
    assert ack_codes(errors.PatientMismatch("x")) == ("AE", "207")
    assert ack_codes(errors.MessageTooLarge("x")) == ("AE", "207")
    assert ack_codes(RuntimeError()) == ("AR", "207")


def test_parse_then_ack_round_trip() -> None:
    raw = RAW + b"PID|||1^^^X&1.2&ISO^PI\rOBR|1\rTXA|1\r"
    with pytest.raises(errors.Hl7Error) as caught:
        parse_message(raw)
    ack = _read(build_ack(decode(raw).msh, caught.value))
    assert str(ack.segment("MSA")[1]) == "AE"
    assert str(ack.segment("ERR")[5][0][0]) == "MISSING_INS"
