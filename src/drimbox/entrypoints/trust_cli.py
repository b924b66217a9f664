"""``drimbox whitelist`` and ``drimbox pki``: the trust commands (argument parsing is in cli.py).

Exit status: 0 success, 2 refused or bad input (the reason on stderr).
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import UTC, datetime

from drimbox.adapters.trust import pki
from drimbox.adapters.trust.chain import load_trust_anchors
from drimbox.adapters.trust.errors import TrustError
from drimbox.adapters.trust.whitelist import ExpectedSigner, verify_whitelist

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class _UsageError(Exception):
    pass


def run_whitelist(args: argparse.Namespace) -> int:
    try:
        if args.action == "verify":
            return _verify(args)
        return _sign(args)
    except TrustError as exc:
        print(f"drimbox whitelist: refused ({exc.reason}): {exc}", file=sys.stderr)
    except (OSError, ValueError, _UsageError) as exc:
        print(f"drimbox whitelist: {exc}", file=sys.stderr)
    return 2


def run_pki(args: argparse.Namespace) -> int:
    try:
        if args.action == "init":
            ca = pki.init_ca(args.out, args.key_type)
            print(f"CA written to {args.out}; trust anchor: {args.out / 'root.crt'}")
            print(f"root: {ca.root.subject.rfc4514_string()}")
            return 0
        return _issue(args)
    except (OSError, ValueError, _UsageError) as exc:
        print(f"drimbox pki: {exc}", file=sys.stderr)
    return 2


def _verify(args: argparse.Namespace) -> int:
    at = _parse_time(args.at) if args.at else None
    anchors = load_trust_anchors(args.trust_anchors)
    expected = None
    if args.signer_cn or args.signer_ou:
        expected = ExpectedSigner(args.signer_cn, args.signer_ou)
    whitelist = verify_whitelist(args.file.read_bytes(), anchors, at, expected)
    seen: set[str] = set()
    for entry in whitelist.entries:
        if entry.host not in seen and args.kind in (None, entry.kind):
            seen.add(entry.host)
            print(entry.host)
    return 0


def _sign(args: argparse.Namespace) -> int:
    signer = pki.Issued.load(args.signer, _safe_name(args.name))
    args.out.write_bytes(pki.sign_whitelist(args.hosts, signer))
    print(f"whitelist of {len(args.hosts)} hosts written to {args.out}")
    return 0


def _issue(args: argparse.Namespace) -> int:
    name = _safe_name(args.name)
    ca = pki.DevCA.load(args.ca)
    issued = pki.issue(
        ca,
        name,
        args.dns or [],
        args.kind,
        organisation=args.organisation,
        structure_id=args.structure_id,
        key_type=args.key_type,
        days=args.days,
    )
    pki.write_issued(issued, args.out, name)
    print(f"{args.kind} certificate {issued.certificate.subject.rfc4514_string()}")
    print(f"written to {args.out / (name + '.crt')} (key {name}.key, {name}-chain.pem)")
    return 0


def _safe_name(name: str) -> str:
    # the name becomes file names: no separators, no traversal
    if not _SAFE_NAME.match(name):
        raise _UsageError(f"invalid name {name!r} (letters, digits, '.', '_', '-')")
    return name


def _parse_time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise _UsageError(f"invalid --at time {text!r} (ISO 8601 expected)") from exc
    return value if value.tzinfo else value.replace(tzinfo=UTC)
