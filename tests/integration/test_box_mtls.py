"""Mutual TLS between boxes: the Source port answers only a box with a certificate from the
configured anchors whose name is among the allowed boxes (development PKI shaped like the
health PKI: root -> intermediate -> box certificates)."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pydicom.uid import generate_uid

from drimbox.entrypoints.box import SourceBox
from tests.box_pki import Pki
from tests.fake_psc import FakePsc, running_fake_psc
from tests.index_fixtures import IndexServer
from tests.integration.test_source_publication import box_settings, running_box, store
from tests.integration.test_source_wado import publish_directly, with_pacs
from tests.peers import Pacs, free_port, running_pacs, wait_port
from tests.source_exams import Exam


@pytest.fixture(scope="module")
def psc() -> Iterator[FakePsc]:
    with running_fake_psc() as p:
        yield p


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory, exams: list[Exam]) -> Iterator[Pacs]:
    with running_pacs(tmp_path_factory.mktemp("pacs") / "store") as p:
        store(exams[0].files(), p.port, p.aet)
        yield p


@dataclass
class Source:
    box: SourceBox
    url: str
    kos: str


@pytest.fixture(scope="module")
def source(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, pacs: Pacs, index: IndexServer,
    signer_files: tuple[Path, Path], psc: FakePsc, exams: list[Exam],
) -> Iterator[Source]:  # fmt: skip
    port = free_port()
    settings = box_settings(
        tmp_path_factory.mktemp("box-a"), pacs.aet, pacs.port, index.url, signer_files,
        prefetch=False, source_port=port, source_workers=1, conso={"enabled": False},
        public_url=f"https://localhost:{port}",
        psc={"introspection_url": psc.introspection_url, "client_id": "drimbox",
             "client_secret": "secret"},
        tls={"cert": pki.folder / "box-a-fullchain.pem", "key": pki.folder / "box-a.key",
             "trust_anchors": pki.folder / "root.crt", "allowed_boxes": ["box-b.example"]},
    )  # fmt: skip
    exam = exams[0]
    series = exam.record["series"][0]
    with running_box(with_pacs(settings, dicomweb_url=pacs.dicomweb)) as box:
        kos = generate_uid()
        publish_directly(
            box, kos, exam.study_uid, series["series_uid"], series["sop_instance_uids"]
        )
        wait_port(port)
        yield Source(box, f"https://localhost:{port}", kos)


def _series_url(source: Source, exam: Exam) -> str:
    series = exam.record["series"][0]["series_uid"]
    return f"{source.url}/dicomweb/studies/{exam.study_uid}/series/{series}"


def test_a_listed_box_with_a_valid_token_gets_the_images(
    source: Source, pki: Pki, psc: FakePsc, exams: list[Exam]
) -> None:
    headers = {"Authorization": f"Bearer {psc.issue()}", "KOS-SOPInstanceUID": source.kos}
    with httpx.Client(verify=pki.ctx("box-b"), timeout=60) as client:
        r = client.get(_series_url(source, exams[0]), headers=headers)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("multipart/related")


@pytest.mark.parametrize("who", [None, "intruder"])
def test_no_certificate_or_a_foreign_one_fails_the_handshake(
    source: Source, pki: Pki, psc: FakePsc, exams: list[Exam], who: str | None
) -> None:
    headers = {"Authorization": f"Bearer {psc.issue()}", "KOS-SOPInstanceUID": source.kos}
    with (
        httpx.Client(verify=pki.ctx(who), timeout=30) as client,
        pytest.raises(httpx.TransportError),
    ):
        client.get(_series_url(source, exams[0]), headers=headers)


def test_a_trusted_but_unlisted_box_is_refused(
    source: Source, pki: Pki, psc: FakePsc, exams: list[Exam]
) -> None:
    headers = {"Authorization": f"Bearer {psc.issue()}", "KOS-SOPInstanceUID": source.kos}
    with httpx.Client(verify=pki.ctx("rogue"), timeout=30) as client:
        r = client.get(_series_url(source, exams[0]), headers=headers)
    assert r.status_code == 403
    assert "rogue.example" in r.json()["detail"]


def test_the_box_itself_is_checked_by_the_caller(source: Source, pki: Pki) -> None:
    # a client that does not trust the health PKI's root refuses the box's certificate
    with httpx.Client(verify=ssl.create_default_context(), timeout=30) as client, \
            pytest.raises(httpx.ConnectError):  # fmt: skip
        client.get(f"{source.url}/dicomweb")


def test_tls_without_source_port_is_a_configuration_error(pki: Pki, tmp_path: Path) -> None:
    from drimbox.settings import BoxSettings, ConfigError, load_settings

    env = {"DRIMBOX_BOX__TLS__CERT": str(pki.folder / "box-a-fullchain.pem"),
           "DRIMBOX_BOX__TLS__KEY": str(pki.folder / "box-a.key"),
           "DRIMBOX_BOX__TLS__TRUST_ANCHORS": str(pki.folder / "root.crt")}  # fmt: skip
    with pytest.raises(ConfigError, match="source_port"):
        load_settings(BoxSettings, "box", None, environ=env)


@pytest.mark.parametrize(("listing", "status"), [("whitelist.xml", 200),
                                                 ("whitelist-tampered.xml", 403)])  # fmt: skip
def test_the_signed_whitelist_names_the_boxes(
    tmp_path: Path, pki: Pki, pacs: Pacs, index: IndexServer, signer_files: tuple[Path, Path],
    psc: FakePsc, exams: list[Exam], listing: str, status: int,
) -> None:  # fmt: skip
    """No configured list of boxes: the signed whitelist decides; a tampered one is refused
    (and with no earlier valid list, nobody gets in)."""
    port = free_port()
    settings = box_settings(
        tmp_path / "box", pacs.aet, pacs.port, index.url, signer_files, prefetch=False,
        source_port=port, source_workers=1, conso={"enabled": False},
        public_url=f"https://localhost:{port}",
        psc={"introspection_url": psc.introspection_url, "client_id": "drimbox",
             "client_secret": "secret"},
        tls={"cert": pki.folder / "box-a-fullchain.pem", "key": pki.folder / "box-a.key",
             "trust_anchors": pki.folder / "root.crt"},
        whitelist={"file": pki.folder / listing, "trust_anchors": pki.folder / "root.crt",
                   "signer_cn": "Liste Blanche DRIM-M"},
    )  # fmt: skip
    exam = exams[0]
    series = exam.record["series"][0]
    with running_box(with_pacs(settings, dicomweb_url=pacs.dicomweb)) as box:
        kos = generate_uid()
        publish_directly(
            box, kos, exam.study_uid, series["series_uid"], series["sop_instance_uids"]
        )
        wait_port(port)
        headers = {"Authorization": f"Bearer {psc.issue()}", "KOS-SOPInstanceUID": kos}
        url = f"https://localhost:{port}/dicomweb/studies/{exam.study_uid}/series/{series['series_uid']}/metadata"
        with httpx.Client(verify=pki.ctx("box-b"), timeout=60) as client:
            assert client.get(url, headers=headers).status_code == status
        with httpx.Client(verify=pki.ctx("rogue"), timeout=60) as client:
            assert client.get(url, headers=headers).status_code == 403


def test_the_index_demands_a_box_certificate(tmp_path: Path, pki: Pki) -> None:
    from drimbox.adapters.xds.client import XdsClient
    from drimbox.domain.errors import PeerUnavailable
    from tests.index_fixtures import database_url, running_index

    tls = {"cert": pki.folder / "box-a-fullchain.pem", "key": pki.folder / "box-a.key",
           "client_trust_anchors": pki.folder / "root.crt"}  # fmt: skip
    patient = "248000000000070^^^&1.2.250.1.213.1.4.10&ISO^NH"
    with database_url("sqlite", tmp_path) as url, running_index(url, tls=tls) as index:
        assert index.url.startswith("https://localhost:")
        with XdsClient(index.url, client=httpx.Client(verify=pki.ctx("box-b"), timeout=30)) as c, \
                c.on_behalf_of(index.token):  # fmt: skip
            assert c.find_documents(patient) == []
        for who in (None, "intruder"):  # no certificate, or one from a CA nobody trusts
            with XdsClient(index.url, client=httpx.Client(verify=pki.ctx(who), timeout=30)) as c, \
                    c.on_behalf_of(index.token), pytest.raises(PeerUnavailable):  # fmt: skip
                c.find_documents(patient)
