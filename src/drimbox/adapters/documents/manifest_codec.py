"""``services.source.ports.ManifestCodec`` over the KOS and IOCM modules (pydicom)."""

from __future__ import annotations

import io

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from drimbox.adapters.documents import iocm
from drimbox.adapters.documents.kos import default_description, kos_bytes, parse_kos
from drimbox.domain.errors import InvalidInput
from drimbox.domain.manifest import ImagingManifest


class KosCodec:
    def encode(self, manifest: ImagingManifest) -> bytes:
        return kos_bytes(manifest)

    def decode(self, data: bytes) -> ImagingManifest:
        return parse_kos(data)

    def describe(self, manifest: ImagingManifest) -> str:
        return default_description(manifest)

    def rejected(self, note: bytes) -> frozenset[str]:
        try:
            ds = dcmread(io.BytesIO(note), force=True)
        except (InvalidDicomError, EOFError, ValueError, TypeError) as exc:
            raise InvalidInput(f"not a readable DICOM object: {exc}") from None
        return frozenset(iocm.rejected_instances(ds))
