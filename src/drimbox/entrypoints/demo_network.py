"""The demo network's plan: ports, certificates, people and the configuration files of every
process ``drimbox demo`` starts, and the ``demo.json`` that describes it to scripts.

Everything is written under the data folder and reused by the next start: the CA, the
certificates, the OpenID clients' secrets and the ports (the published manifests carry the
Source URLs, so a restart must serve them at the same place).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding

from drimbox.adapters.trust.pki import DevCA, Issued, init_ca, issue, sign_whitelist, write_issued

PASSWORD = "demo"  # noqa: S105 - printed for the demo's users
"""Every demo user's password (printed with the logins: this is a demo)."""
SITE_IDS = ("a", "b", "c")
WHITELIST_SIGNER = "Liste Blanche DRIM-M (demo)"


@dataclass
class SitePorts:
    users: int
    source: int
    mllp: int
    dicom: int
    pacs: int
    pacs_http: int


@dataclass
class Ports:
    index: int
    idp: int
    sites: list[SitePorts]

    @classmethod
    def from_base(cls, base: int) -> Ports:
        """``base`` index, ``base+1`` idp, then ten ports per site from ``base+10``."""
        sites = [SitePorts(*(base + 10 * (i + 1) + k for k in range(6))) for i in range(3)]
        return cls(base, base + 1, sites)

    @classmethod
    def free(cls) -> Ports:
        """Ports the system says are free now (tests; the next start reuses them)."""
        held: list[socket.socket] = []

        def one() -> int:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            held.append(s)  # held until all are chosen, so no two are the same
            return int(s.getsockname()[1])

        try:
            ports = cls(one(), one(), [SitePorts(*(one() for _ in range(6))) for _ in range(3)])
        finally:
            for s in held:
                s.close()
        return ports

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Ports:
        return cls(data["index"], data["idp"], [SitePorts(**s) for s in data["sites"]])

    def all(self) -> list[int]:
        return [self.index, self.idp, *(p for s in self.sites for p in asdict(s).values())]


@dataclass
class DemoSite:
    id: str
    """``a``, ``b``, ``c``."""
    synth_id: str
    """The synthetic site's folder name (``ch-nantes-erdre``)."""
    name: str
    finess: str
    structure_id: str
    oid_root: str
    pacs_aet: str
    radiologist: dict[str, str]
    ports: SitePorts


@dataclass
class Network:
    """Where everything is, derived from the data folder, the host and the ports."""

    data_dir: Path
    host: str
    ports: Ports
    sites: list[DemoSite] = field(default_factory=list)
    secrets: dict[str, str] = field(default_factory=dict)

    @property
    def bind(self) -> str:
        return "127.0.0.1" if self.host == "localhost" else self.host

    def url(self, port: int, scheme: str = "http") -> str:
        return f"{scheme}://{self.host}:{port}"

    @property
    def index_url(self) -> str:
        return self.url(self.ports.index, "https")

    @property
    def issuer(self) -> str:
        return f"{self.url(self.ports.idp)}/auth/realms/esante-wallet"

    @property
    def pki(self) -> Path:
        return self.data_dir / "pki"

    def folder(self, name: str) -> Path:
        return self.data_dir / name

    def box_host(self, site: DemoSite) -> str:
        """The name in a box's certificate, the one the whitelist and the trails show."""
        return f"box-{site.id}.demo.drimbox"


def load_secrets(data_dir: Path) -> dict[str, str]:
    """The OpenID clients' secrets, made once (mode 0600) and kept across restarts."""
    path = data_dir / "secrets.json"
    known: dict[str, str] = json.loads(path.read_text()) if path.is_file() else {}
    names = ["index", "dev-token", *(f"{k}-{s}" for s in SITE_IDS for k in ("box", "portal"))]
    missing = [n for n in names if n not in known]
    if missing:
        known.update({n: secrets.token_urlsafe(24) for n in missing})
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(known, fh, indent=1)
    return known


def make_pki(net: Network) -> None:
    """A CA shaped like IGC-Santé; TLS certificates for the index and each box, a signing
    certificate per site (VIHF and XAdES), a client certificate for scripts, and the signed
    whitelist listing the boxes. Made once: a restart keeps them (and their trust)."""
    folder = net.pki
    if (folder / "whitelist.xml").is_file():
        return
    made = (folder / "ca" / "ca.key").is_file()
    ca = DevCA.load(folder / "ca") if made else init_ca(folder / "ca")
    names = [net.host] if net.host == "localhost" else [net.host, "localhost"]
    write_issued(issue(ca, "index", ["index.demo.drimbox", *names]), folder, "index")
    for site in net.sites:
        write_issued(
            issue(ca, f"box-{site.id}", [net.box_host(site), *names]), folder, f"box-{site.id}"
        )
        signer = issue(
            ca, site.name, kind="signing", organisation=site.name, structure_id=site.structure_id
        )
        write_issued(signer, folder, f"signer-{site.id}")
    write_issued(issue(ca, "scripts", ["scripts.demo.drimbox"], kind="client"), folder, "client")
    (folder / "root.crt").write_bytes(ca.root.public_bytes(Encoding.PEM))
    wl_signer: Issued = issue(ca, WHITELIST_SIGNER, kind="signing")
    hosts = [*(net.box_host(s) for s in net.sites), net.host]
    (folder / "whitelist.xml").write_bytes(sign_whitelist(hosts, wl_signer))


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, Path):
        return json.dumps(str(value))
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def write_toml(path: Path, section: str, data: dict[str, Any]) -> Path:
    """``data`` as ``[section]`` with nested tables; enough for our settings."""
    lines: list[str] = []

    def table(name: str, values: dict[str, Any]) -> None:
        lines.append(f"[{name}]")
        nested = {k: v for k, v in values.items() if isinstance(v, dict)}
        for key, value in values.items():
            if key not in nested and value is not None:
                lines.append(f"{key} = {_toml(value)}")
        lines.append("")
        for key, value in nested.items():
            table(f"{name}.{key}", value)

    table(section, data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


def idp_config(net: Network) -> Path:
    clients: list[dict[str, Any]] = [
        {"client_id": "index", "client_secret": net.secrets["index"]},
        {
            "client_id": "dev-token",
            "client_secret": net.secrets["dev-token"],
            "redirect_uris": [DEV_TOKEN_REDIRECT],
        },
    ]
    for site in net.sites:
        users = net.url(site.ports.users)
        clients.append(
            {
                "client_id": f"box-{site.id}",
                "client_secret": net.secrets[f"box-{site.id}"],
                "redirect_uris": [f"{users}/conso/callback"],
            }
        )
        clients.append(
            {
                "client_id": f"portal-{site.id}",
                "client_secret": net.secrets[f"portal-{site.id}"],
                "redirect_uris": [f"{users}/patient/callback"],
            }
        )
    folder = net.folder("idp")
    # clients are an array of tables: TOML by hand would be longer than JSON-in-TOML is clear
    text = [
        "[idp]",
        f"host = {_toml(net.bind)}",
        f"port = {net.ports.idp}",
        f"issuer = {_toml(net.issuer)}",
        f"data_dir = {_toml(folder)}",
        f"people_file = {_toml(folder / 'people.json')}",
        "access_token_lifetime = 3600",
        "",
    ]
    for c in clients:
        text += ["[[idp.clients]]", *(f"{k} = {_toml(v)}" for k, v in c.items()), ""]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "idp.toml"
    path.write_text("\n".join(text))
    return path


DEV_TOKEN_REDIRECT = "http://127.0.0.1/drimbox-dev-token"  # noqa: S105 - a URL
"""Never served: ``drimbox dev-token`` reads the code from the redirect it is not following."""


def index_config(net: Network) -> Path:
    folder = net.folder("index")
    return write_toml(
        folder / "index.toml",
        "index",
        {
            "host": net.bind,
            "port": net.ports.index,
            "data_dir": folder,
            "workers": 1,
            "trust": {
                "introspection_url": f"{net.issuer}/protocol/openid-connect/token/introspect",
                "client_id": "index",
                "client_secret": net.secrets["index"],
                "vihf_trust_anchors": net.pki / "root.crt",
            },
            "tls": {
                "cert": net.pki / "index-fullchain.pem",
                "key": net.pki / "index.key",
                "client_trust_anchors": net.pki / "root.crt",
            },
        },
    )


def box_config(net: Network, site: DemoSite, ohif_dir: Path | None) -> Path:
    folder = net.folder(f"site-{site.id}")
    p, pki, users = site.ports, net.pki, net.url(site.ports.users)
    introspect = f"{net.issuer}/protocol/openid-connect/token/introspect"

    def oidc(client: str) -> dict[str, Any]:
        area = "conso" if client == "box" else "patient"
        return {
            "issuer": net.issuer,
            "client_id": f"{client}-{site.id}",
            "client_secret": net.secrets[f"{client}-{site.id}"],
            "redirect_uri": f"{users}/{area}/callback",
            "allow_http": True,
        }

    patient_oidc = {**oidc("portal"), "acr_values": "", "scopes": ["openid"]}
    return write_toml(
        folder / "box.toml",
        "box",
        {
            "host": net.bind,
            "http_port": p.users,
            "source_port": p.source,
            "source_workers": 1,
            "public_url": net.url(p.source, "https"),
            "data_dir": folder / "box",
            "mllp_port": p.mllp,
            "dicom_port": p.dicom,
            "dicom_aet": f"DRIMBOX{site.id.upper()}",
            "index_url": net.index_url,
            "prefetch": False,
            "images_retry": 1.0,
            # the site's radiologist runs its box: the admin page from any machine, with a token
            "admin_national_ids": ["8" + site.radiologist["rpps"]],
            "signing_key": pki / f"signer-{site.id}.key",
            "signing_chain": pki / f"signer-{site.id}-fullchain.pem",
            "pacs": {
                "aet": site.pacs_aet,
                "host": "127.0.0.1",
                "port": p.pacs,
                "calling_aet": f"DRIMBOX{site.id.upper()}",
                "dicomweb_url": f"http://127.0.0.1:{p.pacs_http}",
            },
            "site": {
                "name": site.name,
                "source_id": f"{site.oid_root}.9",
                "structure_id": site.structure_id,
            },
            "psc": {
                "introspection_url": introspect,
                "client_id": f"box-{site.id}",
                "client_secret": net.secrets[f"box-{site.id}"],
            },
            # the users' port stays plain HTTP on the loopback (a hospital's reverse proxy
            # terminates TLS); every box-box and box-index call is mutual TLS
            "tls": {
                "cert": pki / f"box-{site.id}-fullchain.pem",
                "key": pki / f"box-{site.id}.key",
                "trust_anchors": pki / "root.crt",
                "users_https": False,
            },
            "whitelist": {
                "file": pki / "whitelist.xml",
                "trust_anchors": pki / "root.crt",
                "signer_cn": WHITELIST_SIGNER,
            },
            "conso": {
                "secure_cookie": False,
                "users_url": users,
                "ohif_dir": ohif_dir,
                "oidc": oidc("box"),
                "patient_oidc": patient_oidc,
            },
        },
    )


def pacs_storage(net: Network, site: DemoSite) -> Path:
    return net.folder(f"site-{site.id}") / "pacs"


def describe(
    net: Network, patients: list[dict[str, Any]], users: list[dict[str, Any]], extra: dict[str, Any]
) -> dict[str, Any]:
    """The ``demo.json`` document."""
    idx = net.index_url
    return {
        "index": {
            "base_url": idx,
            "iti18_url": f"{idx}/registry",
            "iti41_url": f"{idx}/repository",
            "iti43_url": f"{idx}/repository",
            "iti57_url": f"{idx}/registry",
            "api_url": f"{idx}/api",
            "health_url": f"{idx}/health",
        },
        "idp": {
            "issuer": net.issuer,
            "discovery_url": f"{net.issuer}/.well-known/openid-configuration",
        },
        "tls": {
            "ca_bundle": str(net.pki / "root.crt"),
            "client_cert": str(net.pki / "client-fullchain.pem"),
            "client_key": str(net.pki / "client.key"),
        },
        "sites": [
            {
                "id": s.id,
                "name": s.name,
                "finess": s.finess,
                "box_url": net.url(s.ports.source, "https"),
                "conso_url": f"{net.url(s.ports.users)}/conso/",
                "patient_url": f"{net.url(s.ports.users)}/patient/",
                "admin_url": f"{net.url(s.ports.users)}/admin",
                "dicomweb_url": f"{net.url(s.ports.source, 'https')}/dicomweb",
                "proxy_dicomweb_url": f"{net.url(s.ports.users)}/conso/dicomweb",
                "mllp": {"host": net.host, "port": s.ports.mllp},
                "pacs": {
                    "aet": s.pacs_aet,
                    "host": net.host,
                    "port": s.ports.pacs,
                    "dicomweb_url": net.url(s.ports.pacs_http),
                },
            }
            for s in net.sites
        ],
        "users": users,
        "patients": patients,
        **extra,
    }
