"""Identity reconciliation of a remote instance before import into the local PACS.

DRIM-M: on import, the local patient identifier (IPP) replaces the source site's one and the INS
is kept in Other Patient IDs. What :func:`localize` does to a dataset, and nothing else (the UIDs
stay: it is still the same instance):

- ``PatientID`` becomes the local IPP, ``IssuerOfPatientID`` its namespace (the OID when there
  is no namespace) and ``IssuerOfPatientIDQualifiersSequence`` the OID as an ISO universal
  entity (removed when only a namespace is known: the source site's qualifiers would lie);
- ``OtherPatientIDsSequence`` keeps its items and gains, when not already there, one item for
  the INS and one for the source site's identifier, so that nothing is lost. Items follow
  PS3.3 C.7.1.1: PatientID, IssuerOfPatientID, TypeOfPatientID ``TEXT`` and the issuer's
  qualifiers (PS3.3 10.14, HL7 v2 Hierarchic Designator).

Applying it twice gives the same dataset as applying it once.
"""

from __future__ import annotations

import copy
import io
import re
from dataclasses import dataclass
from typing import Final, NamedTuple

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from drimbox.adapters.documents import dicom_values as dv
from drimbox.domain.errors import InvalidIdentifier, InvalidInput
from drimbox.domain.identifiers import (
    INS_OID_NIA_REAL,
    INS_OID_NIA_TEST,
    INS_OID_TEST,
    Ins,
    is_valid_uid,
)

# IssuerOfPatientID of the INS item: the HL7 namespace of the INS registers, as the KOS and the
# source PACS write it. The name is informative; the OID in the qualifiers is what identifies
# the register (NIR or NIA, real or test), and it is what items are matched on.
INS_NAMESPACE_NIR: Final = "ASIP-SANTE-INS-NIR"
INS_NAMESPACE_NIA: Final = "ASIP-SANTE-INS-NIA"
_NIA_OIDS: Final = frozenset({INS_OID_NIA_REAL, INS_OID_NIA_TEST})

# LO (PS3.5 6.2): at most 64 characters, no backslash (the value separator), no control
# character. We also keep to the default repertoire (printable ASCII): an identifier never needs
# more, and the dataset's SpecificCharacterSet is the source's, not ours to change.
_LO_MAX: Final = 64
_LO_RE: Final = re.compile(r"[\x20-\x5b\x5d-\x7e]+")


def _check_lo(value: str, what: str) -> str:
    if not value or len(value) > _LO_MAX:
        raise InvalidInput(f"{what} must have 1 to {_LO_MAX} characters, got {len(value)}")
    if _LO_RE.fullmatch(value) is None:
        raise InvalidInput(
            f"{what} {value[:_LO_MAX]!r}: printable ASCII only, no backslash or control character"
        )
    if value != value.strip(" "):
        raise InvalidInput(f"{what} {value!r}: leading or trailing spaces are not significant")
    return value


def parse_issuer(text: str) -> tuple[str, str]:
    """(namespace, OID) of an HL7 v2 assigning authority as PID-3 CX.4 gives it.

    Accepted: ``namespace&oid&ISO``, ``&oid&ISO``, ``namespace&oid`` (ISO assumed), a bare OID
    (dotted digits) or a bare namespace. Either part may be empty, not both.
    """
    parts = text.split("&")
    if len(parts) == 1:
        if "." in text and is_valid_uid(text):
            return "", text
        return _check_lo(text, "issuer namespace"), ""
    if len(parts) > 3:
        raise InvalidInput(f"issuer {text[:80]!r}: expected namespace&oid&ISO")
    namespace, oid, kind = (*parts, "")[:3]
    if not oid:
        if kind:
            raise InvalidInput(f"issuer {text[:80]!r}: universal id type without universal id")
        return _check_lo(namespace, "issuer namespace"), ""
    if kind not in {"", "ISO"}:
        raise InvalidInput(f"issuer {text[:80]!r}: only ISO (OID) universal ids are supported")
    if not is_valid_uid(oid):
        raise InvalidIdentifier(f"issuer {text[:80]!r}: {oid[:80]!r} is not an OID")
    return (_check_lo(namespace, "issuer namespace") if namespace else ""), oid


@dataclass(frozen=True, slots=True)
class LocalIdentity:
    """The patient as the local information system knows them (the contextual call's PID-3).

    Checked on construction: an invalid identity cannot exist.
    """

    ipp: str
    ipp_issuer: str
    """HL7 CX.4 of PID-3: ``namespace&oid&ISO`` or just an OID."""
    ins: str
    ins_oid: str = INS_OID_TEST

    def __post_init__(self) -> None:
        _check_lo(self.ipp, "IPP")
        parse_issuer(self.ipp_issuer)
        Ins.parse(self.ins, self.ins_oid)

    @property
    def issuer_namespace(self) -> str:
        return parse_issuer(self.ipp_issuer)[0]

    @property
    def issuer_oid(self) -> str:
        return parse_issuer(self.ipp_issuer)[1]


class _PatientId(NamedTuple):
    """An identifier with its issuer as a dataset or an Other Patient IDs item holds it."""

    value: str
    name: str  # IssuerOfPatientID
    oid: str  # UniversalEntityID of the first qualifiers item

    @classmethod
    def of(cls, ds: Dataset) -> _PatientId:
        return cls(
            dv.text(ds, "PatientID"),
            dv.text(ds, "IssuerOfPatientID"),
            dv.universal_entity_id(ds, "IssuerOfPatientIDQualifiersSequence"),
        )

    def same_as(self, other: _PatientId) -> bool:
        """Same value and issuer; issuers compare by OID when both have one, else by name."""
        if self.value != other.value:
            return False
        if self.oid and other.oid:
            return self.oid == other.oid
        if self.name and other.name:
            return self.name == other.name
        return not (self.oid or self.name or other.oid or other.name)


def _other_id_item(value: str, name: str, qualifiers: DicomSequence | None) -> Dataset:
    item = Dataset()
    item.PatientID = value
    if name:
        item.IssuerOfPatientID = name
    item.TypeOfPatientID = "TEXT"
    if qualifiers:
        item.IssuerOfPatientIDQualifiersSequence = qualifiers
    return item


def localize(ds: Dataset, who: LocalIdentity) -> Dataset:
    """Give ``ds`` the local patient identity (see the module docstring); returns ``ds``."""
    namespace, oid = parse_issuer(who.ipp_issuer)
    source = _PatientId.of(ds)
    source_qualifiers = copy.deepcopy(ds.get("IssuerOfPatientIDQualifiersSequence"))
    local = _PatientId(who.ipp, namespace or oid, oid)

    ds.PatientID = who.ipp
    ds.IssuerOfPatientID = namespace or oid
    if oid:
        ds.IssuerOfPatientIDQualifiersSequence = dv.universal_entity(oid)
    elif "IssuerOfPatientIDQualifiersSequence" in ds:
        del ds.IssuerOfPatientIDQualifiersSequence

    if "OtherPatientIDsSequence" not in ds or ds.OtherPatientIDsSequence is None:
        ds.OtherPatientIDsSequence = DicomSequence()
    others: DicomSequence = ds.OtherPatientIDsSequence
    existing = [_PatientId.of(item) for item in others]

    ins_name = INS_NAMESPACE_NIA if who.ins_oid in _NIA_OIDS else INS_NAMESPACE_NIR
    ins = _PatientId(who.ins, ins_name, who.ins_oid)
    # strict: an INS item without the register's OID does not count, it is not an INS
    if not any(e.value == ins.value and e.oid == ins.oid for e in existing):
        others.append(_other_id_item(ins.value, ins.name, dv.universal_entity(ins.oid)))
        existing.append(ins)

    if source.value and not source.same_as(local) and not any(source.same_as(e) for e in existing):
        others.append(_other_id_item(source.value, source.name, source_qualifiers))
    return ds


def localize_bytes(part10: bytes, who: LocalIdentity) -> bytes:
    """:func:`localize` a DICOM Part 10 file: same transfer syntax and File Meta out.

    The pixel data is never decoded: a compressed instance keeps its encapsulated fragments
    byte for byte, only the patient attributes are re-encoded.
    """
    try:
        ds = dcmread(io.BytesIO(part10))
    except Exception as exc:  # pydicom's error surface on arbitrary bytes is wide
        raise InvalidInput(f"not a DICOM Part 10 file: {exc}") from exc
    if "TransferSyntaxUID" not in ds.file_meta:
        raise InvalidInput("not a DICOM Part 10 file: no Transfer Syntax UID in the File Meta")
    localize(ds, who)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
