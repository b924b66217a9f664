"""The index knows its callers only from credentials that hold: a bearer token checked at the
identity provider (IHE IUA style), or a VIHF assertion signed by a box whose chain ends at the
configured anchors. Without either, nothing is answered (and nothing is written)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from lxml import etree

from drimbox.adapters.trust.pki import DevCA, create_ca, issue
from drimbox.adapters.trust.vihf import build_assertion, security_header
from drimbox.adapters.xds.client import RegistryRejected, XdsClient
from tests.fake_psc import FakePsc, running_fake_psc
from tests.index_fixtures import IndexServer, database_url, running_index
from tests.unit.test_vihf import CLAIMS

PATIENT = "248000000000070^^^&1.2.250.1.213.1.4.10&ISO^NH"


@pytest.fixture(scope="module")
def cas(tmp_path_factory: pytest.TempPathFactory) -> tuple[DevCA, DevCA, Path]:
    trusted, _ = create_ca()
    foreign, _ = create_ca()
    anchors = tmp_path_factory.mktemp("anchors") / "roots.pem"
    anchors.write_bytes(trusted.root.public_bytes(Encoding.PEM))
    return trusted, foreign, anchors


@pytest.fixture(scope="module")
def psc() -> Iterator[FakePsc]:
    with running_fake_psc() as p:
        yield p


@pytest.fixture(scope="module")
def index(
    tmp_path_factory: pytest.TempPathFactory, cas: tuple[DevCA, DevCA, Path], psc: FakePsc
) -> Iterator[IndexServer]:
    folder = tmp_path_factory.mktemp("index-auth")
    trust = {"introspection_url": psc.introspection_url, "client_id": "drimbox",
             "client_secret": "secret", "vihf_trust_anchors": cas[2]}  # fmt: skip
    with database_url("sqlite", folder) as url, running_index(url, trust=trust) as server:
        yield server


def _security(ca: DevCA, **changes: object) -> etree._Element:
    org = issue(ca, "DRIMBOX ORG", kind="signing")
    claims = dataclasses.replace(CLAIMS, **changes)  # type: ignore[arg-type]
    assertion = build_assertion(claims, key=org.key, chain=org.chain,
                                issued_at=datetime.now(UTC))  # fmt: skip
    return security_header(assertion)


def test_no_credentials_no_answer(index: IndexServer) -> None:
    with (
        XdsClient(index.url) as client,
        pytest.raises(RegistryRejected, match="FailedAuthentication"),
    ):
        client.find_documents(PATIENT)
    r = httpx.get(f"{index.url}/api/patients/{PATIENT.split('^')[0]}/history")
    assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"


def test_a_professional_token_is_accepted_and_a_bad_one_refused(
    index: IndexServer, psc: FakePsc
) -> None:
    ins = PATIENT.split("^")[0]
    ok = httpx.get(f"{index.url}/api/patients/{ins}/history",
                   headers={"Authorization": f"Bearer {psc.issue()}"})  # fmt: skip
    assert ok.status_code == 200, ok.text
    revoked = psc.issue()
    psc.revoke(revoked)
    for token in (revoked, "forged-token", "a b"):
        r = httpx.get(f"{index.url}/api/patients/{ins}/history",
                      headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        assert r.status_code == 401, token


def test_vihf_from_a_trusted_box_only(index: IndexServer, cas: tuple[DevCA, DevCA, Path]) -> None:
    trusted, foreign, _ = cas
    with XdsClient(index.url) as client:
        with client.acting_as(lambda: _security(trusted)):
            assert client.find_documents(PATIENT) == []  # accepted: an empty history
        with client.acting_as(lambda: _security(foreign)), pytest.raises(RegistryRejected):
            client.find_documents(PATIENT)


def test_a_tampered_assertion_is_refused(
    index: IndexServer, cas: tuple[DevCA, DevCA, Path]
) -> None:
    trusted, _, _ = cas

    def tampered() -> etree._Element:
        header = _security(trusted)
        for value in header.iter("{*}AttributeValue"):
            if value.text == CLAIMS.structure_id:
                value.text = "499700999999999"  # another structure, after signing
        return header

    with XdsClient(index.url) as client, client.acting_as(tampered), \
            pytest.raises(RegistryRejected):  # fmt: skip
        client.find_documents(PATIENT)
