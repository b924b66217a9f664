"""DIMSE service class user: send stored files to a peer (C-STORE)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pynetdicom import AE

from drimbox.adapters.dimse.contexts import storage_contexts_for

log = logging.getLogger(__name__)


@dataclass
class SendReport:
    sent: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)


def _classify(files: Iterable[Path]) -> dict[tuple[str, str], list[Path]]:
    groups: dict[tuple[str, str], list[Path]] = {}
    for path in files:
        try:
            meta = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
            key = (str(meta.SOPClassUID), str(meta.file_meta.TransferSyntaxUID))
        except (InvalidDicomError, OSError, AttributeError) as exc:
            log.warning("skipping %s: %s", path, exc)
            continue
        groups.setdefault(key, []).append(path)
    return groups


def send_files(
    files: Iterable[Path],
    host: str,
    port: int,
    called_aet: str,
    calling_aet: str = "DRIMBOX",
    wait: float = 0.0,
) -> SendReport:
    """C-STORE every DICOM file, in batches of at most 128 presentation contexts."""
    report = SendReport()
    groups = _classify(files)
    keys = list(groups)
    deadline = time.monotonic() + wait
    for start in range(0, len(keys), 100):
        batch = keys[start : start + 100]
        ae = AE(calling_aet)
        ae.requested_contexts = storage_contexts_for(batch)
        ae.dimse_timeout = 120  # a busy PACS fsyncs; the default 30 s aborts on a loaded machine
        pending = [p for k in batch for p in groups[k]]
        retried = False
        while pending:
            assoc = _associate(ae, host, port, called_aet, deadline)
            if assoc is None:
                why = "association refused or peer unreachable"
                report.failed.extend((p, why) for p in pending)
                break
            try:
                while pending and assoc.is_established:
                    status = assoc.send_c_store(pending[0])
                    if not assoc.is_established:
                        break  # aborted under this one: it is sent again once, below
                    code = int(getattr(status, "Status", 0xFFFF))
                    if code in (0x0000, 0xB000, 0xB006, 0xB007):
                        report.sent += 1
                    else:
                        report.failed.append((pending[0], f"status 0x{code:04X}"))
                    pending.pop(0)
            finally:
                if assoc.is_established:
                    assoc.release()
            if pending:
                if retried:
                    report.failed.extend((p, "the association was aborted") for p in pending)
                    break
                retried = True
    return report


def _associate(ae: AE, host: str, port: int, called_aet: str, deadline: float) -> Any:
    while True:
        assoc = ae.associate(host, port, ae_title=called_aet)
        if assoc.is_established:
            return assoc
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.5)
