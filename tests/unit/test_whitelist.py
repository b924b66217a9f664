"""The national whitelist: ANS reference files, tampering, trust anchors, hardening, matching."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from lxml import etree

from drimbox.adapters.trust import pki
from drimbox.adapters.trust.whitelist import (
    ExpectedSigner,
    Whitelist,
    WhitelistDomain,
    WhitelistError,
    WhitelistHolder,
    host_of,
    verify_whitelist,
)
from drimbox.adapters.trust.xmldsig import DS_NS
from drimbox.entrypoints.cli import main

ANS = Path(__file__).parents[3] / "shared/drim-m/data/Référencement DRIMBox/Liste blanche TEST"
SIGNED = ANS / "Liste blanche signée/LISTEBLANCHE_DRIM-M_SIGNEE_TEST.xml"
UNSIGNED = ANS / "Liste blanche non signée/LISTEBLANCHE_DRIM-M_NONSIGNEE_TEST.xml"
# the ANS signer certificate is valid 2026-09-14 .. 2029-09-14; verify inside that window
VALID_AT = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def ans_signed() -> bytes:
    if not SIGNED.is_file():
        pytest.skip(f"ANS sample {SIGNED} is absent")
    return SIGNED.read_bytes()


@pytest.fixture(scope="module")
def ans_anchor(ans_signed: bytes) -> x509.Certificate:
    """The IGC-Santé TEST root, taken from the signed file's own KeyInfo *for this test only*.

    In production the anchor is the IGC-Santé root obtained out of band (ANS site, pinned in
    configuration), never read from the list being verified.
    """
    root = etree.fromstring(ans_signed)
    certificates = [
        x509.load_der_x509_certificate(base64.b64decode(e.text or ""))
        for e in root.iter(f"{{{DS_NS}}}X509Certificate")
    ]
    (self_signed,) = [c for c in certificates if c.subject == c.issuer]
    return self_signed


@pytest.fixture(scope="module")
def dev_ca() -> pki.DevCA:
    return pki.create_ca()[0]


@pytest.fixture(scope="module")
def dev_signer(dev_ca: pki.DevCA) -> pki.Issued:
    return pki.issue(dev_ca, "Liste Blanche DRIM-M dev", kind="signing")


def _pem(path: Path, certificate: x509.Certificate) -> Path:
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


# -- the ANS reference files -----------------------------------------------------------------


def test_ans_signed_list_verifies(ans_signed: bytes, ans_anchor: x509.Certificate) -> None:
    whitelist = verify_whitelist(ans_signed, [ans_anchor], at=VALID_AT)
    assert whitelist.version == "1.0.0"
    assert whitelist.generated_at == datetime(2026, 6, 19, 18, 6, 52, tzinfo=UTC)
    assert whitelist.signing_time == datetime(2026, 9, 17, 8, 27, 36, tzinfo=UTC)
    assert "CN=Liste Blanche DRIM-M" in whitelist.signer_subject
    first = whitelist.domains[0]
    assert first == WhitelistDomain(
        identifier="3",
        box="db3.test.mesimagesmedicales.fr",
        viewer="vi3.test.mesimagesmedicales.fr",
        name="ANS",
        operator_dn="CN=db3.test.mesimagesmedicales.fr,OU=318751275100020,"
        "O=AGENCE DU NUMERIQUE EN SANTE,ST=Paris (75),C=FR",
        support_contact="drim-m@esante.gouv.fr",
        updated_at=datetime(2024, 12, 10, 11, 27, 12, tzinfo=UTC),
    )
    assert len(whitelist.domains) == 17
    assert "db178.test.mesimagesmedicales.fr" in whitelist.hosts("box")
    assert "vi178.test.mesimagesmedicales.fr" in whitelist.hosts("viewer")


def test_ans_signer_can_be_pinned(ans_signed: bytes, ans_anchor: x509.Certificate) -> None:
    ans = ExpectedSigner(common_name="Liste Blanche DRIM-M", organizational_unit="318751275100020")
    verify_whitelist(ans_signed, [ans_anchor], VALID_AT, ans)
    with pytest.raises(WhitelistError) as refused:
        verify_whitelist(
            ans_signed, [ans_anchor], VALID_AT, ExpectedSigner(organizational_unit="1")
        )
    assert refused.value.reason == "signer"


@pytest.mark.parametrize(
    ("at", "reason", "words"),
    [
        (datetime(2029, 9, 15, tzinfo=UTC), "expired", "expired on 2029-09-14"),
        (datetime(2026, 9, 1, tzinfo=UTC), "not-yet-valid", "not valid before 2026-09-14"),
    ],
)
def test_ans_list_outside_signer_validity_is_refused(
    ans_signed: bytes, ans_anchor: x509.Certificate, at: datetime, reason: str, words: str
) -> None:
    with pytest.raises(WhitelistError) as refused:
        verify_whitelist(ans_signed, [ans_anchor], at=at)
    assert refused.value.reason == reason
    assert words in str(refused.value)


def test_ans_unsigned_list_is_refused(ans_anchor: x509.Certificate) -> None:
    with pytest.raises(WhitelistError) as refused:
        verify_whitelist(UNSIGNED.read_bytes(), [ans_anchor], at=VALID_AT)
    assert refused.value.reason == "unsigned"


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"<db>db3.test", b"<db>db4.test"),  # a host
        (b"2026-06-19T18:06:52Z", b"2026-06-19T18:06:53Z"),  # the generation date
        (b"<Denomination>ANS<", b"<Denomination>ANT<"),
        (b"\n    <ListeDomaines>", b"\n     <ListeDomaines>"),  # whitespace is content too
        (b"2026-09-17T08:27:36Z", b"2026-09-17T08:27:37Z"),  # XAdES signing time
        (b'Filter="subtract"', b'Filter="intersect"'),  # the transforms (SignedInfo)
    ],
)
def test_one_byte_tamper_is_refused(
    ans_signed: bytes, ans_anchor: x509.Certificate, old: bytes, new: bytes
) -> None:
    assert ans_signed.count(old) >= 1
    tampered = ans_signed.replace(old, new, 1)
    with pytest.raises(WhitelistError) as refused:
        verify_whitelist(tampered, [ans_anchor], at=VALID_AT)
    assert refused.value.reason in {"tampered", "unsupported"}


def test_tampered_signature_value_is_refused(
    ans_signed: bytes, ans_anchor: x509.Certificate
) -> None:
    root = etree.fromstring(ans_signed)
    value = root.find(f".//{{{DS_NS}}}SignatureValue")
    assert value is not None and value.text
    raw = bytearray(base64.b64decode(value.text))
    raw[10] ^= 1
    value.text = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(WhitelistError) as refused:
        verify_whitelist(etree.tostring(root), [ans_anchor], at=VALID_AT)
    assert refused.value.reason == "tampered"


def test_unsigned_wrapper_content_is_ignored(
    ans_signed: bytes, ans_anchor: x509.Certificate
) -> None:
    """Content slipped into the unsigned part of the signature is never read (no wrapping)."""
    evil = (
        b'<ListeDomaines xmlns="https://github.com/ansforge/DRIM-M_DATA"><Domaine>'
        b"<Identifiant>666</Identifiant><db>evil.example.fr</db></Domaine></ListeDomaines>"
    )
    wrapped = ans_signed.replace(b"</ds:Object>", evil + b"</ds:Object>")
    whitelist = verify_whitelist(wrapped, [ans_anchor], at=VALID_AT)
    assert "evil.example.fr" not in whitelist.hosts()
    second = ans_signed.replace(
        b"</ListeBlancheDRIM-M>",
        b"<ds:Signature xmlns:ds='%s'/>" % DS_NS.encode() + b"</ListeBlancheDRIM-M>",
    )
    with pytest.raises(WhitelistError, match="more than one"):
        verify_whitelist(second, [ans_anchor], at=VALID_AT)


def test_comment_cannot_truncate_a_signed_host(
    ans_signed: bytes, ans_anchor: x509.Certificate
) -> None:
    # comments are outside the signed node-set; they must not cut "db3.test..." to "db3"
    commented = ans_signed.replace(b"<db>db3", b"<db>db3<!-- -->", 1)
    whitelist = verify_whitelist(commented, [ans_anchor], at=VALID_AT)
    assert whitelist.domains[0].box == "db3.test.mesimagesmedicales.fr"
    assert "db3" not in whitelist.hosts()


# -- trust anchors ---------------------------------------------------------------------------


def test_foreign_anchor_is_refused(ans_signed: bytes, dev_ca: pki.DevCA) -> None:
    with pytest.raises(WhitelistError) as refused:
        verify_whitelist(ans_signed, [dev_ca.root], at=VALID_AT)
    assert refused.value.reason == "untrusted"


def test_embedded_chain_alone_is_not_trusted(ans_signed: bytes) -> None:
    with pytest.raises(WhitelistError) as refused:
        verify_whitelist(ans_signed, [], at=VALID_AT)
    assert refused.value.reason == "untrusted"


def test_list_signed_by_another_pki_is_refused(
    dev_signer: pki.Issued, ans_anchor: x509.Certificate
) -> None:
    # the forged list carries its whole chain, root included: still not an anchor
    forged = pki.sign_whitelist(["evil.example.fr"], dev_signer)
    with pytest.raises(WhitelistError) as refused:
        verify_whitelist(forged, [ans_anchor])
    assert refused.value.reason == "untrusted"


def test_expired_dev_signer_is_refused() -> None:
    past = datetime.now(UTC) - timedelta(days=400)
    ca, _ = pki.create_ca(now=past - timedelta(days=1))
    old = pki.issue(ca, "old signer", kind="signing", not_before=past, days=30)
    signed = pki.sign_whitelist(["box.example.fr"], old, generated_at=past + timedelta(days=1))
    with pytest.raises(WhitelistError, match="expired") as refused:
        verify_whitelist(signed, [ca.root])
    assert refused.value.reason == "expired"
    verify_whitelist(signed, [ca.root], at=past + timedelta(days=2))


def test_ca_certificate_cannot_sign(dev_ca: pki.DevCA) -> None:
    as_ca = pki.Issued(dev_ca.intermediate, dev_ca.intermediate_key, (dev_ca.intermediate,))
    with pytest.raises(WhitelistError) as refused:
        verify_whitelist(pki.sign_whitelist(["box.example.fr"], as_ca), [dev_ca.root])
    assert refused.value.reason == "usage"


# -- hardened parsing ------------------------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">]>
<ListeBlancheDRIM-M xmlns="https://github.com/ansforge/DRIM-M_DATA">&lol2;</ListeBlancheDRIM-M>"""
XXE = b"""<?xml version="1.0"?>
<!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<ListeBlancheDRIM-M xmlns="https://github.com/ansforge/DRIM-M_DATA"><ListeDomaines><Domaine>
<db>&xxe;</db></Domaine></ListeDomaines></ListeBlancheDRIM-M>"""


@pytest.mark.parametrize("document", [BILLION_LAUGHS, XXE], ids=["billion-laughs", "xxe"])
def test_dtd_and_entities_are_refused(document: bytes, dev_ca: pki.DevCA) -> None:
    with pytest.raises(WhitelistError) as refused:
        verify_whitelist(document, [dev_ca.root])
    assert refused.value.reason == "dtd"


def test_dtd_in_a_signed_list_is_refused(ans_signed: bytes, ans_anchor: x509.Certificate) -> None:
    with_dtd = ans_signed.replace(b"?><", b'?><!DOCTYPE ListeBlancheDRIM-M SYSTEM "x.dtd"><', 1)
    with pytest.raises(WhitelistError) as refused:
        verify_whitelist(with_dtd, [ans_anchor], at=VALID_AT)
    assert refused.value.reason == "dtd"


def test_not_xml_is_refused(dev_ca: pki.DevCA) -> None:
    with pytest.raises(WhitelistError, match="not well-formed"):
        verify_whitelist(b"<ListeBlancheDRIM-M", [dev_ca.root])


# -- dev-signed lists (round trip) -----------------------------------------------------------


@pytest.mark.parametrize("key_type", ["ec", "rsa"])
def test_dev_signed_list_round_trips(dev_ca: pki.DevCA, key_type: pki.KeyType) -> None:
    signer = pki.issue(dev_ca, "dev list signer", kind="signing", key_type=key_type)
    signed = pki.sign_whitelist(["box1.example.fr", "Box2.Example.FR:8443"], signer)
    whitelist = verify_whitelist(signed, [dev_ca.root])  # now: a fresh signer is valid
    assert whitelist.hosts() == {"box1.example.fr", "box2.example.fr"}
    assert whitelist.signer_subject == signer.certificate.subject.rfc4514_string()
    with pytest.raises(WhitelistError) as refused:
        verify_whitelist(signed.replace(b"box1", b"box9", 1), [dev_ca.root])
    assert refused.value.reason == "tampered"


# -- host matching ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def holder(dev_ca: pki.DevCA, dev_signer: pki.Issued) -> WhitelistHolder:
    domains = [
        WhitelistDomain("1", "box.example.fr", "viewer.example.fr", "Site A", "CN=box.example.fr"),
        WhitelistDomain("2", "10.1.2.3", None, "Site B", "CN=10.1.2.3"),
        WhitelistDomain("3", "2001:db8::1", None, "Site C", "CN=v6"),
    ]
    holder = WhitelistHolder([dev_ca.root])
    assert holder.refresh(pki.sign_whitelist(domains, dev_signer))
    return holder


@pytest.mark.parametrize(
    "candidate",
    [
        "box.example.fr",
        "BOX.Example.FR",
        "box.example.fr.",
        "box.example.fr:8443",
        "https://box.example.fr/dicom-web/studies/1.2.3",
        "https://BOX.example.fr:443/x?y=z",
        "10.1.2.3",
        "https://10.1.2.3:8443/",
        "2001:DB8:0::1",
        "[2001:db8::1]:443",
        "https://[2001:db8::1]/studies",
    ],
)
def test_listed_hosts_are_allowed(holder: WhitelistHolder, candidate: str) -> None:
    assert holder.is_allowed(candidate)


@pytest.mark.parametrize(
    "candidate",
    [
        "evil-box.example.fr",
        "box.example.fr.evil.fr",
        "example.fr",
        "xbox.example.fr",
        "https://box.example.fr@evil.fr/",
        "https://user@box.example.fr/",
        "https://evil.fr\\@box.example.fr/",
        "https://evil.fr\\.box.example.fr/",
        "box.example.fr\t/x",
        "bοx.example.fr",  # Greek omicron
        "10.1.2.4",
        "010.1.2.3",
        "167838211",  # 10.1.2.3 as one number
        "https://[2001:db8::2]/",
        "",
        "https://",
    ],
)
def test_other_hosts_are_refused(holder: WhitelistHolder, candidate: str) -> None:
    assert not holder.is_allowed(candidate)


def test_kind_restricts_matching(holder: WhitelistHolder) -> None:
    assert holder.is_allowed("viewer.example.fr", kind="viewer")
    assert not holder.is_allowed("viewer.example.fr", kind="box")
    assert holder.is_allowed("box.example.fr", kind="box")


def test_host_of_normalizes() -> None:
    assert host_of("HTTPS://Box.Example.fr:8443/a") == "box.example.fr"
    assert host_of("[2001:0db8::0001]") == "2001:db8::1"
    assert host_of("under_score.example.fr") is None


# -- the holder ------------------------------------------------------------------------------


def test_holder_keeps_last_valid_list(
    dev_ca: pki.DevCA, dev_signer: pki.Issued, tmp_path: Path
) -> None:
    holder = WhitelistHolder([dev_ca.root])
    assert not holder.is_allowed("box.example.fr")  # fail closed before the first list
    t0 = datetime.now(UTC)
    good = pki.sign_whitelist(["box.example.fr"], dev_signer, generated_at=t0)
    assert holder.refresh(good)
    first = holder.current
    assert isinstance(first, Whitelist)

    newer = pki.sign_whitelist(["other.example.fr"], dev_signer, generated_at=t0)
    bad_inputs: list[bytes | Path] = [
        newer.replace(b"other", b"evil!", 1),  # tampered
        UNSIGNED.read_bytes() if UNSIGNED.is_file() else b"<x/>",  # unsigned
        BILLION_LAUGHS,
        tmp_path / "missing.xml",
        pki.sign_whitelist(["old.example.fr"], dev_signer, generated_at=t0 - timedelta(days=1)),
    ]
    for bad in bad_inputs:
        assert not holder.refresh(bad)
        assert holder.current is first
        assert holder.is_allowed("box.example.fr")
        assert holder.last_error is not None
    assert holder.last_error is not None and holder.last_error.reason == "rollback"

    path = tmp_path / "list.xml"
    path.write_bytes(pki.sign_whitelist(["new.example.fr"], dev_signer, t0 + timedelta(hours=1)))
    assert holder.refresh(path)
    assert holder.last_error is None
    assert holder.is_allowed("new.example.fr")
    assert not holder.is_allowed("box.example.fr")


# -- CLI -------------------------------------------------------------------------------------


def test_cli_verifies_the_ans_list(
    ans_anchor: x509.Certificate, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    anchors = _pem(tmp_path / "igc-sante-test-root.pem", ans_anchor)
    args = ["whitelist", "verify", str(SIGNED), "--trust-anchors", str(anchors)]
    assert main([*args, "--at", "2026-11-23T12:00:00Z"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["db3.test.mesimagesmedicales.fr", "vi3.test.mesimagesmedicales.fr"]
    assert len(lines) == 34

    assert main([*args, "--at", "2030-01-01T00:00:00+00:00"]) == 2
    assert "refused (expired)" in capsys.readouterr().err


def test_cli_refusals(
    ans_anchor: x509.Certificate,
    dev_ca: pki.DevCA,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if not UNSIGNED.is_file():
        pytest.skip("ANS samples absent")
    anchors = str(_pem(tmp_path / "ans.pem", ans_anchor))
    foreign = str(_pem(tmp_path / "dev.pem", dev_ca.root))
    at = ["--at", "2026-11-23T12:00:00"]
    assert main(["whitelist", "verify", str(UNSIGNED), "--trust-anchors", anchors, *at]) == 2
    assert "refused (unsigned)" in capsys.readouterr().err
    assert main(["whitelist", "verify", str(SIGNED), "--trust-anchors", foreign, *at]) == 2
    assert "refused (untrusted)" in capsys.readouterr().err
    assert main(["whitelist", "verify", str(SIGNED), "--trust-anchors", anchors, "--at", "x"]) == 2
    assert "invalid --at" in capsys.readouterr().err
