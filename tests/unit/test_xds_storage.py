"""The index store: migrations agree with the models, constraints hold without the services."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from drimbox.adapters.storage.index_db import IndexDb, migrate, open_index_db
from drimbox.adapters.storage.index_models import Base
from drimbox.adapters.xds import iti41_provide_and_register, mtom, soap
from drimbox.domain import xds
from drimbox.domain.access import AccessEvent, ActorKind, CallerIdentity
from drimbox.services.index.register import check_documents, complete_submission
from tests import xds_messages as m
from tests.index_fixtures import database_url


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[IndexDb]:
    with database_url(request.param, tmp_path) as url:
        store = open_index_db(url)
        yield store
        store.close()


def test_migrations_match_models_and_are_idempotent(db: IndexDb) -> None:
    migrate(db.engine)  # a second upgrade is a no-op
    with db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        assert (
            conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one() == "0001"
        )


def _ready(patient: str, doc: m.Doc) -> xds.Submission:
    package = mtom.unpack(*m.provide_and_register(patient, [doc]))
    sub = iti41_provide_and_register.parse(
        soap.read_envelope(soap.parse_xml(package.root)).body, package.attachments
    )
    assert check_documents(sub) == []
    complete_submission(sub, "1.2.3")
    return sub


def _event(patient: str) -> AccessEvent:
    return AccessEvent(
        patient, datetime.now(UTC), "test", "granted", CallerIdentity("t", ActorKind.SYSTEM)
    )


def test_unique_id_constraint_holds_below_the_services(db: IndexDb) -> None:
    """Two racing submissions of one uniqueId: the database refuses the second."""
    patient = m.new_ins()
    doc = m.Doc(patient)
    db.register(_ready(patient, doc), [], _event(patient))
    with pytest.raises(xds.XdsError) as err:
        db.register(_ready(patient, m.Doc(patient, unique_id=doc.unique_id)), [], _event(patient))
    assert err.value.code is xds.ErrorCode.DUPLICATE_UNIQUE_ID
    assert len(db.entries(unique_ids=[doc.unique_id])) == 1
    assert [e.action for e in db.access_log(patient)] == ["test"]  # the failed one left no line


def test_concurrent_replacement_fails_as_a_whole(db: IndexDb) -> None:
    patient = m.new_ins()
    old = _ready(patient, m.Doc(patient, "Old"))
    db.register(old, [], _event(patient))
    target = old.entries[0].entry_uuid
    db.register(_ready(patient, m.Doc(patient, "A")), [target], _event(patient))
    late = _ready(patient, m.Doc(patient, "B"))
    with pytest.raises(xds.XdsError, match="no longer Approved"):
        db.register(late, [target], _event(patient))
    assert db.entries(unique_ids=[late.entries[0].unique_id]) == []


def test_inline_base64_documents_are_accepted() -> None:
    patient = m.new_ins()
    doc = m.Doc(patient)
    ctype, body = m.provide_and_register(patient, [doc])
    package = mtom.unpack(ctype, body)
    inline = package.root.replace(
        f'<xop:Include xmlns:xop="http://www.w3.org/2004/08/xop/include" href="cid:{doc.symbol}@test"/>'.encode(),
        base64.b64encode(doc.content),
    )
    sub = iti41_provide_and_register.parse(
        soap.read_envelope(soap.parse_xml(inline), m.ITI41).body, {}
    )
    assert list(sub.documents.values()) == [doc.content]


def test_index_settings(tmp_path: Path) -> None:
    from drimbox.settings import ConfigError, IndexSettings, load_settings

    env = {"DRIMBOX_INDEX__PORT": "9000", "DRIMBOX_INDEX__DEFAULT_CALLER__KIND": "professional"}
    settings = load_settings(IndexSettings, "index", overrides={"data_dir": tmp_path}, environ=env)
    assert settings.port == 9000 and settings.default_caller.kind == "professional"
    assert settings.db_url == f"sqlite:///{tmp_path / 'index.db'}"
    with pytest.raises(ConfigError, match=r"index\.repository_unique_id"):
        load_settings(
            IndexSettings, "index", overrides={"repository_unique_id": "not an oid"}, environ={}
        )
