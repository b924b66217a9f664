"""Source publication latency: report message sent -> exam visible in the index (ITI-18).

Everything real and separate, as deployed: ``drimbox pacs`` holding the images, ``drimbox
index`` (SQLite), ``drimbox box`` (its own process); the RIS is the ``hl7`` package's MLLP
client. For each exam the clock starts when the ORU is sent and stops when FindDocuments for
the patient lists the exam's KOS. Two modes: ``paced`` (one message every ``--interval``
seconds: the latency a radiologist sees) and ``burst`` (all at once: queueing included).

    python benchmarks/publish_latency.py --exams 100
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# the benchmark's boxes publish without signing keys: the index runs them as its default
# caller (a development setting, never a default)
os.environ.setdefault("DRIMBOX_INDEX__TRUST__ALLOW_DEFAULT_CALLER", "true")

from hl7.client import MLLPClient
from tests.peers import free_port, run_dcmtk, running_pacs, stop, wait_port

from drimbox.adapters.xds.client import XdsClient
from drimbox.domain import xds
from drimbox.synth import generate_history


@contextmanager
def process(cmd: list[str], log: Path, *ports: int) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    try:
        for port in ports:
            wait_port(port, proc=proc)
        yield proc
    finally:
        stop(proc)


def exams_of(folder: Path, count: int) -> list[dict[str, object]]:
    patients = max(4, count // 4)
    generate_history(folder, patients=patients, sites=1, seed=3, size="small", message_type="ORU")
    exams = json.loads((folder / "manifest.json").read_text())["exams"]
    if len(exams) < count:
        raise SystemExit(f"only {len(exams)} exams generated, asked for {count}")
    return list(exams[:count])


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def run_mode(
    exams: list[dict[str, object]], folder: Path, mllp_port: int, index_url: str, interval: float
) -> tuple[list[float], float]:
    sent: dict[str, float] = {}
    seen: dict[str, float] = {}
    by_patient: dict[str, set[str]] = {}
    for exam in exams:
        pid = f"{exam['patient_ins']}^^^&{exam['ins_oid']}&ISO^NH"
        by_patient.setdefault(pid, set()).add(str(exam["study_uid"]))
    done = threading.Event()

    def watch() -> None:
        with XdsClient(index_url, timeout=30) as client:
            while not done.is_set():
                for pid, studies in by_patient.items():
                    waiting = studies - seen.keys()
                    if not waiting or not waiting & sent.keys():
                        continue
                    for doc in client.find_documents(pid):
                        study = doc.reference(xds.STUDY_UID_REF)
                        if (
                            study in waiting
                            and study in sent
                            and doc.mime_type == "application/dicom"
                        ):
                            seen[study] = time.perf_counter()
                if len(seen) == len(exams):
                    done.set()
                time.sleep(0.05)  # the watcher shares the CPU with the box and index

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    start = time.perf_counter()
    with MLLPClient("127.0.0.1", mllp_port) as ris:
        for exam in exams:
            message = next(m for m in exam["hl7_messages"] if m["event"] == "new")  # type: ignore[attr-defined]
            raw = (folder / message["path"]).read_bytes()
            sent[str(exam["study_uid"])] = time.perf_counter()
            ack = ris.send_message(raw)
            if b"MSA|AA" not in (ack if isinstance(ack, bytes) else ack.encode()):
                raise SystemExit(f"not acknowledged: {ack!r}")
            if interval:
                time.sleep(interval)
    if not done.wait(300):
        raise SystemExit(f"only {len(seen)}/{len(exams)} exams published in 300 s")
    elapsed = time.perf_counter() - start
    return [seen[s] - sent[s] for s in sent], elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exams", type=int, default=100)
    parser.add_argument("--interval", type=float, default=0.2, help="paced mode: seconds")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="drimbox-publish-"))
    work.mkdir(parents=True, exist_ok=True)
    exams = exams_of(work / "synth", 2 * args.exams)
    paced, burst = exams[: args.exams], exams[args.exams :]
    files = sorted((work / "synth").rglob("*.dcm"))
    index_port, mllp_port = free_port(), free_port()
    index_url = f"http://127.0.0.1:{index_port}"
    py = sys.executable
    with running_pacs(work / "pacs") as pacs, process(
        [py, "-m", "drimbox", "index", "--port", str(index_port), "--data-dir",
         str(work / "index"), "--workers", "1"], work / "index.log", index_port,
    ), process(
        [py, "-m", "drimbox", "box", "--http-port", "0", "--mllp-port", str(mllp_port),
         "--dicom-port", "0", "--data-dir", str(work / "box"), "--index-url", index_url,
         "--pacs", f"{pacs.aet}@127.0.0.1:{pacs.port}"], work / "box.log", mllp_port,
    ):  # fmt: skip
        for start in range(0, len(files), 500):
            run_dcmtk("storescu", "-aec", pacs.aet, "127.0.0.1", str(pacs.port),
                      *map(str, files[start : start + 500]))  # fmt: skip
        rows = []
        for name, batch, interval in (("paced", paced, args.interval), ("burst", burst, 0.0)):
            latencies, elapsed = run_mode(batch, work / "synth", mllp_port, index_url, interval)
            p50, p99 = statistics.median(latencies), percentile(latencies, 99)
            rows.append((name, len(batch), p50, p99, max(latencies), len(batch) / elapsed))
    print(f"\nmessage -> visible in ITI-18 FindDocuments ({len(files)} images in the PACS)")
    print(f"{'mode':<8}{'exams':>7}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}{'exams/s':>10}")
    for name, n, p50, p99, worst, rate in rows:
        print(f"{name:<8}{n:>7}{p50 * 1000:>10.0f}{p99 * 1000:>10.0f}{worst * 1000:>10.0f}"
              f"{rate:>10.1f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
