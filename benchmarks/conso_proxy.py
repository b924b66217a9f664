"""Two sites, one CT: what a professional at site B waits for an exam of site A (issue: Conso
and Source retrieval).

    python benchmarks/conso_proxy.py [--slices 500] [--repeat 3]

Site A: Orthanc (reached over DICOMweb) behind box A; site B: box B; one index (SQLite), a
fake PSC. The exam is published the real way (ORU^R01 over MLLP to A) and listed at B from the
index. Measured, in the same sitting:
  * the whole study through B's proxy with both caches cold (A pulls from Orthanc while B
    pulls from A, each streaming), vs Orthanc serving it directly; time to first byte (the
    first instance's part) through B;
  * lossless compression on the wire: the whole study fetched from A's Source through a link
    limited to 100 Mbit/s (a throttling TCP relay), as stored vs JPEG-LS lossless: bytes and
    time.
Prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# the benchmark's boxes publish without signing keys: the index runs them as its default
# caller (a development setting, never a default)
os.environ.setdefault("DRIMBOX_INDEX__TRUST__ALLOW_DEFAULT_CALLER", "true")

from benchmarks.source_wado import ACCEPT, curl
from tests.fake_psc import FakePsc, running_fake_psc
from tests.peers import Orthanc, dcmtk, free_port, running_orthanc, stop, wait_port

from drimbox.synth import CtExam, write_ct_exam

JPEG_LS = "1.2.840.10008.1.2.4.80"


@contextmanager
def process(args: list[str], env: dict[str, str], log: Path, port: int) -> Iterator[None]:
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "drimbox", *args], env={**os.environ, **env},
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_port(port, timeout=60, proc=proc)
        yield
    finally:
        stop(proc)


def box_env(folder: Path, port: int, index: str, psc: FakePsc, **extra: str) -> dict[str, str]:
    return {
        "DRIMBOX_BOX__DATA_DIR": str(folder), "DRIMBOX_BOX__HTTP_PORT": str(port),
        "DRIMBOX_BOX__PUBLIC_URL": f"http://127.0.0.1:{port}", "DRIMBOX_BOX__INDEX_URL": index,
        "DRIMBOX_BOX__MLLP_PORT": str(free_port()), "DRIMBOX_BOX__DICOM_PORT": "0",
        "DRIMBOX_BOX__PREFETCH": "false", "DRIMBOX_BOX__IMAGES_RETRY": "0.5",
        "DRIMBOX_BOX__PSC__INTROSPECTION_URL": psc.introspection_url,
        "DRIMBOX_BOX__PSC__CLIENT_ID": "drimbox", "DRIMBOX_BOX__PSC__CLIENT_SECRET": "secret",
        "DRIMBOX_BOX__LOGGING__LEVEL": "WARNING", **extra,
    }  # fmt: skip


def index_env(psc: FakePsc) -> dict[str, str]:
    """B lists the history with the professional's token (introspected at the fake PSC); A
    publishes without a signing key, as the index's development default caller."""
    return {"DRIMBOX_INDEX__TRUST__INTROSPECTION_URL": psc.introspection_url,
            "DRIMBOX_INDEX__TRUST__CLIENT_ID": "drimbox",
            "DRIMBOX_INDEX__TRUST__CLIENT_SECRET": "secret"}  # fmt: skip


def mllp_send(port: int, message: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"\x0b" + message + b"\x1c\r")
        reply = b""
        while not reply.endswith(b"\x1c\r"):
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
    return reply


def list_history(box_b: str, token: str, ct: CtExam, timeout: float = 300) -> str:
    """Lists the patient at B until the exam shows; its KOS uniqueId."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.get(f"{box_b}/conso/api/history", headers={"Authorization": f"Bearer {token}"},
                      params={"ins": ct.patient_ins, "oid": ct.ins_oid}, timeout=60)  # fmt: skip
        for e in r.json()["exams"] if r.status_code == 200 else []:
            if e["study_uid"] == ct.study_uid and e["instances"]:
                return str(e["kos_uid"])
        time.sleep(1)
    raise RuntimeError("the exam never appeared in B's history")


class Throttle:
    """A TCP relay whose server-to-client direction carries at most ``rate`` bytes/s."""

    def __init__(self, target: int, rate: float) -> None:
        self.target, self.rate, self.port = target, rate, free_port()
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._serve(), self.loop).result()

    async def _serve(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", self.port)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limited: bool
    ) -> None:
        sent, start = 0, time.monotonic()
        try:
            while chunk := await reader.read(64 * 1024):
                writer.write(chunk)
                await writer.drain()
                if limited:
                    sent += len(chunk)
                    ahead = sent / self.rate - (time.monotonic() - start)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
        finally:
            writer.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        await asyncio.gather(
            self._pump(reader, up_writer, False),
            self._pump(up_reader, writer, True),
            return_exceptions=True,
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slices", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--link-mbit", type=float, default=100.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="drimbox-bench-conso-"))
    ct = write_ct_exam(work / "ct", slices=args.slices)
    size_mb = sum(f.stat().st_size for f in ct.files) / 1e6
    print(f"CT: {len(ct.files)} slices, {size_mb:.0f} MB, work dir {work}", flush=True)
    rows: list[tuple[str, str]] = []
    known = {"DRIMBOX": ("DRIMBOX", "127.0.0.1", free_port())}
    index_port, port_a, port_b = free_port(), free_port(), free_port()
    index = f"http://127.0.0.1:{index_port}"
    index_args = ["index", "--data-dir", str(work / "index"), "--port", str(index_port),
                  "--workers", "1"]  # fmt: skip
    with running_orthanc(work / "orthanc", modalities=known) as orthanc, \
            running_fake_psc() as psc, \
            process(index_args, index_env(psc), work / "index.log", index_port):  # fmt: skip
        load(orthanc, ct)
        token = psc.issue(lifetime=7200)
        env_a = box_env(work / "a", port_a, index, psc, DRIMBOX_BOX__CONSO__ENABLED="false",
                        DRIMBOX_BOX__PACS__AET=orthanc.aet,
                        DRIMBOX_BOX__PACS__PORT=str(orthanc.port),
                        DRIMBOX_BOX__PACS__DICOMWEB_URL=f"{orthanc.url}/dicom-web")  # fmt: skip
        allowed = f'["http://127.0.0.1:{port_a}/dicomweb"]'
        env_b = box_env(work / "b", port_b, index, psc, DRIMBOX_BOX__CONSO__SECURE_COOKIE="false",
                        DRIMBOX_BOX__CONSO__ALLOWED_SOURCES=allowed)  # fmt: skip
        cold: list[tuple[float, float]] = []
        for i in range(args.repeat):
            for folder in (work / "a" / "cache", work / "b" / "conso-cache"):
                shutil.rmtree(folder, ignore_errors=True)
            with process(["box"], env_a, work / "a.log", port_a), \
                    process(["box"], env_b, work / "b.log", port_b):  # fmt: skip
                if i == 0:
                    ack = mllp_send(int(env_a["DRIMBOX_BOX__MLLP_PORT"]), ct.oru)
                    if b"MSA|AA" not in ack:
                        raise RuntimeError(f"box A refused the report: {ack!r}")
                kos = list_history(f"http://127.0.0.1:{port_b}", token, ct)
                _, total, first = curl(
                    f"http://127.0.0.1:{port_b}/conso/dicomweb/studies/{ct.study_uid}",
                    {"Authorization": f"Bearer {token}", "Accept": ACCEPT},
                )
                print(f"  through B, cold: {total:.2f} s, first byte {first * 1000:.0f} ms",
                      flush=True)  # fmt: skip
                cold.append((total, first))
                if i == args.repeat - 1:
                    rows += wire(port_a, kos, ct, token, args.link_mbit)
        direct = [curl(f"{orthanc.url}/dicom-web/studies/{ct.study_uid}", {"Accept": ACCEPT})
                  for _ in range(args.repeat)]  # fmt: skip
    through = statistics.median(t for t, _ in cold)
    theirs = statistics.median(t for _, t, _ in direct)
    rows.insert(0, ("whole study through B, both caches cold (s)",
                    f"{through:.2f} vs Orthanc direct {theirs:.2f}: "
                    f"{through / theirs:.2f}x"))  # fmt: skip
    rows.insert(1, ("  time to first instance through B (ms)",
                    f"{statistics.median(f for _, f in cold) * 1000:.0f}"))  # fmt: skip
    print()
    for label, value in rows:
        print(f"{label:52} {value}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


def load(orthanc: Orthanc, ct: CtExam) -> None:
    chunks = [ct.files[i::4] for i in range(4)]
    procs = [
        subprocess.Popen(
            [
                dcmtk("storescu"),
                "-aet",
                "DRIMBOX",
                "-aec",
                orthanc.aet,
                "127.0.0.1",
                str(orthanc.port),
                *map(str, c),
            ]
        )
        for c in chunks
    ]
    if any(p.wait() for p in procs):
        raise RuntimeError("storescu to Orthanc failed")


def wire(port_a: int, kos: str, ct: CtExam, token: str, mbit: float) -> list[tuple[str, str]]:
    """The study from A's (warm) Source through a throttled link, as stored vs JPEG-LS."""
    throttle = Throttle(port_a, mbit * 1e6 / 8)
    url = f"http://127.0.0.1:{throttle.port}/dicomweb/studies/{ct.study_uid}"
    auth = {"Authorization": f"Bearer {token}", "KOS-SOPInstanceUID": kos}
    compressed = f"{ACCEPT}; transfer-syntax={JPEG_LS}; q=0.9, {ACCEPT}; q=0.4"
    size_plain, time_plain, _ = curl(url, {**auth, "Accept": ACCEPT})
    size_jls, time_jls, _ = curl(url, {**auth, "Accept": compressed})
    return [
        (f"study over {mbit:.0f} Mbit/s, as stored (MB, s)",
         f"{size_plain / 1e6:.0f} MB in {time_plain:.1f} s"),
        (f"study over {mbit:.0f} Mbit/s, JPEG-LS lossless (MB, s)",
         f"{size_jls / 1e6:.0f} MB in {time_jls:.1f} s: {size_plain / size_jls:.2f}x fewer bytes, "
         f"{time_plain / time_jls:.2f}x faster"),
    ]  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
