"""What other boxes may retrieve from this Source: the instances of a manifest it published.

A consumer names the manifest (``KOS-SOPInstanceUID``) that gave it access; anything that
manifest does not list is unknown here, whatever the PACS holds. The manifest the index holds
stays valid while a replacement is on its way (the consumer found it a moment ago); what it
reaches is the latest manifest's content, so instances rejected since are never served.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from drimbox.domain.errors import NotFound
from drimbox.domain.manifest import ImagingManifest, ManifestInstance, ManifestSeries
from drimbox.services.source.outbox import Outbox, Publication, PublicationState
from drimbox.services.source.ports import ManifestCodec

_GONE = (PublicationState.DEPUBLISHING, PublicationState.DELETED)


@dataclass(frozen=True, slots=True)
class Selected:
    series: ManifestSeries
    instance: ManifestInstance

    @property
    def series_uid(self) -> str:
        return self.series.series_uid

    @property
    def sop_uid(self) -> str:
        return self.instance.sop_instance_uid


class PublishedContent:
    def __init__(self, outbox: Outbox, codec: ManifestCodec, cached_manifests: int = 256) -> None:
        self.outbox = outbox
        self.codec = codec
        self._cached_manifests = cached_manifests
        self._manifests: OrderedDict[str, tuple[ImagingManifest, dict[str, Selected]]] = (
            OrderedDict()
        )
        self._lock = threading.Lock()

    def manifest(self, kos_uid: str) -> ImagingManifest:
        """The content ``kos_uid`` gives access to; NotFound when it gives none."""
        return self._granted(kos_uid)[0]

    def _granted(self, kos_uid: str) -> tuple[ImagingManifest, dict[str, Selected]]:
        pub = self.outbox.publication_by_kos(kos_uid)
        if pub is None or not _grants(pub, kos_uid):
            raise NotFound(f"no published manifest {kos_uid[:80]} here")
        return self._decode(pub)

    def select(
        self, kos_uid: str, study: str, series: str | None = None, sop: str | None = None
    ) -> tuple[ImagingManifest, list[Selected]]:
        """The manifest's instances under a study/series/instance path, in manifest order."""
        manifest, by_sop = self._granted(kos_uid)
        if manifest.study.study_uid != study:
            raise NotFound("the study is not the one of this manifest")
        if sop is not None:  # one instance: the viewer's and the benchmark's hot path
            one = by_sop.get(sop)
            if one is None or (series is not None and one.series_uid != series):
                raise NotFound("no such series or instance in this manifest")
            return manifest, [one]
        chosen = [
            Selected(s, i)
            for s, i in manifest.instances()
            if (series is None or s.series_uid == series)
            and (sop is None or i.sop_instance_uid == sop)
        ]
        if not chosen:
            raise NotFound("no such series or instance in this manifest")
        return manifest, chosen

    def _decode(self, pub: Publication) -> tuple[ImagingManifest, dict[str, Selected]]:
        key = f"{pub.kos_uid}@{pub.updated_at}"  # a replacement changes both
        with self._lock:
            found = self._manifests.get(key)
            if found is not None:
                self._manifests.move_to_end(key)
                return found
        manifest = self.codec.decode(pub.kos)
        decoded = manifest, {i.sop_instance_uid: Selected(s, i) for s, i in manifest.instances()}
        with self._lock:
            self._manifests[key] = decoded
            while len(self._manifests) > self._cached_manifests:
                self._manifests.popitem(last=False)
        return decoded


def _grants(pub: Publication, kos_uid: str) -> bool:
    if pub.state in _GONE:
        return False
    if kos_uid == pub.indexed_kos_uid:
        return True
    # the latest manifest once the index holds it (indexed_kos_uid says so too, normally)
    return kos_uid == pub.kos_uid and pub.state is PublicationState.PUBLISHED
