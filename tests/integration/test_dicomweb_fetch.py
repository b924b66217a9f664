"""The streaming WADO-RS client against real peers (Orthanc's DICOMweb plugin and our embedded
PACS), and against scripted servers for what real peers do not do (406, redirects, garbage)."""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from pydicom.uid import RLELossless, generate_uid

from drimbox.adapters.dicomweb import multipart as mp
from drimbox.adapters.dicomweb.fetch import (
    ACCEPT_AS_STORED,
    ACCEPT_DEFAULT,
    DicomwebPacs,
    PacsUnavailable,
)
from drimbox.domain.errors import InvalidIdentifier, InvalidInput, NotFound
from drimbox.synth import write_ct_study
from tests.dicom_factory import ct_instance, part10
from tests.peers import ORTHANC, free_port, running_orthanc, running_pacs, stop

needs_orthanc = pytest.mark.skipif(ORTHANC is None, reason="Orthanc is not installed")


@dataclass
class Catalog:
    """What was loaded into a peer: study -> series -> SOP -> the file sent."""

    series: dict[tuple[str, str], dict[str, Path]] = field(default_factory=dict)

    def add(self, path: Path) -> None:
        ds = dcmread(path, stop_before_pixels=True)
        key = (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID))
        self.series.setdefault(key, {})[str(ds.SOPInstanceUID)] = path

    def biggest(self) -> tuple[str, str]:
        return max(
            self.series, key=lambda k: sum(p.stat().st_size for p in self.series[k].values())
        )


@dataclass
class Peer:
    name: str
    base: str
    """The DICOMweb root."""
    catalog: Catalog
    reference: Callable[[str], bytes]
    """The Part 10 bytes the peer should send for a SOP Instance UID."""


@pytest.fixture(scope="module")
def catalog(studies: dict[str, list[Path]], tmp_path_factory: pytest.TempPathFactory) -> Catalog:
    """The synthetic history, a 50-slice 512 x 512 CT series (26 MB), and a series whose
    instances are stored implicit VR and RLE-compressed (sent as stored: no transcoding)."""
    cat = Catalog()
    for files in studies.values():
        for f in files:
            cat.add(f)
    out = tmp_path_factory.mktemp("fetch-data")
    for f in write_ct_study(out, slices=50, rows=512, columns=512, seed=11):
        cat.add(f)
    study, series = generate_uid(), generate_uid()
    for n in range(1, 4):
        ds = ct_instance(study=study, series=series, number=n, size=64, implicit=n == 1)
        if n == 3:
            ds.compress(RLELossless)
        path = out / f"odd-{n}.dcm"
        path.write_bytes(part10(ds))
        cat.add(path)
    return cat


def stow(base: str, files: list[Path]) -> None:
    boundary = mp.new_boundary()
    body = b"".join(
        mp.part_header(boundary, "application/dicom", i == 0) + f.read_bytes()
        for i, f in enumerate(files)
    )
    response = httpx.post(
        f"{base}/studies",
        content=body + mp.closing(boundary),
        headers={"Content-Type": mp.content_type("application/dicom", boundary)},
        timeout=120,
    )
    assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def our_pacs(tmp_path_factory: pytest.TempPathFactory, catalog: Catalog) -> Iterator[Peer]:
    folder = tmp_path_factory.mktemp("fetch-pacs")
    with running_pacs(folder / "pacs", extra=["--workers", "2"]) as pacs:
        for members in catalog.series.values():
            stow(pacs.dicomweb, list(members.values()))
        files = {sop: f for members in catalog.series.values() for sop, f in members.items()}
        # STOW-RS keeps the Part 10 file as sent
        yield Peer("pacs", pacs.dicomweb, catalog, lambda sop: files[sop].read_bytes())


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory, catalog: Catalog) -> Iterator[Peer]:
    if ORTHANC is None:
        pytest.skip("Orthanc is not installed")
    folder = tmp_path_factory.mktemp("fetch-orthanc")
    with running_orthanc(folder) as o, httpx.Client(base_url=o.url, timeout=60) as rest:
        ids: dict[str, str] = {}
        for members in catalog.series.values():
            for sop, f in members.items():
                response = rest.post("/instances", content=f.read_bytes())
                assert response.is_success, response.text
                ids[sop] = response.json()["ID"]

        def reference(sop: str) -> bytes:
            # Orthanc may rewrite the file meta: compare with the file it stores
            return rest.get(f"/instances/{ids[sop]}/file").content

        yield Peer("orthanc", f"{o.url}/dicom-web", catalog, reference)


@pytest.fixture(params=["orthanc", "pacs"])
def peer(request: pytest.FixtureRequest) -> Peer:
    peer: Peer = request.getfixturevalue("our_pacs" if request.param == "pacs" else "orthanc")
    return peer


def collect(
    pacs: DicomwebPacs, study: str, series: str, sops: set[str] | None = None
) -> tuple[int, dict[str, bytes]]:
    got: dict[str, bytes] = {}

    def keep(sop: str, data: bytes) -> None:
        assert sop not in got
        got[sop] = data

    return pacs.fetch_series(study, series, keep, sops=sops), got


# -- real peers --------------------------------------------------------------------------------


def test_every_series_arrives_byte_identical(peer: Peer) -> None:
    with DicomwebPacs(peer.base) as pacs:
        for (study, series), members in peer.catalog.series.items():
            count, got = collect(pacs, study, series)
            assert count == len(got) == len(members), (peer.name, series)
            assert set(got) == set(members)
            for sop, data in got.items():
                assert data == peer.reference(sop), f"{peer.name}: {sop} differs from the file"


def test_instances_kept_in_their_stored_transfer_syntax(peer: Peer) -> None:
    odd = next(
        k for k, v in peer.catalog.series.items() if any("odd-" in p.name for p in v.values())
    )
    with DicomwebPacs(peer.base) as pacs:
        _, got = collect(pacs, *odd)
    syntaxes = {
        sop: str(dcmread(peer.catalog.series[odd][sop]).file_meta.TransferSyntaxUID) for sop in got
    }
    assert (
        {str(dcmread(io.BytesIO(d)).file_meta.TransferSyntaxUID) for d in got.values()}
        == set(syntaxes.values())
        == {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", str(RLELossless)}
    )


def test_only_the_sops_asked_for(peer: Peer) -> None:
    study, series = peer.catalog.biggest()
    members = sorted(peer.catalog.series[(study, series)])
    wanted = set(members[3::7])
    with DicomwebPacs(peer.base) as pacs:
        count, got = collect(pacs, study, series, wanted)
        assert count == len(wanted) and set(got) == wanted
        assert all(got[s] == peer.reference(s) for s in wanted)
        # one the series does not hold: the others still come, the count tells
        stranger = generate_uid()
        count, got = collect(pacs, study, series, {members[0], stranger})
        assert count == 1 and set(got) == {members[0]}
        assert pacs.fetch_series(study, series, lambda s, d: None, sops=()) == 0


def test_fetch_instance(peer: Peer) -> None:
    (study, series), members = next(iter(peer.catalog.series.items()))
    sop = next(iter(members))
    with DicomwebPacs(peer.base) as pacs:
        assert pacs.fetch_instance(study, series, sop) == peer.reference(sop)
        with pytest.raises(NotFound):
            pacs.fetch_instance(study, series, generate_uid())


def test_unknown_series_or_study(peer: Peer) -> None:
    study, _ = peer.catalog.biggest()
    with DicomwebPacs(peer.base) as pacs:
        with pytest.raises(NotFound):
            collect(pacs, study, generate_uid())
        with pytest.raises(NotFound):
            collect(pacs, generate_uid(), generate_uid())


class CountingTransport(httpx.BaseTransport):
    """Records how many response bytes came off the network, and when the last did."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.received = 0
        self.finished: float | None = None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_Counting(response.stream, self),  # type: ignore[arg-type]
            extensions=response.extensions,
        )

    def close(self) -> None:
        self.inner.close()


class _Counting(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, owner: CountingTransport) -> None:
        self.inner, self.owner = inner, owner

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.inner:
            self.owner.received += len(chunk)
            yield chunk
        self.owner.finished = time.perf_counter()

    def close(self) -> None:
        self.inner.close()


def test_instances_handed_over_while_the_response_streams(peer: Peer) -> None:
    study, series = peer.catalog.biggest()
    members = peer.catalog.series[(study, series)]
    assert len(members) >= 50
    transport = CountingTransport()
    calls: list[tuple[float, int]] = []
    with httpx.Client(transport=transport, timeout=30) as client:
        pacs = DicomwebPacs(peer.base, client=client)
        count = pacs.fetch_series(
            study, series, lambda sop, data: calls.append((time.perf_counter(), transport.received))
        )
    assert count == len(members)
    first_time, received_then = calls[0]
    assert transport.finished is not None
    # the first instance was delivered long before the response had all arrived
    assert first_time < transport.finished
    assert received_then < transport.received / 4, (received_then, transport.received)
    # and instances kept coming out as bytes kept coming in
    assert len({r for _, r in calls}) > len(calls) / 4


def test_throughput(peer: Peer, capsys: pytest.CaptureFixture[str]) -> None:
    study, series = peer.catalog.biggest()
    size = 0

    def count(sop: str, data: bytes) -> None:
        nonlocal size
        size += len(data)

    best = float("inf")
    with DicomwebPacs(peer.base) as pacs:
        for _ in range(3):
            size = 0
            start = time.perf_counter()
            n = pacs.fetch_series(study, series, count)
            best = min(best, time.perf_counter() - start)
    with capsys.disabled():
        print(
            f"\n{peer.name}: {n} instances, {size / 1e6:.1f} MB in {best:.3f} s = "
            f"{size / 1e6 / best:.0f} MB/s"
        )


def test_stopped_pacs_is_unavailable(tmp_path: Path, catalog: Catalog) -> None:
    study, series = catalog.biggest()
    with running_pacs(tmp_path / "pacs") as p:
        pacs = DicomwebPacs(p.dicomweb, timeout=5)
        with pytest.raises(NotFound):  # up and answering
            collect(pacs, study, series)
        stop(p.proc)
        with pytest.raises(PacsUnavailable):
            collect(pacs, study, series)
        with pytest.raises(PacsUnavailable):
            pacs.fetch_instance(study, series, generate_uid())


@needs_orthanc
def test_stopped_orthanc_is_unavailable(tmp_path: Path, catalog: Catalog) -> None:
    study, series = catalog.biggest()
    with running_orthanc(tmp_path / "orthanc") as o:
        pacs = DicomwebPacs(f"{o.url}/dicom-web", timeout=5)
        with pytest.raises(NotFound):
            collect(pacs, study, series)
        stop(o.proc)
        with pytest.raises(PacsUnavailable):
            collect(pacs, study, series)


def test_pacs_killed_mid_stream(tmp_path: Path) -> None:
    files = write_ct_study(tmp_path / "ct", slices=40, rows=512, columns=512, seed=4)
    ds = dcmread(files[0], stop_before_pixels=True)
    with running_pacs(tmp_path / "pacs") as p:
        stow(p.dicomweb, files)
        got: list[str] = []

        def kill_after_first(sop: str, data: bytes) -> None:
            got.append(sop)
            if len(got) == 1:
                p.proc.kill()
                p.proc.wait()

        pacs = DicomwebPacs(p.dicomweb, timeout=5)
        with pytest.raises(PacsUnavailable):
            pacs.fetch_series(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), kill_after_first)
        assert 1 <= len(got) < len(files)


# -- scripted servers --------------------------------------------------------------------------

STUDY, SERIES = generate_uid(), generate_uid()


def instance(study: str = STUDY, series: str = SERIES) -> tuple[str, bytes]:
    ds = ct_instance(study=study, series=series)
    return str(ds.SOPInstanceUID), part10(ds)


def multipart(*parts: bytes, ptype: str = "application/dicom") -> tuple[bytes, str]:
    boundary = mp.new_boundary()
    body = b"".join(mp.part_header(boundary, ptype, i == 0) + p for i, p in enumerate(parts))
    return body + mp.closing(boundary), mp.content_type(ptype, boundary)


def scripted(handler: Callable[[httpx.Request], httpx.Response]) -> DicomwebPacs:
    return DicomwebPacs(
        "http://pacs.test/wado", client=httpx.Client(transport=httpx.MockTransport(handler))
    )


def test_406_to_any_syntax_retried_once_without_it() -> None:
    sop, data = instance()
    accepts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        accepts.append(request.headers["accept"])
        assert request.headers["accept-encoding"] == "identity"
        if "transfer-syntax" in request.headers["accept"]:
            return httpx.Response(406)
        body, ctype = multipart(data)
        return httpx.Response(200, content=body, headers={"Content-Type": ctype})

    _, got = collect(scripted(handler), STUDY, SERIES)
    assert got == {sop: data}
    assert accepts == [ACCEPT_AS_STORED, ACCEPT_DEFAULT]

    def always_406(request: httpx.Request) -> httpx.Response:
        accepts.append(request.headers["accept"])
        return httpx.Response(406)

    accepts.clear()
    with pytest.raises(InvalidInput, match="406"):
        collect(scripted(always_406), STUDY, SERIES)
    assert accepts == [ACCEPT_AS_STORED, ACCEPT_DEFAULT]


def test_redirects_followed_on_the_same_host_only() -> None:
    sop, data = instance()
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        if request.url.host == "pacs.test" and request.url.path.startswith("/wado/"):
            return httpx.Response(307, headers={"Location": "/moved" + request.url.path[5:]})
        if request.url.path.startswith("/moved/"):
            assert request.headers.get("authorization") == "Bearer t"
            body, ctype = multipart(data)
            return httpx.Response(200, content=body, headers={"Content-Type": ctype})
        raise AssertionError(f"followed to {request.url}")

    transport = httpx.MockTransport(handler)
    client = httpx.Client(transport=transport, follow_redirects=True)
    pacs = DicomwebPacs(
        "http://pacs.test/wado/", client=client, headers={"Authorization": "Bearer t"}
    )
    assert collect(pacs, STUDY, SERIES)[1] == {sop: data}
    assert seen[1] == f"http://pacs.test/moved/studies/{STUDY}/series/{SERIES}"

    def elsewhere(request: httpx.Request) -> httpx.Response:
        if request.url.host == "pacs.test":
            return httpx.Response(302, headers={"Location": "http://evil.test/steal"})
        raise AssertionError("followed to another host")

    with pytest.raises(PacsUnavailable, match="another host"):
        collect(scripted(elsewhere), STUDY, SERIES)
    loop = scripted(lambda r: httpx.Response(302, headers={"Location": str(r.url)}))
    with pytest.raises(PacsUnavailable, match="redirects more than"):
        collect(loop, STUDY, SERIES)


@pytest.mark.parametrize(
    ("status", "error"),
    [(404, NotFound), (410, NotFound), (500, PacsUnavailable), (503, PacsUnavailable),
     (429, PacsUnavailable), (400, InvalidInput), (403, InvalidInput)],
)  # fmt: skip
def test_status_mapping(status: int, error: type[Exception]) -> None:
    with pytest.raises(error, match=str(status)):
        collect(scripted(lambda r: httpx.Response(status, text="nope")), STUDY, SERIES)


def respond(body: bytes, ctype: str) -> DicomwebPacs:
    return scripted(lambda r: httpx.Response(200, content=body, headers={"Content-Type": ctype}))


def test_parts_that_are_not_part10_dicom_of_the_series() -> None:
    _, data = instance()
    with pytest.raises(InvalidInput, match="not application/dicom"):
        collect(respond(*multipart(data, ptype="application/octet-stream")), STUDY, SERIES)
    with pytest.raises(InvalidInput, match="Part 10"):
        collect(respond(*multipart(b"not dicom at all" * 20)), STUDY, SERIES)
    with pytest.raises(InvalidInput, match="Part 10"):
        collect(respond(*multipart(data[132:])), STUDY, SERIES)  # file meta but no preamble
    _, other = instance(series=generate_uid())
    with pytest.raises(InvalidInput, match="not to the series"):
        collect(respond(*multipart(data, other)), STUDY, SERIES)
    with pytest.raises(InvalidInput, match="multipart/related"):
        collect(respond(data, "application/dicom"), STUDY, SERIES)
    body, ctype = multipart(data)
    with pytest.raises(InvalidInput, match="truncated"):
        collect(respond(body[:-10], ctype), STUDY, SERIES)


def test_delivered_before_a_later_bad_part_is_seen() -> None:
    sop, data = instance()
    got: list[str] = []
    pacs = respond(*multipart(data, b"garbage" * 50))
    with pytest.raises(InvalidInput):
        pacs.fetch_series(STUDY, SERIES, lambda s, d: got.append(s))
    assert got == [sop]


def test_quoted_boundary_and_part_headers() -> None:
    sop, data = instance()
    boundary = 'a b;c,"d'
    body = (
        (
            f"--{boundary}\r\nContent-Type: application/dicom; transfer-syntax=1.2.840.10008.1.2.1\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    ctype = 'multipart/related; type="application/dicom"; boundary="a b;c,\\"d"'
    assert collect(respond(body, ctype), STUDY, SERIES)[1] == {sop: data}


def test_uids_checked_before_any_request() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("no request expected")

    pacs = scripted(handler)
    for study, series in [
        ("1.2.3/../..", SERIES),
        (STUDY, "1.2.3?x=1"),
        ("", SERIES),
        (STUDY, "1.02"),
    ]:
        with pytest.raises(InvalidIdentifier):
            collect(pacs, study, series)
    with pytest.raises(InvalidIdentifier):
        pacs.fetch_instance(STUDY, SERIES, "1.2.3#x")
    with pytest.raises(InvalidInput):
        DicomwebPacs("ftp://pacs.test/")


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s.getsockname()[1]


def test_timeout_is_unavailable() -> None:
    with silent_server() as port:
        pacs = DicomwebPacs(f"http://127.0.0.1:{port}", timeout=0.5)
        start = time.monotonic()
        with pytest.raises(PacsUnavailable, match="Timeout"):
            collect(pacs, STUDY, SERIES)
        assert time.monotonic() - start < 5


def test_nothing_listening_is_unavailable() -> None:
    pacs = DicomwebPacs(f"http://127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(PacsUnavailable, match="unreachable"):
        collect(pacs, STUDY, SERIES)


def test_thread_safe() -> None:
    """Several threads share one DicomwebPacs (and its connection pool)."""
    payload = [instance() for _ in range(4)]
    body, ctype = multipart(*(d for _, d in payload))
    pacs = respond(body, ctype)
    results: list[set[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            for _ in range(20):
                results.append(set(collect(pacs, STUDY, SERIES)[1]))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 80
    assert all(r == {s for s, _ in payload} for r in results)


def test_kept_alive_connection_closed_by_the_server_is_retried() -> None:
    """The server answers on a kept-alive connection, then closes it unanswered when it is
    reused (as uvicorn does after an error it logged): the GET is sent again on a new one."""
    answer = b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\nContent-Type: text/plain\r\n\r\nnope"
    connections: list[int] = []

    def serve(listener: socket.socket) -> None:
        for n in range(2):
            conn, _ = listener.accept()
            with conn:
                connections.append(n)
                conn.recv(65536)
                conn.sendall(answer)
                if n == 0:
                    conn.recv(65536)  # the reused connection's request: drop it unanswered

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        thread = threading.Thread(target=serve, args=(listener,), daemon=True)
        thread.start()
        pacs = DicomwebPacs(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout=5)
        for _ in range(2):
            with pytest.raises(NotFound):
                collect(pacs, STUDY, SERIES)
        thread.join(5)
    assert connections == [0, 1]
