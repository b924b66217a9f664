"""National index under load (issue: the national index).

    python benchmarks/index_load.py [--entries 1000000] [--patients N] [--backend sqlite|postgresql]

Bulk-loads ``--entries`` document entries (one KOS + one report per exam, each with its
submission set, associations, event codes, reference ids and a 1 KiB stand-in content) for
``--patients`` patients (default entries / 5) straight into the tables with SQL, then starts
``drimbox index`` as a separate process on that database and measures over HTTP:

  * ITI-18 FindDocuments (LeafClass, status Approved) for one random patient: p50 / p99;
  * ITI-41 submissions of report + KOS (50 KB + 100 KB, MTOM), 1 and 4 clients: per second;
  * database size after the run.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# the benchmark's boxes publish without signing keys: the index runs them as its default
# caller (a development setting, never a default)
os.environ.setdefault("DRIMBOX_INDEX__TRUST__ALLOW_DEFAULT_CALLER", "true")

from tests import xds_messages as m
from tests.index_fixtures import PG_ADMIN_URL
from tests.peers import free_port, stop, wait_port

from drimbox.adapters.storage import index_models as t
from drimbox.adapters.storage.index_db import open_index_db
from drimbox.adapters.xds import iti41_provide_and_register, mtom, soap
from drimbox.domain.identifiers import nir_key

APPROVED = m.APPROVED
LOADED_AT = datetime(2024, 1, 1, 12, tzinfo=UTC)
REPOSITORY = "1.2.250.1.999.1.1.7.1"
WORKERS = int(os.environ.get("DRIMBOX_BENCH_INDEX_WORKERS", "0"))  # 0: one per core


def patient_id(i: int) -> str:
    nir = f"18501{i:08d}"
    return f"{nir}{nir_key(nir)}^^^&{m.INS_OID}&ISO^NH"


def _doc_rows(pid: str, kind: str, exam: int, ss_uuid: str, template: str) -> dict[str, list[Any]]:
    entry_uuid, uid = f"urn:uuid:{uuid.uuid4()}", f"2.25.{uuid.uuid4().int}"
    study, day = f"2.25.{exam}", f"20{10 + exam % 15:02d}{1 + exam % 12:02d}{1 + exam % 28:02d}"
    kos = kind == "kos"
    doc = {
        "patient_id": pid,
        "entry_uuid": entry_uuid,
        "logical_id": entry_uuid,
        "version": 1,
        "unique_id": uid,
        "status": APPROVED,
        "mime_type": "application/dicom" if kos else "text/xml",
        "class_code": "31" if kos else "10",
        "class_scheme": "1.2.250.1.213.1.1.4.1",
        "type_code": "IMG-KOS" if kos else "18748-4",
        "type_scheme": "1.2.250.1.213.1.1.4.12" if kos else "2.16.840.1.113883.6.1",
        "format_code": "1.2.840.10008.5.1.4.1.1.88.59" if kos else "urn:ihe:iti:xds-sd:pdf:2008",
        "format_scheme": "1.2.840.10008.2.6.1" if kos else "1.3.6.1.4.1.19376.1.2.3",
        "practice_setting_code": "AMBULATOIRE",
        "practice_setting_scheme": "1.2.250.1.213.1.1.4.9",
        "hcft_code": "SA07",
        "hcft_scheme": "1.2.250.1.71.4.2.4",
        "creation_time": day + "120000",
        "service_start_time": day + "100000",
        "service_stop_time": day + "103000",
        "author_person": m.RPPS_AUTHOR,
        "author_institution": m.INSTITUTION,
        "legal_authenticator": m.RPPS_AUTHOR,
        "source_patient_id": pid,
        "title": kind,
        "hash": "0" * 40,
        "size": 1024,
        "repository_unique_id": REPOSITORY,
        "submission_set_uuid": ss_uuid,
        "hidden_by_patient": False,
        "ebrim": template.replace("@UUID@", entry_uuid)
        .replace("@UID@", uid)
        .replace("@PID@", pid.replace("&", "&amp;")),
    }
    key = {"patient_id": pid, "entry_uuid": entry_uuid}
    modality = ("CT", "MR", "US", "CR", "MG")[exam % 5]
    return {
        "doc": [doc],
        "ev": [
            {**key, "code": modality, "scheme": "1.2.250.1.213.1.1.5.618"},
            {**key, "code": "63337009", "scheme": "1.2.250.1.213.2.5"},
        ],
        "conf": [{**key, "code": "N", "scheme": "2.16.840.1.113883.5.25"}],
        "ref": [
            {
                **key,
                "reference_id": f"{exam}^^^&1.2.250.1.999.2&ISO^urn:ihe:iti:xds:2013:accession",
            },
            {
                **key,
                "reference_id": f"{study}^^^&1.2.3.4.5.6&ISO^urn:ihe:iti:xds:2016:studyInstanceUID",
            },
        ],
        "content": [
            {
                "patient_id": pid,
                "unique_id": uid,
                "mime_type": doc["mime_type"],
                "content": b"\0" * 1024,
            }
        ],
        "assoc": [
            {
                "patient_id": pid,
                "entry_uuid": f"urn:uuid:{uuid.uuid4()}",
                "association_type": "urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember",
                "source_uuid": ss_uuid,
                "target_uuid": entry_uuid,
                "submission_set_uuid": ss_uuid,
                "ebrim": "<Association/>",
            }
        ],
    }


def _exam_rows(pid: str, exam: int, templates: dict[str, str]) -> Iterator[dict[str, list[Any]]]:
    ss_uuid = f"urn:uuid:{uuid.uuid4()}"
    yield {
        "ss": [
            {
                "patient_id": pid,
                "entry_uuid": ss_uuid,
                "unique_id": f"2.25.{uuid.uuid4().int}",
                "source_id": "1.2.250.1.999.1",
                "submission_time": "20240101120000",
                "content_type_code": "04",
                "content_type_scheme": "1.2.250.1.213.2.2",
                "author_person": m.RPPS_AUTHOR,
                "status": APPROVED,
                "received_at": LOADED_AT,
                "ebrim": templates["ss"].replace("@PID@", pid.replace("&", "&amp;")),
            }
        ]
    }
    for kind in ("kos", "report"):
        yield _doc_rows(pid, kind, exam, ss_uuid, templates[kind])


TABLES = {
    "ss": t.SubmissionSetRow,
    "doc": t.DocumentEntryRow,
    "ev": t.EventCodeRow,
    "conf": t.ConfidentialityCodeRow,
    "ref": t.ReferenceIdRow,
    "content": t.DocumentContentRow,
    "assoc": t.AssociationRow,
}


def _templates() -> dict[str, str]:
    """The ebRIM text the server itself stores for a KOS, a report and a submission set."""
    kos = m.Doc("@PID@", "KOS", unique_id="@UID@")
    report = m.Doc("@PID@", "CR", kind="report", unique_id="@UID@")
    package = mtom.unpack(*m.provide_and_register("@PID@", [kos, report]))
    sub = iti41_provide_and_register.parse(
        soap.read_envelope(soap.parse_xml(package.root)).body, package.attachments
    )
    by_kind = {e.symbolic_id: e.ebrim.replace(e.entry_uuid, "@UUID@") for e in sub.entries}
    return {"kos": by_kind["KOS"], "report": by_kind["CR"], "ss": sub.submission_set.ebrim}


def bulk_load(url: str, entries: int, patients: int, batch: int = 4000) -> float:
    """Insert ``entries`` entries; returns rows/s of the load."""
    engine = open_index_db(url).engine
    templates, pending, rows, start = _templates(), {k: [] for k in TABLES}, 0, time.perf_counter()

    def flush() -> None:
        with engine.begin() as conn:
            for key, model in TABLES.items():
                if pending[key]:
                    conn.execute(sa.insert(model.__table__), pending[key])  # type: ignore[arg-type]
                    pending[key].clear()

    for exam in range(entries // 2):
        for part in _exam_rows(patient_id(exam % patients), exam, templates):
            for key, values in part.items():
                pending[key] += values
                rows += len(values)
        if exam % batch == batch - 1:
            flush()
            print(f"\r  loaded {2 * (exam + 1):,} entries", end="", file=sys.stderr, flush=True)
    flush()
    print(file=sys.stderr)
    engine.dispose()
    return rows / (time.perf_counter() - start)


@contextmanager
def index_server(url: str) -> Iterator[httpx.Client]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "drimbox",
        "index",
        "--database-url",
        url,
        "--port",
        str(port),
        "--repository-unique-id",
        REPOSITORY,
        "--log-level",
        "WARNING",
        "--workers",
        str(WORKERS),
    ]
    proc = subprocess.Popen(cmd)
    try:
        wait_port(port, 120, proc)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            yield client
    finally:
        stop(proc)


def find_latencies(client: httpx.Client, patients: int, count: int) -> tuple[list[float], float]:
    times, found = [], 0
    for _ in range(count):
        pid = patient_id(random.randrange(patients))
        query = {
            "$XDSDocumentEntryPatientId": [f"'{pid}'"],
            "$XDSDocumentEntryStatus": [f"('{APPROVED}')"],
        }
        start = time.perf_counter()
        answer = m.post(client, "/registry", m.stored_query(m.FIND_DOCUMENTS, query))
        times.append(time.perf_counter() - start)
        assert answer.status() == "Success", answer.error_contexts()
        found += len(answer.extrinsic())
    return times, found / count


def _prepare(patients: int, count: int) -> list[tuple[str, bytes]]:
    """Report + KOS submissions, built before the clock starts: the server is measured."""
    messages = []
    for _ in range(count):
        pid = patient_id(random.randrange(patients))
        kos = m.Doc(pid, "KOS", content=os.urandom(100_000))
        report = m.Doc(
            pid, "CR", kind="report", content=os.urandom(50_000), study_uid=kos.study_uid
        )
        messages.append(m.provide_and_register(pid, [kos, report]))
    return messages


SUCCESS = b"urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"


def _submit_many(base: str, messages: list[tuple[str, bytes]], failures: list[bytes]) -> None:
    with httpx.Client(base_url=base, timeout=60) as client:
        for content_type, body in messages:
            resp = client.post("/repository", content=body, headers={"content-type": content_type})
            # the full answer is checked by the integration tests; here only its status
            if resp.status_code != 200 or SUCCESS not in resp.content:
                failures.append(resp.content[:500])


def submissions_per_second(client: httpx.Client, patients: int, count: int, clients: int) -> float:
    base = str(client.base_url)
    per_client = count // clients
    batches = [_prepare(patients, per_client) for _ in range(clients)]
    failures: list[bytes] = []
    threads = [
        threading.Thread(target=_submit_many, args=(base, batch, failures)) for batch in batches
    ]
    start = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - start
    if failures:
        raise RuntimeError(f"{len(failures)} submissions failed, first: {failures[0]!r}")
    return per_client * clients / elapsed


def db_size(url: str, folder: Path) -> int:
    if url.startswith("sqlite"):
        return sum(p.stat().st_size for p in folder.glob("index.db*"))
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        size = int(
            conn.execute(sa.text("SELECT pg_database_size(current_database())")).scalar_one()
        )
    engine.dispose()
    return size


@contextmanager
def database(backend: str, folder: Path, keep: bool) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{folder / 'index.db'}"
        return
    name = f"drimbox_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        if not keep:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def run(args: argparse.Namespace, folder: Path) -> list[tuple[str, str]]:
    patients = args.patients or max(1, args.entries // 5)
    with database(args.backend, folder, args.keep) as url:
        load_start = time.perf_counter()
        rate = bulk_load(url, args.entries, patients)
        load_time = time.perf_counter() - load_start
        with index_server(url) as client:
            find_latencies(client, patients, 20)  # warm-up
            times, per_query = find_latencies(client, patients, args.queries)
            one = submissions_per_second(client, patients, args.submissions, 1)
            four = submissions_per_second(client, patients, args.submissions, 4)
        size = db_size(url, folder)
    q = statistics.quantiles(times, n=100)
    return [
        ("backend", args.backend),
        ("entries / patients", f"{args.entries:,} / {patients:,}"),
        ("bulk load", f"{load_time:.1f} s ({rate:,.0f} rows/s)"),
        ("ITI-18 FindDocuments p50 / p99", f"{q[49] * 1000:.1f} / {q[98] * 1000:.1f} ms"),
        ("  entries per answer (mean)", f"{per_query:.1f}"),
        ("ITI-41 report+KOS, 1 client", f"{one:.1f} submissions/s"),
        ("ITI-41 report+KOS, 4 clients", f"{four:.1f} submissions/s"),
        ("database size", f"{size / 2**20:,.1f} MiB"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--patients", type=int, default=0, help="default: entries / 5")
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--submissions", type=int, default=200)
    parser.add_argument("--keep", action="store_true", help="keep the PostgreSQL database")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="drimbox-index-bench-") as tmp:
        rows = run(args, Path(tmp))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
