"""C-GET retrieval into the instance cache, from our PACS, from Orthanc, and from a PACS that
sends what it was not asked for."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelGet,
)

from drimbox.adapters.cache import InstanceCache
from drimbox.adapters.dimse.pacs_query import PacsAddress
from drimbox.adapters.dimse.retrieve import RetrieveFailed, plan_jobs, retrieve
from drimbox.domain.errors import InvalidInput, NotFound, PeerUnavailable
from drimbox.services.source.prefetch import Prefetcher
from drimbox.synth import write_ct_study
from tests.dicom_factory import ct_instance
from tests.peers import ORTHANC, free_port, run_dcmtk, running_orthanc, running_pacs


@dataclass(frozen=True)
class Study:
    uid: str
    files: dict[str, Path]
    """SOP Instance UID -> file sent to the PACS."""
    series: dict[str, list[str]]
    """Series UID -> SOP Instance UIDs."""


def describe(files: list[Path]) -> Study:
    by_sop: dict[str, Path] = {}
    series: dict[str, list[str]] = {}
    uids = set()
    for f in files:
        ds = dcmread(f, stop_before_pixels=True)
        uids.add(str(ds.StudyInstanceUID))
        by_sop[str(ds.SOPInstanceUID)] = f
        series.setdefault(str(ds.SeriesInstanceUID), []).append(str(ds.SOPInstanceUID))
    assert len(uids) == 1
    return Study(uids.pop(), by_sop, series)


@pytest.fixture(scope="module")
def multi(studies: dict[str, list[Path]]) -> Study:
    """The synthetic study with the most series."""
    files = max(studies.values(), key=lambda fs: (len({f.parent for f in fs}), len(fs)))
    return describe(files)


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory) -> Study:
    """One CT series of 48 small slices: enough to split over several associations."""
    out = tmp_path_factory.mktemp("ct")
    return describe(write_ct_study(out, slices=48, rows=128, columns=128, seed=3))


def store(aet: str, port: int, *studies: Study) -> None:
    files = [str(f) for s in studies for f in s.files.values()]
    run_dcmtk("storescu", "-aec", aet, "127.0.0.1", str(port), *files)


@pytest.fixture(scope="module")
def our_pacs(
    tmp_path_factory: pytest.TempPathFactory, multi: Study, ct: Study
) -> Iterator[PacsAddress]:
    folder = tmp_path_factory.mktemp("retrieve-pacs")
    with running_pacs(folder / "pacs", extra=["--workers", "2"]) as pacs:
        store(pacs.aet, pacs.port, multi, ct)
        yield PacsAddress("127.0.0.1", pacs.port, pacs.aet, timeout=30)


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[InstanceCache]:
    with InstanceCache(tmp_path / "cache", 1 << 30) as c:
        yield c


def assert_cached(cache: InstanceCache, study: Study, sops: set[str] | None = None) -> None:
    """Exactly ``sops`` (default: the whole study) cached, each the very dataset sent."""
    wanted = set(study.files) if sops is None else sops
    cached = {sop for series in study.series for sop in cache.series_instances(study.uid, series)}
    assert cached == wanted
    for series, members in study.series.items():
        for sop in set(members) & wanted:
            path = cache.path(study.uid, series, sop)
            assert path is not None
            got, sent = dcmread(path), dcmread(study.files[sop])
            assert got.SOPInstanceUID == sent.SOPInstanceUID == sop
            assert got.PixelData == sent.PixelData
            assert got == sent, f"{sop}: the dataset differs from what was stored"


# -- our PACS ---------------------------------------------------------------------------------


def test_whole_study_over_several_associations(
    our_pacs: PacsAddress, cache: InstanceCache, multi: Study
) -> None:
    result = retrieve(our_pacs, cache, multi.uid, associations=3)
    assert_cached(cache, multi)
    assert (result.stored, result.completed, result.failed, result.rejected) == (
        len(multi.files), len(multi.files), 0, 0,
    )  # fmt: skip
    assert result.complete and not result.missing
    assert result.associations == min(3, len(multi.series))


def test_one_series_split_over_four_associations(
    our_pacs: PacsAddress, cache: InstanceCache, ct: Study
) -> None:
    selection = list(ct.series.items())
    assert len(plan_jobs(selection, 4)) == 4
    result = retrieve(our_pacs, cache, ct.uid, selection, associations=4)
    assert result.associations == 4
    assert result.stored == 48 and result.complete
    assert_cached(cache, ct)


def test_series_subset(our_pacs: PacsAddress, cache: InstanceCache, multi: Study) -> None:
    (first, first_sops), (second, second_sops), *_ = sorted(multi.series.items())
    picked = sorted(first_sops)[:2]
    result = retrieve(our_pacs, cache, multi.uid, [(first, picked), (second, [])])
    assert_cached(cache, multi, {*picked, *second_sops})
    assert result.stored == len(picked) + len(second_sops) and result.complete


def test_unknown_study(our_pacs: PacsAddress, cache: InstanceCache) -> None:
    with pytest.raises(NotFound):  # whole study: the PACS is asked what it holds first
        retrieve(our_pacs, cache, "1.2.826.0.1.3680043.10.999")
    asked = ["1.2.826.0.1.3680043.10.999.1.1", "1.2.826.0.1.3680043.10.999.1.2"]
    result = retrieve(our_pacs, cache, "1.2.826.0.1.3680043.10.999", [("1.2.999.1", asked)])
    assert result.stored == 0 and result.missing == frozenset(asked)
    assert not result.complete


def test_stopped_pacs_is_unavailable(tmp_path: Path, cache: InstanceCache, ct: Study) -> None:
    with running_pacs(tmp_path / "pacs") as pacs:
        port, aet = pacs.port, pacs.aet
    for where in (port, free_port()):
        address = PacsAddress("127.0.0.1", where, aet, timeout=5)
        with pytest.raises(PeerUnavailable):
            retrieve(address, cache, ct.uid, list(ct.series.items()), associations=2)
        with pytest.raises(PeerUnavailable):
            retrieve(address, cache, ct.uid)
    assert cache.stats().entries == 0


# -- a PACS that sends anything -------------------------------------------------------------


@dataclass
class Rogue:
    address: PacsAddress
    to_send: list[Dataset]
    final: int = 0x0000
    abort_after: int | None = None


@pytest.fixture
def rogue() -> Iterator[Rogue]:
    """A pynetdicom C-GET SCP sending whatever ``to_send`` holds, whatever was asked."""
    port = free_port()
    peer = Rogue(PacsAddress("127.0.0.1", port, "ROGUE", timeout=10), [])

    def on_get(event: Any) -> Iterator[Any]:
        # pynetdicom reads as many answers as announced: count the failure status too
        yield len(peer.to_send) + (peer.final != 0x0000)
        for n, ds in enumerate(peer.to_send):
            if n == peer.abort_after:
                event.assoc.abort()
                return
            yield 0xFF00, ds
        if peer.final != 0x0000:
            yield peer.final, None

    ae = AE("ROGUE")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
    for cx in StoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, scp_role=True, scu_role=True)
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_GET, on_get)]
    )
    try:
        yield peer
    finally:
        server.shutdown()


STUDY, SERIES = "1.2.826.0.1.3680043.10.7", "1.2.826.0.1.3680043.10.7.1"


def instance(n: int, study: str = STUDY, series: str = SERIES) -> Dataset:
    return ct_instance(study=study, series=series, sop=f"{SERIES}.{n}")


def test_instances_not_asked_for_are_refused(rogue: Rogue, cache: InstanceCache) -> None:
    rogue.to_send += [
        instance(1),
        instance(2, study="1.2.826.0.1.3680043.10.77"),
        instance(3, series="1.2.826.0.1.3680043.10.7.2"),
        instance(4),  # right series, not in the list asked for
    ]
    result = retrieve(rogue.address, cache, STUDY, [(SERIES, [f"{SERIES}.1", f"{SERIES}.5"])])
    assert (result.stored, result.rejected, result.failed) == (1, 3, 3)
    assert result.missing == {f"{SERIES}.5"}
    assert cache.series_instances(STUDY, SERIES) == [f"{SERIES}.1"]
    assert cache.stats().entries == 1


def test_failure_status_is_raised_with_what_arrived(rogue: Rogue, cache: InstanceCache) -> None:
    rogue.to_send.append(instance(1))
    rogue.final = 0xC001
    with pytest.raises(RetrieveFailed) as failed:
        retrieve(rogue.address, cache, STUDY, [(SERIES, [f"{SERIES}.1", f"{SERIES}.2"])])
    assert failed.value.status == 0xC001
    assert failed.value.result.stored == 1
    assert cache.series_instances(STUDY, SERIES) == [f"{SERIES}.1"]


def test_an_abort_midway_is_unavailable_and_keeps_what_arrived(
    rogue: Rogue, cache: InstanceCache
) -> None:
    rogue.to_send += [instance(1), instance(2)]
    rogue.abort_after = 1
    with pytest.raises(PeerUnavailable):
        retrieve(rogue.address, cache, STUDY, [(SERIES, [f"{SERIES}.1", f"{SERIES}.2"])])
    assert cache.series_instances(STUDY, SERIES) == [f"{SERIES}.1"]


# -- Orthanc ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def orthanc(
    tmp_path_factory: pytest.TempPathFactory, multi: Study, ct: Study
) -> Iterator[PacsAddress]:
    if ORTHANC is None:
        pytest.skip("Orthanc is not installed")
    # Orthanc answers C-FIND and C-GET only to known modalities: declare our calling AE
    known = {"DRIMBOX": ("DRIMBOX", "127.0.0.1", free_port())}
    with running_orthanc(tmp_path_factory.mktemp("retrieve-orthanc"), modalities=known) as o:
        store(o.aet, o.port, multi, ct)
        yield PacsAddress("127.0.0.1", o.port, o.aet, "DRIMBOX", timeout=30)


@pytest.mark.orthanc
@pytest.mark.dcmtk
def test_orthanc_whole_study(orthanc: PacsAddress, cache: InstanceCache, multi: Study) -> None:
    result = retrieve(orthanc, cache, multi.uid, associations=2)
    assert_cached(cache, multi)
    assert result.complete and result.stored == len(multi.files) and result.rejected == 0


@pytest.mark.orthanc
@pytest.mark.dcmtk
def test_orthanc_one_series_over_four_associations(
    orthanc: PacsAddress, cache: InstanceCache, ct: Study
) -> None:
    result = retrieve(orthanc, cache, ct.uid, list(ct.series.items()), associations=4)
    assert result.associations == 4 and result.complete
    assert_cached(cache, ct)


@pytest.mark.orthanc
@pytest.mark.dcmtk
def test_orthanc_series_subset_and_unknown_study(
    orthanc: PacsAddress, cache: InstanceCache, multi: Study
) -> None:
    (first, first_sops), (second, second_sops), *_ = sorted(multi.series.items())
    picked = sorted(first_sops)[1:3]
    result = retrieve(orthanc, cache, multi.uid, [(first, picked), (second, [])])
    assert_cached(cache, multi, {*picked, *second_sops})
    assert result.complete
    with pytest.raises(NotFound):
        retrieve(orthanc, cache, "1.2.826.0.1.3680043.10.999")
    # unlike our PACS (success, no sub-operation), Orthanc fails a C-GET that matches nothing
    with pytest.raises(RetrieveFailed) as failed:
        retrieve(orthanc, cache, "1.2.826.0.1.3680043.10.999", [("1.2.9.1", ["1.2.9.1.1"])])
    assert failed.value.result.stored == 0


@pytest.mark.orthanc
@pytest.mark.dcmtk
def test_orthanc_refuses_unknown_caller(orthanc: PacsAddress, cache: InstanceCache) -> None:
    # an AE Orthanc does not know is refused: for us, the PACS is not available to us
    stranger = PacsAddress(orthanc.host, orthanc.port, orthanc.called_aet, "STRANGER", 5)
    with pytest.raises((PeerUnavailable, RetrieveFailed)):
        retrieve(stranger, cache, "1.2.3", [("1.2.3.4", ["1.2.3.4.5"])])


# -- pure helpers ------------------------------------------------------------------------------


def test_storage_contexts_fit_one_association() -> None:
    from pydicom.uid import CTImageStorage, KeyObjectSelectionDocumentStorage

    from drimbox.adapters.dimse.retrieve import COMPRESSED, IMAGE_CLASSES, storage_contexts

    default = storage_contexts()
    assert len(default) <= 127
    assert {str(cx.abstract_syntax) for cx in default} >= set(IMAGE_CLASSES)
    known = storage_contexts([CTImageStorage, KeyObjectSelectionDocumentStorage])
    assert len(known) == 2 + len(COMPRESSED), "compressed syntaxes for images only"
    with pytest.raises(InvalidInput):
        storage_contexts([f"1.2.3.{n}" for n in range(200)])


def test_jobs_split_large_series_largest_first() -> None:
    jobs = plan_jobs(
        [("1.1", [f"1.1.{n}" for n in range(100)]), ("1.2", []), ("1.3", ["1.3.1"])], 4
    )
    assert [(j.series_uid, j.size) for j in jobs] == [
        ("1.1", 26), ("1.1", 26), ("1.1", 26), ("1.1", 22), ("1.3", 1), ("1.2", 0),
    ]  # fmt: skip
    assert len(plan_jobs([("1.1", [f"1.1.{n}" for n in range(10)])], 4)) == 2  # min_chunk


# -- the prefetcher on the real thing --------------------------------------------------------


def test_prefetch_waits_for_the_pacs_to_come_back(tmp_path: Path, ct: Study) -> None:
    port = free_port()
    with running_pacs(tmp_path / "pacs", port=port) as pacs:
        store(pacs.aet, pacs.port, ct)
    address = PacsAddress("127.0.0.1", port, pacs.aet, timeout=5)
    with InstanceCache(tmp_path / "cache", 1 << 30) as cache:
        fetch = functools.partial(retrieve, address, cache, associations=2)
        with Prefetcher(fetch, cache, retry_delays=(0.2,), max_attempts=500) as prefetcher:
            assert prefetcher.prefetch(ct.uid, list(ct.series.items()))
            assert not prefetcher.wait_idle(0.5)  # the PACS is down: retried
            with running_pacs(tmp_path / "pacs", port=port):  # back, with its images
                assert prefetcher.wait_idle(60)
            stats = prefetcher.stats()
        assert stats.retried >= 1 and stats.retrieved == 1 and stats.failed == 0
        assert_cached(cache, ct)
