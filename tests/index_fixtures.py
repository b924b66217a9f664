"""The index served over HTTP by uvicorn in a thread, on SQLite or on a throw-away
PostgreSQL database (created with a random name, dropped afterwards)."""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
import uvicorn

from drimbox.adapters.storage.index_db import IndexDb, open_index_db
from drimbox.entrypoints.index import create_index_app, index_tls_options
from drimbox.settings import IndexSettings
from tests.peers import free_port, wait_port

PG_ADMIN_URL = os.environ.get(
    "DRIMBOX_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REPOSITORY = "1.2.250.1.999.1.1.7.1"


def postgres_available() -> bool:
    try:
        engine = sa.create_engine(PG_ADMIN_URL)
        with engine.connect():
            pass
        engine.dispose()
        return True
    except Exception:
        return False


@contextlib.contextmanager
def database_url(backend: str, folder: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{folder / 'index.db'}"
        return
    if not postgres_available():
        if os.environ.get("CI"):  # CI machines have a PostgreSQL server: its absence is a failure
            pytest.fail(f"no PostgreSQL at {PG_ADMIN_URL}")
        pytest.skip(f"no PostgreSQL at {PG_ADMIN_URL}")
    name = f"drimbox_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield str(sa.make_url(PG_ADMIN_URL).set(database=name))
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@dataclass
class IndexServer:
    url: str
    db: IndexDb
    client: httpx.Client
    repository: str = REPOSITORY


@contextlib.contextmanager
def running_index(url: str, port: int | None = None, **settings: object) -> Iterator[IndexServer]:
    db = open_index_db(url)
    # tests that are not about authentication call as the default caller; those that are
    # pass their own ``trust`` section
    settings.setdefault("trust", {"allow_default_caller": True})
    config = IndexSettings.model_validate({"repository_unique_id": REPOSITORY, **settings})
    port = port or free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_index_app(db, config),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            access_log=False,
            **index_tls_options(config),
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_port(port)
    # with a certificate (issued for localhost), mutual TLS: the fixture's own client is plain
    base = f"https://localhost:{port}" if config.tls.cert else f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=30, verify=False) as client:
            yield IndexServer(base, db, client)
    finally:
        server.should_exit = True
        thread.join(10)
        db.close()
