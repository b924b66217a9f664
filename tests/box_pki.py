"""A development PKI shaped like the health PKI (root -> intermediate -> box certificates)
for tests of mutual TLS between boxes: box-a (localhost), box-b, a trusted but unlisted
rogue box, and an intruder whose certificate comes from a CA nobody configured."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from drimbox.adapters.trust.pki import create_ca, issue, sign_whitelist, write_issued


@dataclass
class Pki:
    folder: Path

    def ctx(self, name: str | None, anchors: str = "root.crt") -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.folder / anchors))
        if name is not None:
            context.load_cert_chain(
                self.folder / f"{name}-fullchain.pem", self.folder / f"{name}.key"
            )
        return context


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca, _ = create_ca()
    for name, host in (("box-a", "localhost"), ("box-b", "box-b.example"),
                       ("rogue", "rogue.example")):  # fmt: skip
        write_issued(issue(ca, name, [host]), folder, name)
    (folder / "root.crt").write_bytes(ca.root.public_bytes(Encoding.PEM))
    # the signed whitelist of boxes: box-b and box-a (localhost) listed, rogue not
    signer = issue(ca, "Liste Blanche DRIM-M", kind="signing")
    signed = sign_whitelist(["box-b.example", "localhost"], signer)
    (folder / "whitelist.xml").write_bytes(signed)
    (folder / "whitelist-tampered.xml").write_bytes(
        signed.replace(b"box-b.example", b"rogue.example")
    )
    foreign, _ = create_ca()  # a CA nobody configured
    write_issued(issue(foreign, "intruder", ["box-b.example"]), folder, "intruder")
    return Pki(folder)
