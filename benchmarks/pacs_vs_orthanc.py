"""Embedded PACS vs Orthanc, same machine, same run, same 500-slice CT (issue: foundation).

    python benchmarks/pacs_vs_orthanc.py [--slices 500] [--repeat 3]

Measures, for both servers at equal durability (fsync on: our default, Orthanc's
SyncStorageArea), on a fresh store each time:
  * C-STORE ingest with dcmtk storescu, 1 and 4 parallel associations, TCP_NODELAY=1 for the
    dcmtk tools and Orthanc ("tuned", design.md section 7);
  * the same with stock dcmtk and stock Orthanc (no TCP_NODELAY anywhere on their side);
  * whole-study WADO-RS throughput (curl, best of --repeat, identity encoding).
Prints a table; ratios > 1 mean drimbox is faster.
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
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.peers import dcmtk, running_orthanc, running_pacs

from drimbox.synth import write_ct_study


def storescu(port: int, aet: str, files: list[Path], associations: int, tuned: bool) -> float:
    """Images per second for ``files`` sent over ``associations`` parallel storescu runs."""
    env = dict(os.environ)
    env.pop("TCP_NODELAY", None)
    if tuned:
        env["TCP_NODELAY"] = "1"
    chunks = [files[i::associations] for i in range(associations)]
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [dcmtk("storescu"), "-aec", aet, "127.0.0.1", str(port), *map(str, c)], env=env
        )
        for c in chunks
    ]
    for p in procs:
        if p.wait() != 0:
            raise RuntimeError("storescu failed")
    return len(files) / (time.perf_counter() - start)


def curl_study(url: str, repeat: int) -> tuple[float, float]:
    """(MB/s best of ``repeat``, time to first byte in ms of that run)."""
    best = (0.0, 0.0)
    for _ in range(repeat):
        out = subprocess.run(
            [
                "curl",
                "-sS",
                "-o",
                "/dev/null",
                "-H",
                'Accept: multipart/related; type="application/dicom"',
                "-w",
                "%{size_download} %{time_total} %{time_starttransfer}",
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        size, total, first = int(out[0]), float(out[1]), float(out[2])
        if size < 1_000_000:
            raise RuntimeError(f"{url} returned only {size} bytes")
        mbps = size / total / 1e6
        if mbps > best[0]:
            best = (mbps, first * 1000)
    return best


def measure_pair(
    ours_fn: Callable[[], float], theirs_fn: Callable[[], float], repeat: int
) -> tuple[float, float]:
    """Medians of interleaved runs: the disk's state drifts during a sitting, and running
    one server's repeats before the other's would hand that drift to one side."""
    ours: list[float] = []
    theirs: list[float] = []
    for _ in range(repeat):
        ours.append(ours_fn())
        theirs.append(theirs_fn())
    for name, values in (("drimbox", ours), ("orthanc", theirs)):
        runs = ", ".join(f"{v:.0f}" for v in values)
        print(f"  {name}: {runs} -> {statistics.median(values):.0f}", flush=True)
    return statistics.median(ours), statistics.median(theirs)


def ingest_drimbox(work: Path, files: list[Path], assocs: int, tuned: bool) -> float:
    storage = work / f"pacs-{time.monotonic_ns()}"
    with running_pacs(storage) as pacs:
        rate = storescu(pacs.port, pacs.aet, files, assocs, tuned)
    shutil.rmtree(storage, ignore_errors=True)
    return rate


def ingest_orthanc(work: Path, files: list[Path], assocs: int, tuned: bool) -> float:
    folder = work / f"orthanc-{time.monotonic_ns()}"
    with running_orthanc(folder, tuned=tuned) as orthanc:
        rate = storescu(orthanc.port, orthanc.aet, files, assocs, tuned)
    shutil.rmtree(folder, ignore_errors=True)
    return rate


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slices", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="drimbox-bench-"))
    ct_dir = work / "ct"
    files = (
        sorted(write_ct_study(ct_dir, slices=args.slices))
        if not ct_dir.exists()
        else sorted(ct_dir.rglob("*.dcm"))
    )
    size_mb = sum(f.stat().st_size for f in files) / 1e6
    print(f"CT: {len(files)} slices, {size_mb:.0f} MB, work dir {work}", flush=True)

    rows: list[tuple[str, float, float, str]] = []
    for label, assocs, tuned in (
        ("C-STORE 1 assoc, tuned (img/s)", 1, True),
        ("C-STORE 4 assoc, tuned (img/s)", 4, True),
        ("C-STORE 1 assoc, stock dcmtk (img/s)", 1, False),
        ("C-STORE 4 assoc, stock dcmtk (img/s)", 4, False),
    ):
        print(label, flush=True)
        ours, theirs = measure_pair(
            lambda a=assocs, t=tuned: ingest_drimbox(work, files, a, t),
            lambda a=assocs, t=tuned: ingest_orthanc(work, files, a, t),
            args.repeat,
        )
        rows.append((label, ours, theirs, "higher is better"))

    print("WADO-RS whole study", flush=True)
    with (
        running_pacs(work / "pacs-wado") as pacs,
        running_orthanc(work / "orthanc-wado") as orthanc,
    ):
        storescu(pacs.port, pacs.aet, files, 4, True)
        storescu(orthanc.port, orthanc.aet, files, 4, True)
        from pydicom import dcmread

        study = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        ours_mbps, ours_ttfb = curl_study(f"{pacs.dicomweb}/studies/{study}", args.repeat)
        theirs_mbps, theirs_ttfb = curl_study(
            f"{orthanc.url}/dicom-web/studies/{study}", args.repeat
        )
    rows.append(("WADO-RS whole study (MB/s)", ours_mbps, theirs_mbps, "higher is better"))
    rows.append(("WADO-RS first byte (ms)", ours_ttfb, theirs_ttfb, "lower is better"))

    print()
    print(f"{'measure':40} {'drimbox':>10} {'Orthanc':>10} {'ratio':>7}")
    for label, ours, theirs, sense in rows:
        ratio = ours / theirs if sense == "higher is better" else theirs / max(ours, 1e-9)
        print(f"{label:40} {ours:10.1f} {theirs:10.1f} {ratio:6.2f}x")
    print("(ratio = drimbox advantage: >1.00x means drimbox is better)")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
