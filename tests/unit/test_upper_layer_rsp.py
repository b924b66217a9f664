"""The hand-encoded C-STORE-RSP is byte for byte what pydicom encodes."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pynetdicom.dsutils import encode

from drimbox.adapters.dimse.upper_layer import store_response

CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.mark.parametrize(
    ("sop", "status", "comment"),
    [("1.2.3.4", 0x0000, None), ("1.2.3.45", 0xC000, "not a valid UID"),
     ("1.2.3", 0x0122, "SOP class differs from the presentation context"),
     ("1.22", 0xA700, "x" * 80)],
)  # fmt: skip
def test_store_response_matches_pydicom(sop: str, status: int, comment: str | None) -> None:
    rsp = Dataset()
    rsp.AffectedSOPClassUID = CT
    rsp.CommandField = 0x8001
    rsp.MessageIDBeingRespondedTo = 65535
    rsp.CommandDataSetType = 0x0101
    rsp.Status = status
    rsp.AffectedSOPInstanceUID = sop
    if comment:
        rsp.ErrorComment = comment[:64]
    assert store_response(CT, 65535, status, sop, comment) == encode(rsp, True, True)
