"""The Source box's WADO-RS vs Orthanc's, same machine, same run, same 500-slice CT (issue:
Conso and Source retrieval).

    python benchmarks/source_wado.py [--slices 500] [--repeat 3] [--source-workers N]

The box runs as its own process (``drimbox box``), its PACS being that Orthanc (reached over
DICOMweb); the exam is published in its archive, tokens are checked against a fake PSC
introspection endpoint (cached, as in production). Measured, each side in the same sitting:
  * whole-study WADO-RS from a warm cache (MB/s, curl, identity encoding);
  * single-instance WADO-RS, 1 and 8 clients (instances/s; curl keep-alive, one process
    per client);
  * series metadata, 500 instances, warm (ms, median);
  * whole study from a cold cache, the box pulling it from Orthanc over DICOMweb while it
    streams it out, vs Orthanc serving it directly (s, and time to first byte).
Prints a table; ratios > 1 mean the box is better.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import httpx
from pydicom import dcmread

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fake_psc import FakePsc, running_fake_psc
from tests.peers import Orthanc, dcmtk, free_port, running_orthanc, stop, wait_port

from drimbox.adapters.cache.instance_cache import InstanceCache
from drimbox.adapters.documents.manifest_codec import KosCodec
from drimbox.adapters.hl7.parse import parse_message
from drimbox.domain.manifest import (
    ImagingManifest,
    ManifestInstance,
    ManifestPatient,
    ManifestSeries,
    ManifestStudy,
    new_uid,
)
from drimbox.services.source.inbox import Inbox
from drimbox.services.source.outbox import Outbox, Publication, PublicationState
from drimbox.synth import write_ct_study

ACCEPT = 'multipart/related; type="application/dicom"'


def prepare_box(
    folder: Path, files: list[Path], warm: bool, kos_uid: str = ""
) -> tuple[str, str, str]:
    """Publication in the box's archive (and the images in its cache when ``warm``)."""
    first = dcmread(files[0], stop_before_pixels=True)
    study, series = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
    instances = []
    cache = InstanceCache(folder / "cache", 20 << 30)
    for path in files:
        ds = dcmread(path, stop_before_pixels=True)
        instances.append(ManifestInstance(str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
        if warm:
            cache.put(study, series, str(ds.SOPInstanceUID), path)
    cache.close()
    kos_uid = kos_uid or new_uid()
    manifest = ImagingManifest(
        sop_instance_uid=kos_uid, series_instance_uid=new_uid(),
        patient=ManifestPatient("248000000000070", "1.2.250.1.213.1.4.10", "BENCH", "MARK"),
        study=ManifestStudy(study, date=date(2024, 1, 15)),
        series=(ManifestSeries(series, "CT", 1, instances=tuple(instances),
                               retrieve_url=f"http://box-a/dicomweb/studies/{study}/series/{series}"),),
    )  # fmt: skip
    (folder / "source").mkdir(parents=True, exist_ok=True)
    inbox = Inbox(folder / "source", parse_message)
    Outbox(inbox)  # creates its tables
    with inbox.transaction() as db:
        Outbox.record(db, Publication(
            study_uid=study, patient="248000000000070",
            patient_id="248000000000070^^^&1.2.250.1.213.1.4.10&ISO^NH", kos_uid=kos_uid,
            kos=KosCodec().encode(manifest), report_uid="", report_raw=b"",
            indexed_kos_uid=kos_uid, indexed_report_uid="", state=PublicationState.PUBLISHED,
        ))  # fmt: skip
    inbox.close()
    return study, series, kos_uid


@contextmanager
def running_box(folder: Path, orthanc: Orthanc, psc: FakePsc, workers: int = 0) -> Iterator[str]:
    """The box's Source root: on its HTTP port, or with ``workers`` on a port of its own."""
    port = free_port()
    source_port = free_port() if workers else 0
    env = {
        **os.environ, "DRIMBOX_BOX__DATA_DIR": str(folder), "DRIMBOX_BOX__HTTP_PORT": str(port),
        "DRIMBOX_BOX__MLLP_PORT": str(free_port()), "DRIMBOX_BOX__DICOM_PORT": "0",
        "DRIMBOX_BOX__PREFETCH": "false", "DRIMBOX_BOX__CONSO__ENABLED": "false",
        "DRIMBOX_BOX__PACS__DICOMWEB_URL": f"{orthanc.url}/dicom-web",
        "DRIMBOX_BOX__PACS__AET": orthanc.aet, "DRIMBOX_BOX__PACS__PORT": str(orthanc.port),
        "DRIMBOX_BOX__PSC__INTROSPECTION_URL": psc.introspection_url,
        "DRIMBOX_BOX__PSC__CLIENT_ID": "drimbox", "DRIMBOX_BOX__PSC__CLIENT_SECRET": "secret",
        "DRIMBOX_BOX__LOGGING__LEVEL": os.environ.get("BENCH_BOX_LOG", "WARNING"),
        "DRIMBOX_BOX__SOURCE_PORT": str(source_port), "DRIMBOX_BOX__SOURCE_WORKERS": str(workers),
    }  # fmt: skip
    log = (folder / "box.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "drimbox", "box"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_port(port, proc=proc)
        if source_port:
            wait_port(source_port, proc=proc)
        yield f"http://127.0.0.1:{source_port or port}/dicomweb"
    finally:
        stop(proc)


def curl(url: str, headers: dict[str, str]) -> tuple[int, float, float]:
    """(bytes, total s, first byte s) of one GET."""
    args = ["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download} %{time_total} "
            "%{time_starttransfer} %{http_code}", url]  # fmt: skip
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout.split()
    if out[3] != "200":
        raise RuntimeError(f"{url}: HTTP {out[3]}")
    return int(out[0]), float(out[1]), float(out[2])


def study_rate(url: str, headers: dict[str, str], repeat: int) -> float:
    best = 0.0
    for _ in range(repeat):
        size, total, _ = curl(url, {**headers, "Accept": ACCEPT})
        best = max(best, size / total / 1e6)
    return best


def instances_rate(urls: list[str], headers: dict[str, str], clients: int, work: Path) -> float:
    """Instances per second, ``clients`` curl processes each fetching its share in turn."""
    procs = []
    start = time.perf_counter()
    for c in range(clients):
        cfg = work / f"curl-{c}.cfg"
        quoted = {n: v.replace('"', '\\"') for n, v in {**headers, "Accept": ACCEPT}.items()}
        lines = [f'header = "{n}: {v}"' for n, v in quoted.items()]
        for url in urls[c::clients]:
            lines += [f'url = "{url}"', 'output = "/dev/null"']
        cfg.write_text("\n".join(lines) + "\n")
        procs.append(subprocess.Popen(["curl", "-sS", "--fail", "-K", str(cfg)]))
    for p in procs:
        if p.wait() != 0:
            raise RuntimeError("curl failed")
    return len(urls) / (time.perf_counter() - start)


def median_ms(url: str, headers: dict[str, str], repeat: int) -> float:
    return statistics.median(curl(url, headers)[1] * 1000 for _ in range(repeat))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slices", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--source-workers",
        type=int,
        default=0,
        help="serve the Source on its own port with N processes (0: one)",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="drimbox-bench-source-"))
    files = sorted(write_ct_study(work / "ct", slices=args.slices))
    size_mb = sum(f.stat().st_size for f in files) / 1e6
    print(f"CT: {len(files)} slices, {size_mb:.0f} MB, work dir {work}", flush=True)
    rows: list[tuple[str, float, float, bool]] = []  # label, box, orthanc, higher is better
    with running_orthanc(work / "orthanc") as orthanc, running_fake_psc() as psc:
        chunks = [files[i::4] for i in range(4)]
        procs = [subprocess.Popen([dcmtk("storescu"), "-aec", orthanc.aet, "127.0.0.1",
                                   str(orthanc.port), *map(str, c)]) for c in chunks]  # fmt: skip
        if any(p.wait() for p in procs):
            raise RuntimeError("storescu to Orthanc failed")
        study, series, kos = prepare_box(work / "box-warm", files, warm=True)
        sops = [str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
        auth = {"Authorization": f"Bearer {psc.issue(lifetime=3600)}", "KOS-SOPInstanceUID": kos}
        theirs = f"{orthanc.url}/dicom-web"
        with running_box(work / "box-warm", orthanc, psc, args.source_workers) as ours:
            print("whole study, warm", flush=True)
            rows.append(("WADO-RS whole study, warm (MB/s)",
                         study_rate(f"{ours}/studies/{study}", auth, args.repeat),
                         study_rate(f"{theirs}/studies/{study}", {}, args.repeat),
                         True))  # fmt: skip
            for clients in (1, 8):
                print(f"single instances, {clients} client(s)", flush=True)
                path = f"/studies/{study}/series/{series}/instances/"
                rows.append((f"single-instance WADO-RS, {clients} client(s) (inst/s)",
                             instances_rate([ours + path + s for s in sops], auth, clients, work),
                             instances_rate([theirs + path + s for s in sops], {}, clients, work),
                             True))  # fmt: skip
            print("series metadata", flush=True)
            meta = f"/studies/{study}/series/{series}/metadata"
            httpx.get(ours + meta, headers=auth, timeout=120).raise_for_status()  # warm it
            httpx.get(theirs + meta, timeout=120).raise_for_status()
            rows.append((f"series metadata, {len(files)} instances (ms)",
                         median_ms(ours + meta, auth, max(args.repeat, 5)),
                         median_ms(theirs + meta, {}, max(args.repeat, 5)), False))  # fmt: skip
        print("whole study, cold box cache (box pulls from Orthanc over DICOMweb)", flush=True)
        cold: list[tuple[float, float]] = []
        for i in range(args.repeat):
            folder = work / f"box-cold-{i}"
            prepare_box(folder, files, warm=False, kos_uid=kos)
            with running_box(folder, orthanc, psc, args.source_workers) as ours:
                _, total, first = curl(f"{ours}/studies/{study}", {**auth, "Accept": ACCEPT})
            cold.append((total, first))
            shutil.rmtree(folder, ignore_errors=True)
        direct = [curl(f"{theirs}/studies/{study}", {"Accept": ACCEPT}) for _ in range(args.repeat)]
        rows.append(("whole study, cold box vs Orthanc direct (s)",
                     statistics.median(t for t, _ in cold),
                     statistics.median(t for _, t, _ in direct), False))  # fmt: skip
        rows.append(("  first byte, cold box vs Orthanc direct (ms)",
                     statistics.median(f for _, f in cold) * 1000,
                     statistics.median(f for _, _, f in direct) * 1000, False))  # fmt: skip
    print()
    print(f"{'measure':52} {'box':>10} {'Orthanc':>10} {'ratio':>7}")
    for label, box, orthanc_value, higher in rows:
        ratio = box / orthanc_value if higher else orthanc_value / max(box, 1e-9)
        print(f"{label:52} {box:10.1f} {orthanc_value:10.1f} {ratio:6.2f}x")
    print("(ratio = the box's advantage: >1.00x means the box is better)")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
