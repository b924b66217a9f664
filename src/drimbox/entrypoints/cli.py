"""The ``drimbox`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from drimbox import __version__
from drimbox.settings import (
    BoxSettings,
    ConfigError,
    IdpSettings,
    IndexSettings,
    PacsSettings,
    load_settings,
)


def _move_destination(text: str) -> tuple[str, dict[str, Any]]:
    aet, sep, address = text.partition("=")
    host, _, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected AET=host:port, got {text!r}")
    return aet, {"host": host, "port": int(port)}


def _add_pacs(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("pacs", help="run the embedded PACS (DIMSE + DICOMweb over one store)")
    p.add_argument("--config", type=Path, help="TOML configuration file (section [pacs])")
    p.add_argument("--aet", help="our AE title")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="DIMSE port")
    p.add_argument("--http-port", type=int, help="DICOMweb port (0 = no DICOMweb)")
    p.add_argument("--storage", type=Path, help="storage folder")
    p.add_argument(
        "--allowed-aet",
        action="append",
        dest="allowed_calling_aets",
        help="calling AE title allowed to associate (repeat; default: any)",
    )
    p.add_argument(
        "--move-destination",
        action="append",
        type=_move_destination,
        metavar="AET=HOST:PORT",
        help="C-MOVE destination (repeat)",
    )
    p.add_argument("--duplicates", choices=["keep-first", "replace"])
    p.add_argument("--workers", type=int, help="DIMSE worker processes (0 = two per core)")
    p.add_argument("--no-fsync", action="store_true", help="do not fsync (tests only)")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--log-json", action="store_true", help="one JSON log object per line")


def _pacs_address(text: str) -> dict[str, Any]:
    aet, sep, address = text.partition("@")
    host, _, port = address.rpartition(":")
    if not sep or not aet or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected AET@host:port, got {text!r}")
    return {"aet": aet, "host": host, "port": int(port)}


def _add_box(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("box", help="run the site's DRIMbox (Source: RIS -> PACS -> index)")
    p.add_argument("--config", type=Path, help="TOML configuration file (section [box])")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--http-port", type=int, help="HTTP port (admin page; 0 = none)")
    p.add_argument("--public-url", help="base URL other boxes reach this one at")
    p.add_argument("--data-dir", type=Path, help="folder of the queues and archive")
    p.add_argument("--mllp-port", type=int, help="HL7 MLLP port for the RIS")
    p.add_argument("--dicom-port", type=int, help="DICOM port for IOCM notes (0 = off)")
    p.add_argument("--pacs", type=_pacs_address, metavar="AET@HOST:PORT", help="the site's PACS")
    p.add_argument("--index-url", help="base URL of the national index")
    p.add_argument("--no-publish-reports", action="store_true",
                   help="the RIS publishes reports itself: publish only the KOS")  # fmt: skip
    p.add_argument("--signing-key", type=Path, help="PEM key of the structure's signing cert")
    p.add_argument("--signing-chain", type=Path, help="PEM signing certificate + CA chain")
    p.add_argument("--images-retry", type=float, help="seconds between PACS lookups")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--log-json", action="store_true", help="one JSON log object per line")


def _add_synth(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("synth", help="generate synthetic patient histories (DICOM, HL7, CDA)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--patients", type=int, default=10)
    p.add_argument("--sites", type=int, default=3)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--size", choices=["realistic", "medium", "small"], default="realistic")
    p.add_argument("--messages", choices=["ORU", "MDM", "both"], default="both")
    p.add_argument("--ct-only", type=int, metavar="SLICES",
                   help="only one CT series of SLICES 512x512 slices (benchmarks)")  # fmt: skip


def _add_send(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("send", help="C-STORE DICOM files or folders to a DICOM peer")
    p.add_argument("paths", type=Path, nargs="+")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--aet", required=True, help="the peer's AE title")
    p.add_argument("--calling-aet", default="DRIMBOX")
    p.add_argument("--wait", type=float, default=0.0, help="seconds to wait for the peer")


def _add_index(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("index", help="run the national index (XDS.b registry + repository)")
    p.add_argument("--config", type=Path, help="TOML configuration file (section [index])")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="HTTP port (default 8100)")
    p.add_argument("--data-dir", type=Path, help="folder of the default SQLite database")
    p.add_argument(
        "--database-url", help="SQLAlchemy URL (sqlite:///... or postgresql+psycopg://...)"
    )
    p.add_argument("--repository-unique-id", help="our XDS repositoryUniqueId (an OID)")
    p.add_argument("--max-body-bytes", type=int, help="largest accepted SOAP request")
    p.add_argument("--workers", type=int, help="HTTP worker processes (0 = one per core)")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--log-json", action="store_true", help="one JSON log object per line")


def _add_idp(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("idp", help="run the development OpenID provider (plays Pro Santé Connect)")
    p.add_argument("--config", type=Path, help="TOML configuration file (section [idp])")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="HTTP port (default 8300)")
    p.add_argument("--issuer", help="public URL of the realm (default http://host:port/auth/...)")
    p.add_argument("--data-dir", type=Path, help="folder of the signing key")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--log-json", action="store_true", help="one JSON log object per line")


def _add_whitelist(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("whitelist", help="verify the signed national DRIM-M whitelist")
    actions = p.add_subparsers(dest="action", required=True)
    v = actions.add_parser("verify", help="verify a whitelist and print its hosts, one a line")
    v.add_argument("file", type=Path)
    v.add_argument("--trust-anchors", type=Path, required=True, help="PEM bundle of trusted roots")
    v.add_argument("--at", metavar="ISO-TIME", help="validation time (default: now)")
    v.add_argument("--kind", choices=["box", "viewer"], help="only these hosts")
    v.add_argument("--signer-cn", help="required CN of the list signer")
    v.add_argument("--signer-ou", help="required OU (structure id) of the list signer")
    s = actions.add_parser("sign", help="write a whitelist signed by a dev `pki issue` signer")
    s.add_argument("--signer", type=Path, required=True, help="folder of the signer files")
    s.add_argument("--name", required=True, help="NAME given to `pki issue --kind signing`")
    s.add_argument("--host", action="append", dest="hosts", required=True, help="box (repeat)")
    s.add_argument("--out", type=Path, required=True)


def _add_pki(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("pki", help="development certificate authority shaped like IGC-Santé")
    actions = p.add_subparsers(dest="action", required=True)
    i = actions.add_parser("init", help="create a root and an intermediate CA")
    i.add_argument("--out", type=Path, required=True)
    i.add_argument("--key-type", choices=["ec", "rsa"], default="ec")
    c = actions.add_parser("issue", help="issue an end-entity certificate")
    c.add_argument("--ca", type=Path, required=True, help="folder written by `pki init`")
    c.add_argument("--name", required=True, help="file name stem (and CN without --dns)")
    c.add_argument("--dns", action="append", help="DNS subject alternative name (repeat)")
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--kind", choices=["server", "client", "signing"], default="server")
    c.add_argument("--key-type", choices=["ec", "rsa"], default="ec")
    c.add_argument("--organisation", default="drimbox dev", help="subject O")
    c.add_argument("--structure-id", default="399999999900001", help="subject OU (FINESS/SIRET)")
    c.add_argument("--days", type=int, default=397)


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="run the whole network on this machine (index, idp, 3 sites)")
    p.add_argument("--data-dir", type=Path, default=Path("./drimbox-demo"))
    p.add_argument("--host", default="localhost", help="host name in every URL (default localhost)")
    p.add_argument("--base-port", type=int, default=None,
                   help="first of the ports (default 8400, or those of the previous start; "
                        "0 = any free ports)")  # fmt: skip
    p.add_argument("--patients", type=int, default=20, help="synthetic patients (first start)")
    p.add_argument("--size", choices=["realistic", "medium", "small"], default="medium",
                   help="image sizes of the synthetic history (first start)")  # fmt: skip
    p.add_argument("--reset", action="store_true", help="start again from an empty folder")
    t = sub.add_parser("dev-token", help="print a bearer token for a user of a running demo")
    t.add_argument("--demo", type=Path, default=Path("./drimbox-demo"), help="its --data-dir")
    t.add_argument("--user", required=True, help="login (see demo.json users)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="drimbox", description=__doc__)
    parser.add_argument("--version", action="version", version=f"drimbox {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_pacs(sub)
    _add_synth(sub)
    _add_send(sub)
    _add_index(sub)
    _add_box(sub)
    _add_idp(sub)
    _add_whitelist(sub)
    _add_pki(sub)
    _add_demo(sub)
    return parser


def _pacs(args: argparse.Namespace) -> int:
    from drimbox.entrypoints.pacs import run_pacs

    overrides: dict[str, Any] = {
        "aet": args.aet,
        "host": args.host,
        "port": args.port,
        "http_port": args.http_port,
        "storage": args.storage,
        "allowed_calling_aets": args.allowed_calling_aets,
        "move_destinations": dict(args.move_destination) if args.move_destination else None,
        "duplicates": args.duplicates,
        "workers": args.workers,
        "fsync": False if args.no_fsync else None,
    }
    logging_over = {"level": args.log_level, "json": True if args.log_json else None}
    overrides["logging"] = {k: v for k, v in logging_over.items() if v is not None}
    settings = load_settings(PacsSettings, "pacs", args.config, overrides)
    return run_pacs(settings)


def _synth(args: argparse.Namespace) -> int:
    from drimbox.synth import generate_history, write_ct_study

    if args.ct_only:
        files = write_ct_study(args.out, slices=args.ct_only, seed=args.seed)
        print(f"{len(files)} CT slices written to {args.out}")
        return 0
    manifest = generate_history(
        args.out, args.patients, args.sites, args.seed, size=args.size, message_type=args.messages
    )
    exams = sum(1 for _ in manifest.exams)
    print(f"{len(manifest.patients)} patients, {exams} exams written to {args.out}")
    return 0


def _send(args: argparse.Namespace) -> int:
    from drimbox.adapters.dimse.scu import send_files

    files = [f for p in args.paths for f in (sorted(p.rglob("*.dcm")) if p.is_dir() else [p])]
    report = send_files(files, args.host, args.port, args.aet, args.calling_aet, args.wait)
    for path, reason in report.failed:
        print(f"failed: {path}: {reason}", file=sys.stderr)
    print(f"{report.sent} sent, {len(report.failed)} failed")
    return 0 if not report.failed else 1


def _index(args: argparse.Namespace) -> int:
    from drimbox.entrypoints.index import run_index

    overrides: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "data_dir": args.data_dir,
        "database_url": args.database_url,
        "repository_unique_id": args.repository_unique_id,
        "max_body_bytes": args.max_body_bytes,
        "workers": args.workers,
    }
    logging_over = {"level": args.log_level, "json": True if args.log_json else None}
    overrides["logging"] = {k: v for k, v in logging_over.items() if v is not None}
    return run_index(load_settings(IndexSettings, "index", args.config, overrides))


def _box(args: argparse.Namespace) -> int:
    from drimbox.entrypoints.box import run_box

    overrides: dict[str, Any] = {
        "host": args.host,
        "http_port": args.http_port,
        "public_url": args.public_url,
        "data_dir": args.data_dir,
        "mllp_port": args.mllp_port,
        "dicom_port": args.dicom_port,
        "pacs": args.pacs,
        "index_url": args.index_url,
        "publish_reports": False if args.no_publish_reports else None,
        "signing_key": args.signing_key,
        "signing_chain": args.signing_chain,
        "images_retry": args.images_retry,
    }
    logging_over = {"level": args.log_level, "json": True if args.log_json else None}
    overrides["logging"] = {k: v for k, v in logging_over.items() if v is not None}
    return run_box(load_settings(BoxSettings, "box", args.config, overrides))


def _idp(args: argparse.Namespace) -> int:
    from drimbox.entrypoints.idp import run_idp

    overrides: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "issuer": args.issuer,
        "data_dir": args.data_dir,
    }
    logging_over = {"level": args.log_level, "json": True if args.log_json else None}
    overrides["logging"] = {k: v for k, v in logging_over.items() if v is not None}
    return run_idp(load_settings(IdpSettings, "idp", args.config, overrides))


def _whitelist(args: argparse.Namespace) -> int:
    from drimbox.entrypoints.trust_cli import run_whitelist

    return run_whitelist(args)


def _pki(args: argparse.Namespace) -> int:
    from drimbox.entrypoints.trust_cli import run_pki

    return run_pki(args)


def _demo(args: argparse.Namespace) -> int:
    from drimbox.entrypoints.demo import run_demo
    from drimbox.entrypoints.dev_token import run_dev_token

    if args.command == "dev-token":
        return run_dev_token(args.demo, args.user)
    if args.base_port is not None and not 0 <= args.base_port <= 65000:
        print("drimbox: --base-port must be between 0 and 65000", file=sys.stderr)
        return 2
    if args.patients < 1:
        print("drimbox: --patients must be at least 1", file=sys.stderr)
        return 2
    return run_demo(args.data_dir, args.host, args.base_port, args.patients, args.size,
                    args.reset)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "pacs":
            return _pacs(args)
        if args.command == "synth":
            return _synth(args)
        if args.command == "send":
            return _send(args)
        if args.command == "index":
            return _index(args)
        if args.command == "box":
            return _box(args)
        if args.command == "idp":
            return _idp(args)
        if args.command == "whitelist":
            return _whitelist(args)
        if args.command == "pki":
            return _pki(args)
        if args.command in ("demo", "dev-token"):
            return _demo(args)
    except ConfigError as exc:
        print(f"drimbox: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
