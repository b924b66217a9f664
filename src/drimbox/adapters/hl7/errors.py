"""Why an HL7 report message is refused; :mod:`drimbox.adapters.hl7.ack` maps them to ACKs.

Hl7Error (InvalidInput)
 +-- MalformedMessage         no readable MSH: the message cannot even be identified
 +-- UnsupportedMessage       MSH-9 message type we do not take (ORU^R01, MDM^T02/T10/T04 only)
 |    +-- UnsupportedEvent        the trigger event
 |    +-- UnsupportedProcessingId MSH-11
 |    +-- UnsupportedVersion      MSH-12
 +-- MissingSegment           a required segment (PID, OBR, TXA, OBX with the CDA) is absent
 +-- MissingField             a required field is empty
 |    +-- MissingIns              no INS repetition in PID-3
 |    +-- MissingCda              no ED OBX, or an empty one
 |    +-- MissingStudyReference   CDA without accession number or Study Instance UID
 +-- InvalidValue             a field does not parse as its data type
 |    +-- InvalidIns              INS with a wrong length, key or issuer
 |    +-- UndecodableCda          OBX-5 is not base64 / not the ED layout we take
 |    +-- MalformedCda            the CDA is not well-formed XML, has a DTD, or is not a CDA
 +-- UnknownCode              a coded value outside its table (ORC-1, MSH-18 charset)
 +-- MessageTooLarge          the frame exceeds the listener's size limit
 +-- InconsistentContent      HL7 and CDA (or two HL7 fields) disagree
      +-- PatientMismatch         CDA recordTarget INS differs from PID-3 INS
"""

from __future__ import annotations

from dataclasses import dataclass

from drimbox.domain.errors import InvalidInput


@dataclass(frozen=True, slots=True)
class Location:
    """Where the error is (HL7 ERL): segment, its sequence, field, component (1-based)."""

    segment: str
    field: int = 0
    component: int = 0
    sequence: int = 1


class Hl7Error(InvalidInput):
    """An inbound message refused, with the place of the offending value when known."""

    code = "HL7_ERROR"
    """Our application error code (ERR-5), stable for the site's IT team and monitoring."""

    def __init__(self, reason: str, location: Location | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.location = location


class MalformedMessage(Hl7Error):
    code = "MALFORMED"


class UnsupportedMessage(Hl7Error):
    code = "UNSUPPORTED_MESSAGE_TYPE"


class UnsupportedEvent(UnsupportedMessage):
    code = "UNSUPPORTED_EVENT"


class UnsupportedProcessingId(UnsupportedMessage):
    code = "UNSUPPORTED_PROCESSING_ID"


class UnsupportedVersion(UnsupportedMessage):
    code = "UNSUPPORTED_VERSION"


class MissingSegment(Hl7Error):
    code = "MISSING_SEGMENT"


class MissingField(Hl7Error):
    code = "MISSING_FIELD"


class MissingIns(MissingField):
    code = "MISSING_INS"


class MissingCda(MissingField):
    code = "MISSING_CDA"


class MissingStudyReference(MissingField):
    code = "MISSING_STUDY_REFERENCE"


class InvalidValue(Hl7Error):
    code = "INVALID_VALUE"


class InvalidIns(InvalidValue):
    code = "INVALID_INS"


class UndecodableCda(InvalidValue):
    code = "UNDECODABLE_CDA"


class MalformedCda(InvalidValue):
    code = "MALFORMED_CDA"


class UnknownCode(Hl7Error):
    code = "UNKNOWN_CODE"


class InconsistentContent(Hl7Error):
    code = "INCONSISTENT_CONTENT"


class PatientMismatch(InconsistentContent):
    code = "PATIENT_MISMATCH"


class MessageTooLarge(Hl7Error):
    code = "MESSAGE_TOO_LARGE"
