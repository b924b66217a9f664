"""Real peers for integration tests and benchmarks: our PACS, Orthanc, dcmtk's storescp.

Every peer runs on free loopback ports under a temporary folder and is stopped by its
context manager.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

DCMTK = {tool: shutil.which(tool, path="/usr/bin:/bin") for tool in (
    "storescu", "findscu", "getscu", "movescu", "echoscu", "storescp",
)}  # fmt: skip
ORTHANC = shutil.which("Orthanc", path="/usr/sbin:/usr/bin")
ORTHANC_DICOMWEB = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def dcmtk(tool: str) -> str:
    """Path of a dcmtk tool; never pynetdicom's homonymous apps that a venv puts first."""
    path = DCMTK.get(tool)
    if path is None:
        raise RuntimeError(f"dcmtk {tool} is not installed (apt-get install dcmtk)")
    return path


_issued_ports: set[int] = set()


def free_port() -> int:
    """A port nothing listens on and this test run has not handed out yet (the kernel may
    give the same ephemeral port twice in a row while the first caller has not bound it)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _issued_ports:
            _issued_ports.add(port)
            return port


def wait_port(
    port: int, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Pacs:
    aet: str
    port: int
    http_port: int
    storage: Path
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def dicomweb(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


def start_pacs(
    storage: Path,
    aet: str = "DRIMPACS",
    extra: list[str] | None = None,
    port: int | None = None,
    http_port: int | None = None,
) -> Pacs:
    port = port or free_port()
    http_port = http_port or free_port()
    log = storage.parent / f"{storage.name}.log"
    cmd = [
        sys.executable, "-m", "drimbox", "pacs", "--aet", aet, "--port", str(port),
        "--http-port", str(http_port), "--storage", str(storage), *(extra or []),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    wait_port(http_port, proc=proc)
    wait_port(port, proc=proc)
    return Pacs(aet, port, http_port, storage, proc, log)


@contextlib.contextmanager
def running_pacs(storage: Path, **kwargs: object) -> Iterator[Pacs]:
    pacs = start_pacs(storage, **kwargs)  # type: ignore[arg-type]
    try:
        yield pacs
    finally:
        stop(pacs.proc)


@dataclass
class Orthanc:
    aet: str
    port: int
    http_port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


@contextlib.contextmanager
def running_orthanc(
    folder: Path,
    modalities: dict[str, tuple[str, str, int]] | None = None,
    tuned: bool = True,
    aet: str = "ORTHANC",
) -> Iterator[Orthanc]:
    """Orthanc with its DICOMweb plugin, fsync on (SyncStorageArea), no HTTP compression."""
    if ORTHANC is None:
        raise RuntimeError("Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)")
    folder.mkdir(parents=True, exist_ok=True)
    port, http_port = free_port(), free_port()
    config = {
        "Name": "drimbox-test", "StorageDirectory": str(folder / "db"),
        "IndexDirectory": str(folder / "db"), "DicomAet": aet, "DicomPort": port,
        "HttpPort": http_port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "SyncStorageArea": True, "StorageCompression": False, "HttpCompressionEnabled": False,
        "DicomModalities": {k: list(v) for k, v in (modalities or {}).items()},
        "DicomCheckModalityHost": False, "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowEcho": True, "DicomThreadsCount": 4,
        "Plugins": [ORTHANC_DICOMWEB] if os.path.exists(ORTHANC_DICOMWEB) else [],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }  # fmt: skip
    cfg = folder / "orthanc.json"
    cfg.write_text(json.dumps(config))
    env = dict(os.environ)
    if tuned:
        env["TCP_NODELAY"] = "1"
    log = (folder / "orthanc.log").open("ab")
    proc = subprocess.Popen([ORTHANC, str(cfg)], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_port(http_port, proc=proc)
        wait_port(port, proc=proc)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{http_port}/system", timeout=2).is_success:
                    break
            time.sleep(0.2)
        yield Orthanc(aet, port, http_port, proc)
    finally:
        stop(proc)


@contextlib.contextmanager
def running_storescp(folder: Path, aet: str = "STORESCP") -> Iterator[tuple[str, int]]:
    """dcmtk storescp writing every received object into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen(
        [dcmtk("storescp"), "-aet", aet, "-od", str(folder), "+xa", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    try:
        wait_port(port, proc=proc)
        yield aet, port
    finally:
        stop(proc)


def run_dcmtk(
    tool: str, *args: str, tuned: bool = True, check: bool = True
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if tuned:
        env["TCP_NODELAY"] = "1"
    return subprocess.run(
        [dcmtk(tool), *args], capture_output=True, text=True, env=env, check=check, timeout=600
    )


@contextlib.contextmanager
def serving(app: Any, host: str = "127.0.0.1", port: int | None = None) -> Iterator[str]:
    """An ASGI app served by uvicorn in a thread (on a free port unless given); yields its
    base URL."""
    import threading

    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                       lifespan="off")
    )  # fmt: skip
    thread = threading.Thread(target=server.run, name=f"asgi-{port}", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the ASGI app did not start on port {port}")
            time.sleep(0.02)
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
