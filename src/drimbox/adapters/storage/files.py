"""The instance file store: durable, atomic writes; paths only from validated UIDs.

Layout under the storage root::

    dicom/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm   what is stored (visible)
    tmp/                                                  writes in progress (never visible)
    quarantine/<time>-<id>.bin + .txt                     rejected objects and the reason

A file is written to ``tmp/``, fsync'd, then renamed into ``dicom/`` and the directory is
fsync'd, so a crash leaves either the whole file or nothing in ``dicom/``.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from drimbox.domain.errors import InvalidInput
from drimbox.domain.identifiers import is_valid_uid


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileStore:
    def __init__(self, root: Path, fsync: bool = True) -> None:
        self.root = root.resolve()
        self.fsync = fsync
        self.dicom_dir = self.root / "dicom"
        self.tmp_dir = self.root / "tmp"
        self.quarantine_dir = self.root / "quarantine"
        for d in (self.dicom_dir, self.tmp_dir, self.quarantine_dir):
            d.mkdir(parents=True, exist_ok=True)

    def relative_path(self, study_uid: str, series_uid: str, sop_uid: str) -> str:
        for name, uid in (("Study", study_uid), ("Series", series_uid), ("SOP Instance", sop_uid)):
            if not is_valid_uid(uid):
                raise InvalidInput(f"{name} UID {uid[:80]!r} is not a valid DICOM UID")
        return f"{study_uid}/{series_uid}/{sop_uid}.dcm"

    def absolute(self, relative: str) -> Path:
        return self.dicom_dir / relative

    def write_temp(self, data: bytes | memoryview) -> Path:
        """Write ``data`` to a new temporary file and make it durable."""
        tmp = self.tmp_dir / f"{uuid.uuid4().hex}.part"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        return tmp

    def publish(self, tmp: Path, relative: str) -> Path:
        """Atomically move a durable temporary file to its place in ``dicom/``."""
        final = self.dicom_dir / relative
        parent = final.parent
        if not parent.is_dir():
            parent.mkdir(parents=True, exist_ok=True)
            if self.fsync:
                _fsync_dir(parent.parent)
                _fsync_dir(parent.parent.parent)
        os.replace(tmp, final)
        if self.fsync:
            _fsync_dir(parent)
        return final

    def discard(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def remove(self, relative: str) -> None:
        (self.dicom_dir / relative).unlink(missing_ok=True)

    def quarantine(self, data: bytes | memoryview, reason: str, origin: str) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        base = self.quarantine_dir / f"{stamp}-{uuid.uuid4().hex[:12]}"
        base.with_suffix(".bin").write_bytes(bytes(data))
        base.with_suffix(".txt").write_text(f"origin: {origin}\nreason: {reason}\n", "utf-8")
        return base.with_suffix(".bin")

    def clear_temp(self) -> int:
        """Remove leftovers of writes interrupted by a crash (they were never acknowledged)."""
        count = 0
        for entry in self.tmp_dir.iterdir():
            entry.unlink(missing_ok=True)
            count += 1
        return count

    def walk(self) -> Iterator[str]:
        """Relative paths of every stored file."""
        for study in os.scandir(self.dicom_dir):
            if not study.is_dir():
                continue
            for series in os.scandir(study.path):
                if not series.is_dir():
                    continue
                for inst in os.scandir(series.path):
                    if inst.name.endswith(".dcm"):
                        yield f"{study.name}/{series.name}/{inst.name}"
