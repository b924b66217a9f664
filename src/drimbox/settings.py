"""Typed settings, read once per process: TOML file, then environment, then command line.

Environment variables are ``DRIMBOX_<SECTION>__<KEY>`` (for instance ``DRIMBOX_PACS__PORT=11112``).
A bad value is reported with the dotted key that holds it and where it came from.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

ENV_PREFIX = "DRIMBOX_"


class ConfigError(Exception):
    """A configuration value is missing or invalid; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RemoteAE(_Section):
    """A DICOM peer we may send to (C-MOVE destination)."""

    host: str
    port: int = Field(ge=1, le=65535)


def _check_aet(value: str) -> str:
    # PS3.5 table 6.2-1: AE is at most 16 characters of the default repertoire, no backslash
    if not value or len(value) > 16 or "\\" in value or not value.isprintable():
        raise ValueError("an AE title is 1 to 16 printable characters without backslash")
    return value


def _distinct_ports(**ports: int | None) -> None:
    # the DIMSE workers bind with SO_REUSEPORT: a second listener on the same port would
    # silently take a share of the associations instead of failing
    seen: dict[int, str] = {}
    for name, port in ports.items():
        if not port:
            continue
        if port in seen:
            raise ValueError(f"{name} and {seen[port]} are both {port}")
        seen[port] = name


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_format: bool = Field(default=False, alias="json")


class PacsSettings(_Section):
    """Settings of ``drimbox pacs``."""

    aet: str = "DRIMPACS"
    host: str = "127.0.0.1"
    port: int = Field(default=11112, ge=1, le=65535)
    http_port: int | None = Field(default=8042, ge=0, le=65535)
    storage: Path = Path("./drimbox-pacs")
    allowed_calling_aets: list[str] = Field(default_factory=list)
    move_destinations: dict[str, RemoteAE] = Field(default_factory=dict)
    duplicates: Literal["keep-first", "replace"] = "keep-first"
    workers: int = Field(default=0, ge=0, le=64)
    fsync: bool = True
    max_pdu: int = Field(default=0, ge=0)
    max_associations: int = Field(default=64, ge=1, le=4096)  # per worker process
    network_timeout: float = Field(default=120.0, gt=0)
    logging: LoggingSettings = LoggingSettings()

    _v_aet = field_validator("aet")(classmethod(lambda cls, v: _check_aet(v)))

    @field_validator("allowed_calling_aets")
    @classmethod
    def _v_allowed(cls, values: list[str]) -> list[str]:
        return [_check_aet(v) for v in values]

    @model_validator(mode="after")
    def _v_ports(self) -> PacsSettings:
        _distinct_ports(port=self.port, http_port=self.http_port)
        return self

    @field_validator("move_destinations")
    @classmethod
    def _v_dest(cls, values: dict[str, RemoteAE]) -> dict[str, RemoteAE]:
        for aet in values:
            _check_aet(aet)
        return values


class CallerSettings(_Section):
    """The identity SOAP and JSON calls run as until the trust layer authenticates callers."""

    who: str = "drimbox index default caller"
    kind: Literal["professional", "patient", "system"] = "system"
    rpps: str = ""
    profession: str = ""
    structure: str = ""
    role: str = ""
    patient_id: str = ""


class IndexTrustSettings(_Section):
    """How the index knows its callers."""

    introspection_url: str = ""
    """Bearer tokens (IHE IUA style) checked at the identity provider (RFC 7662)."""
    client_id: str = ""
    client_secret: str = ""
    vihf_trust_anchors: Path | None = None
    """PEM roots VIHF assertion signers must chain to (boxes' ORG certificates)."""
    allow_default_caller: bool = False
    """Calls without credentials run as ``default_caller`` (development only)."""


class IndexTlsSettings(_Section):
    """HTTPS with client certificates: every box calling must present a certificate that
    chains to ``client_trust_anchors`` (the health PKI's roots)."""

    cert: Path | None = None
    key: Path | None = None
    client_trust_anchors: Path | None = None


class IndexSettings(_Section):
    """Settings of ``drimbox index`` (the national index: XDS.b registry + repository)."""

    host: str = "127.0.0.1"
    port: int = Field(default=8100, ge=0, le=65535)
    data_dir: Path = Path("./drimbox-index")
    database_url: str | None = None
    """SQLAlchemy URL; default ``sqlite:///<data_dir>/index.db``. PostgreSQL:
    ``postgresql+psycopg://user@host:5432/db``."""
    repository_unique_id: str = Field(
        default="1.2.250.1.999.1.1.7.1", pattern=r"^[0-2](\.(0|[1-9][0-9]*))+$"
    )
    max_body_bytes: int = Field(default=64 << 20, ge=1024)
    workers: int = Field(default=0, ge=0, le=64)
    """HTTP worker processes sharing the port; 0 = one per core."""
    default_caller: CallerSettings = CallerSettings()
    trust: IndexTrustSettings = IndexTrustSettings()
    tls: IndexTlsSettings = IndexTlsSettings()
    logging: LoggingSettings = LoggingSettings()

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'index.db').resolve()}"


_OID = r"^[0-2](\.(0|[1-9][0-9]*))+$"


class CodeSetting(_Section):
    code: str
    system: str
    display: str = ""


class BoxPacsSettings(_Section):
    """The site's PACS as the box reaches it (C-FIND, C-GET)."""

    aet: str = "DRIMPACS"
    host: str = "127.0.0.1"
    port: int = Field(default=11112, ge=1, le=65535)
    calling_aet: str = "DRIMBOX"
    timeout: float = Field(default=30.0, gt=0)
    dicomweb_url: str = ""
    """The PACS's DICOMweb root (e.g. ``http://orthanc:8042/dicom-web``): when set, images
    are pulled over WADO-RS rather than C-GET."""
    retrieve_associations: int = Field(default=4, ge=1, le=32)
    """C-GET associations opened in parallel to pull one exam."""

    _v_aet = field_validator("aet", "calling_aet")(classmethod(lambda cls, v: _check_aet(v)))


class BoxTlsSettings(_Section):
    """The box's certificate (health PKI server/ORG certificate) and whom it trusts.

    With ``cert`` set, the Source port demands a client certificate chaining to
    ``trust_anchors`` whose common name is one of ``allowed_boxes``, the HTTP port serves
    TLS, and the Conso presents ``cert`` to Source boxes and checks theirs."""

    cert: Path | None = None
    """PEM: the box's certificate then its CA chain."""
    key: Path | None = None
    trust_anchors: Path | None = None
    """PEM CA certificates peers' chains must end at (IGC-Santé roots)."""
    allowed_boxes: list[str] = Field(default_factory=list)
    """Host names (certificate common names) of the boxes that may call the Source."""
    users_https: bool = True
    """Serve the users' port (Conso, viewer, admin) over TLS with ``cert`` too; off when a
    reverse proxy in front of it terminates TLS."""


class WhitelistSettings(_Section):
    """The signed national list of DRIM-M boxes (ANS): which boxes this one talks to."""

    file: Path | None = None
    """The signed list (XML, XAdES enveloped), re-read every ``refresh_seconds``."""
    url: str = ""
    """Where to download it from instead (https); the file then keeps the last valid copy."""
    trust_anchors: Path | None = None
    """PEM roots the signer must chain to (never the certificates inside the list)."""
    signer_cn: str = ""
    """Expected common name of the signer (ANS: ``Liste Blanche DRIM-M``); empty = any."""
    refresh_seconds: float = Field(default=3600.0, gt=0)


class PscSettings(_Section):
    """Pro Santé Connect as a resource server sees it (RFC 7662 token introspection)."""

    introspection_url: str = ""
    """e.g. ``https://auth.bas.psc.esante.gouv.fr/auth/realms/esante-wallet/protocol/
    openid-connect/token/introspect``; empty = WADO-RS requests from other boxes refused."""
    client_id: str = ""
    client_secret: str = ""
    required_acr: str = "eidas1"
    cache_seconds: float = Field(default=30.0, ge=0)


class OidcLoginSettings(_Section):
    """The OpenID provider professionals log in with (Pro Santé Connect, or ``drimbox idp``)."""

    issuer: str = ""
    """e.g. ``https://auth.bas.psc.esante.gouv.fr/auth/realms/esante-wallet``; empty = no
    login page (tools then send their token as a bearer)."""
    client_id: str = ""
    client_secret: str = ""
    redirect_uri: str = ""
    """``{users_url}/conso/callback`` as registered at the provider."""
    acr_values: str = "eidas1"
    scopes: list[str] = Field(default_factory=lambda: ["openid", "scope_all"])
    allow_http: bool = False
    """Plain-HTTP provider off loopback (a development provider on the test network)."""


class ConsoSettings(_Section):
    """The professional's side: history, viewer proxy, import, download."""

    enabled: bool = True
    allowed_sources: list[str] = Field(default_factory=list)
    """Base URLs of the Source boxes images may be fetched from (``https://box.site.fr/
    dicomweb``), until the signed whitelist of boxes replaces this list."""
    cache_max_bytes: int = Field(default=20 << 30, ge=1 << 20)
    """Size of the cache of consulted images under ``data_dir/conso-cache``."""
    ohif_dir: Path | None = None
    """The OHIF viewer's ``dist/`` (``scripts/fetch-ohif``); none = no viewer served."""
    session_idle: float = Field(default=3600.0, gt=0)
    secure_cookie: bool = True
    """Session cookie only over HTTPS (turn off for a plain-HTTP test bench)."""
    source_timeout: float = Field(default=60.0, gt=0)
    users_url: str = ""
    """Base URL the professionals' browsers reach the box at (e.g. behind a reverse proxy);
    empty = the one each request names."""
    oidc: OidcLoginSettings = OidcLoginSettings()
    patient_oidc: OidcLoginSettings = OidcLoginSettings(acr_values="", scopes=["openid"])
    """The patients' provider, for the page where a patient reads who accessed their record
    (``/patient/``); redirect URI ``{users_url}/patient/callback``."""


class SiteSettings(_Section):
    """Who this box publishes as (XDS submission-set metadata, KOS Retrieve Location)."""

    name: str = "Site d'imagerie"
    source_id: str = Field(default="1.2.250.1.999.1.9", pattern=_OID)
    """OID of this DRIMbox: XDSSubmissionSet.sourceId and the KOS Retrieve Location UID."""
    facility_type: CodeSetting = CodeSetting(
        code="SA07", system="1.2.250.1.71.4.2.4", display="Cabinet de radiologie"
    )
    practice_setting: CodeSetting = CodeSetting(
        code="AMBULATOIRE", system="1.2.250.1.213.1.1.4.9", display="Ambulatoire"
    )
    structure_id: str = "1499700367909"
    """National id of the structure (type digit + FINESS/SIRET) when a report names none."""
    lps_homologation: str = "DRIMBOX-DEV"
    """DMP homologation number of the software (VIHF ``LPS_ID_HOMOLOGATION_DMP``)."""


class BoxSettings(_Section):
    """Settings of ``drimbox box`` (the site's DRIMbox: Source now, Conso later)."""

    host: str = "127.0.0.1"
    http_port: int = Field(default=8200, ge=0, le=65535)
    public_url: str = ""
    """Base URL other boxes reach this one at (default ``http://host:http_port``)."""
    data_dir: Path = Path("./drimbox-box")
    source_port: int = Field(default=0, ge=0, le=65535)
    """A port of its own for the Source WADO-RS (what other boxes reach: ``public_url`` then
    points at it), served by ``source_workers`` processes; 0 = on ``http_port``."""
    source_workers: int = Field(default=0, ge=0, le=32)
    """Processes serving ``source_port``; 0 = one per core (at least 2)."""
    mllp_port: int = Field(default=2575, ge=0, le=65535)
    mllp_tls_cert: Path | None = None
    """PEM certificate chain + key (``mllp_tls_key``) to serve MLLP over TLS."""
    mllp_tls_key: Path | None = None
    dicom_aet: str = "DRIMBOX"
    dicom_port: int = Field(default=11113, ge=0, le=65535)
    """Where the PACS sends IOCM rejection notes (C-STORE); 0 = no listener."""
    pacs: BoxPacsSettings = BoxPacsSettings()
    index_url: str = "http://127.0.0.1:8100"
    index_timeout: float = Field(default=30.0, gt=0)
    publish_reports: bool = True
    """Publish the CDA report with the KOS (off when the RIS publishes it itself)."""
    images_retry: float = Field(default=5.0, gt=0)
    images_deadline: float = Field(default=3600.0, gt=0)
    backoff_initial: float = Field(default=1.0, gt=0)
    backoff_max: float = Field(default=300.0, gt=0)
    prefetch: bool = True
    """Pull every published exam into the image cache (consumers then do not wait for the
    PACS's retrieval)."""
    cache_max_bytes: int = Field(default=20 << 30, ge=1 << 20)
    """Size of the image cache under ``data_dir/cache`` (least recently used goes first)."""
    signing_key: Path | None = None
    """PEM private key of the structure's signing certificate (XAdES of submission sets)."""
    signing_chain: Path | None = None
    """PEM certificates: the signing certificate first, then its CA chain."""
    admin_national_ids: list[str] = Field(default_factory=list)
    """National ids (PSC ``SubjectNameID``) of the professionals who may use ``/admin`` from
    another machine, logged in on the Conso or with their token; empty = loopback only."""
    site: SiteSettings = SiteSettings()
    psc: PscSettings = PscSettings()
    tls: BoxTlsSettings = BoxTlsSettings()
    whitelist: WhitelistSettings = WhitelistSettings()
    conso: ConsoSettings = ConsoSettings()
    logging: LoggingSettings = LoggingSettings()

    _v_aet = field_validator("dicom_aet")(classmethod(lambda cls, v: _check_aet(v)))

    @model_validator(mode="after")
    def _v_whitelist(self) -> BoxSettings:
        wl = self.whitelist
        if (wl.file or wl.url) and wl.trust_anchors is None:
            raise ValueError("whitelist needs whitelist.trust_anchors (the roots of its signer)")
        if wl.url and not wl.url.startswith("https://"):
            raise ValueError("whitelist.url must be https")
        return self

    @model_validator(mode="after")
    def _v_tls(self) -> BoxSettings:
        tls = self.tls
        if tls.cert is not None and (tls.key is None or tls.trust_anchors is None):
            raise ValueError("tls.cert needs tls.key and tls.trust_anchors")
        if tls.cert is not None and not self.source_port:
            raise ValueError("mutual TLS between boxes needs source_port (the Source's own port)")
        return self

    @model_validator(mode="after")
    def _v_ports(self) -> BoxSettings:
        _distinct_ports(
            http_port=self.http_port,
            source_port=self.source_port,
            mllp_port=self.mllp_port,
            dicom_port=self.dicom_port,
        )
        return self

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.http_port}").rstrip("/")

    @property
    def wado_base(self) -> str:
        """The Source WADO-RS root (what KOS Retrieve URLs start with)."""
        return f"{self.base_url}/dicomweb"


SettingsT = TypeVar("SettingsT", bound=BaseModel)


def _env_overrides(section: str, environ: Mapping[str, str]) -> dict[str, Any]:
    prefix = f"{ENV_PREFIX}{section.upper()}__"
    out: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(prefix):
            continue
        path = name[len(prefix) :].lower().split("__")
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        leaf: Any = value
        # Lists and tables come as JSON in the environment; scalars stay strings for pydantic.
        if value[:1] in "[{":
            import json

            try:
                leaf = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{name}: not valid JSON ({exc.msg})") from None
        node[path[-1]] = leaf
    return out


def _deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_settings(
    model: type[SettingsT],
    section: str,
    config_file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> SettingsT:
    """Build ``model`` from ``[section]`` of the TOML file, the environment and ``overrides``."""
    data: dict[str, Any] = {}
    if config_file is not None:
        try:
            with config_file.open("rb") as fh:
                data = tomllib.load(fh).get(section, {})
        except OSError as exc:
            raise ConfigError(f"cannot read configuration file {config_file}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{config_file}: invalid TOML ({exc})") from None
    data = _deep_merge(data, _env_overrides(section, os.environ if environ is None else environ))
    data = _deep_merge(data, {k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in (section, *err["loc"]))
            problems.append(f"{key}: {err['msg']}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None


class IdpClient(_Section):
    """A relying party registered at ``drimbox idp``."""

    client_id: str = Field(min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$")
    client_secret: str = Field(min_length=1, max_length=255)
    redirect_uris: list[str] = Field(default_factory=list)
    """Exact URIs the browser may be sent back to; none = back channel only (a Source box
    that only introspects tokens)."""

    @field_validator("redirect_uris")
    @classmethod
    def _v_redirect_uris(cls, values: list[str]) -> list[str]:
        from urllib.parse import urlsplit

        for uri in values:
            parts = urlsplit(uri)
            # RFC 6749 §3.1.2: absolute, no fragment
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment:
                raise ValueError(f"{uri!r}: an absolute http(s) URL without fragment expected")
        return values


class IdpSettings(_Section):
    """Settings of ``drimbox idp`` (development OpenID provider playing Pro Santé Connect)."""

    host: str = "127.0.0.1"
    port: int = Field(default=8300, ge=1, le=65535)
    issuer: str = Field(default="", pattern=r"^(https?://[^?#\s]+)?$")
    """Public URL of the realm; default ``http://host:port/auth/realms/esante-wallet``."""
    data_dir: Path = Path("./drimbox-idp")
    """Where the signing key is kept (``idp-signing-key.pem``, mode 0600)."""
    clients: list[IdpClient] = Field(default_factory=list)
    access_token_lifetime: int = Field(default=600, ge=10, le=86400)
    refresh_token_lifetime: int = Field(default=1800, ge=60, le=30 * 86400)
    people_file: Path | None = None
    """JSON ``{"professionals": [...], "patients": [...]}`` replacing the built-in people."""
    logging: LoggingSettings = LoggingSettings()

    @field_validator("clients")
    @classmethod
    def _v_clients(cls, values: list[IdpClient]) -> list[IdpClient]:
        ids = [client.client_id for client in values]
        for client_id in ids:
            if ids.count(client_id) > 1:
                raise ValueError(f"client_id {client_id!r} is registered twice")
        return values

    @property
    def issuer_url(self) -> str:
        return (self.issuer or f"http://{self.host}:{self.port}/auth/realms/esante-wallet").rstrip(
            "/"
        )
