"""One exam as a ZIP with a DICOMDIR, built from the Conso's cache and the Source box: what
the cache holds goes in at once, the rest as the Source delivers it (a thread's job)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from drimbox.adapters.export.dicomdir_zip import write_exam_zip
from drimbox.domain.manifest import ImagingManifest
from drimbox.services.source.images import ImageProvider


def exam_zip(
    images: ImageProvider, manifest: ImagingManifest, remote: Any, workdir: Path, readme: str
) -> Path:
    """A temporary ZIP under ``workdir`` (the caller deletes it once sent)."""
    study = manifest.study.study_uid
    items = [(s.series_uid, i.sop_instance_uid) for s, i in manifest.instances()]
    hits, misses = images.cached(study, items)
    files = [p for _, p in hits]
    files += [p for _, p in images.arrivals(study, misses, remote)] if misses else []
    fd, name = tempfile.mkstemp(dir=workdir, suffix=".zip")
    try:
        with open(fd, "wb") as handle:
            write_exam_zip(files, handle, readme=readme, tmp_dir=workdir)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)


def zip_name(manifest: ImagingManifest) -> str:
    return f"examen-{(manifest.study.date or '')!s}-{manifest.study.study_uid[-12:]}.zip"
