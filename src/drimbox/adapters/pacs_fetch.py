"""How the box pulls a series from its PACS into the image cache: WADO-RS when the PACS has
a DICOMweb root configured (one streamed request per series), else C-GET over several
associations. Both hand over each instance as soon as it is received."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence

from drimbox.adapters.cache.instance_cache import InstanceCache
from drimbox.adapters.dicomweb.fetch import DicomwebPacs
from drimbox.adapters.dimse.pacs_query import PacsAddress
from drimbox.adapters.dimse.retrieve import RetrieveResult, SeriesSelection, retrieve

Store = Callable[[str, bytes], None]


class _Handover:
    """What ``retrieve`` writes to: each instance goes to ``store`` (which caches it)."""

    def __init__(self, store: Store, cache: InstanceCache) -> None:
        self.store, self.cache = store, cache

    def put(self, study: str, series: str, sop: str, data: bytes) -> None:
        self.store(sop, data)

    def missing(self, study: str, series: str, sop_uids: Iterable[str]) -> set[str]:
        return self.cache.missing(study, series, sop_uids)


class CGetFetcher:
    def __init__(self, address: PacsAddress, cache: InstanceCache, associations: int = 4) -> None:
        self.address, self.cache, self.associations = address, cache, associations

    def __call__(
        self, study: str, series: str, sops: Collection[str], store: Store, context: object = None
    ) -> None:
        retrieve(self.address, _Handover(store, self.cache), study, [(series, list(sops))],
                 associations=self.associations)  # fmt: skip

    def study(self, study_uid: str, series: Sequence[SeriesSelection]) -> RetrieveResult:
        """The prefetcher's entry point: several series into the cache."""
        return retrieve(self.address, self.cache, study_uid, series, associations=self.associations)


class DicomwebFetcher:
    def __init__(self, pacs: DicomwebPacs, cache: InstanceCache) -> None:
        self.pacs, self.cache = pacs, cache

    def __call__(
        self, study: str, series: str, sops: Collection[str], store: Store, context: object = None
    ) -> None:
        self.pacs.fetch_series(study, series, store, sops=sops)

    def study(self, study_uid: str, series: Sequence[SeriesSelection]) -> int:
        count = 0
        for series_uid, sops in series:
            wanted = self.cache.missing(study_uid, series_uid, sops) if sops else None
            if wanted == set():
                continue

            def put(sop: str, data: bytes, series_uid: str = series_uid) -> None:
                self.cache.put(study_uid, series_uid, sop, data)

            count += self.pacs.fetch_series(study_uid, series_uid, put, sops=wanted)
        return count
