"""The index served over HTTP by uvicorn in a thread, on SQLite or on a throw-away
PostgreSQL database (created with a random name, dropped afterwards).

It knows its callers as in production: professionals by their bearer token, introspected at
a fake Pro Santé Connect, and boxes by their signed VIHF assertions; no default caller."""

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
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from drimbox.adapters.storage.index_db import IndexDb, open_index_db
from drimbox.entrypoints.index import create_index_app, index_tls_options
from drimbox.settings import IndexSettings
from tests.fake_psc import FakePsc, running_fake_psc
from tests.peers import free_port, wait_port

PG_ADMIN_URL = os.environ.get(
    "DRIMBOX_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REPOSITORY = "1.2.250.1.999.1.1.7.1"
PROFESSIONAL = "899700367909"
"""The professional (national id: ``8`` + RPPS) the fixture's client calls as: the author of
the documents of ``tests/xds_messages.py``, so the author-only rules let them update and read
what they published."""
TOKEN_LIFETIME = 3600  # outlives any module: a token that expires mid-module is a false failure


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


def vihf_roots(chain: Path, out: Path) -> Path:
    """Write the root of the PEM ``chain`` (a box's signing chain, leaf first) to ``out``: the
    ``vihf_trust_anchors`` of an index that trusts that box's assertions."""
    root = x509.load_pem_x509_certificates(chain.read_bytes())[-1]
    out.write_bytes(root.public_bytes(Encoding.PEM))
    return out


@dataclass
class IndexServer:
    url: str
    db: IndexDb
    client: httpx.Client
    """Raw HTTP to the index; with ``token`` as its bearer when there is one."""
    psc: FakePsc | None = None
    """The identity provider the index introspects tokens at (``None``: unknown here)."""
    token: str = ""
    """A live token of :data:`PROFESSIONAL` issued by ``psc``."""
    repository: str = REPOSITORY

    def issue(self, national_id: str) -> str:
        """A live token of another professional."""
        if self.psc is None:
            raise RuntimeError("this index was given its own trust settings: no PSC here")
        return self.psc.issue(national_id, lifetime=TOKEN_LIFETIME)


@contextlib.contextmanager
def running_index(
    url: str,
    port: int | None = None,
    *,
    psc: FakePsc | None = None,
    vihf_trust_anchors: Path | None = None,
    **settings: object,
) -> Iterator[IndexServer]:
    """The index on ``url``. Unless ``trust`` is given (the tests about authentication), it
    introspects tokens at ``psc`` (a fake PSC started here when not given) and accepts the
    VIHF assertions of boxes whose signing chain ends at ``vihf_trust_anchors``; the fixture's
    client then calls with a token of :data:`PROFESSIONAL`."""
    with contextlib.ExitStack() as stack:
        if "trust" not in settings:
            psc = psc or stack.enter_context(running_fake_psc())
            settings["trust"] = {
                "introspection_url": psc.introspection_url, "client_id": psc.client_id,
                "client_secret": psc.client_secret, "vihf_trust_anchors": vihf_trust_anchors,
            }  # fmt: skip
        elif vihf_trust_anchors is not None:
            raise TypeError("with a trust section, its vihf_trust_anchors")
        db = open_index_db(url)
        stack.callback(db.close)
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

        def stop() -> None:
            server.should_exit = True
            thread.join(10)

        stack.callback(stop)
        wait_port(port)
        # with a certificate (issued for localhost), mutual TLS: the fixture's own client is
        # plain (no client certificate)
        base = f"https://localhost:{port}" if config.tls.cert else f"http://127.0.0.1:{port}"
        token = psc.issue(PROFESSIONAL, lifetime=TOKEN_LIFETIME) if psc is not None else ""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        client = stack.enter_context(
            httpx.Client(base_url=base, timeout=30, verify=False, headers=headers)
        )
        yield IndexServer(base, db, client, psc, token)
