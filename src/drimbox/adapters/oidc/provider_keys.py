"""The provider's RSA signing key: made once, kept as PEM (mode 0600) in the data folder.

The key id is the key's RFC 7638 thumbprint, so it stays the same across restarts and says
which key signed a token without any other bookkeeping. No rotation: delete the file to get
a new key (every token signed with the old one then fails verification).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
from pathlib import Path
from typing import Any

from joserfc.errors import JoseError
from joserfc.jwk import KeySet, RSAKey

log = logging.getLogger(__name__)

KEY_FILE = "idp-signing-key.pem"
KEY_SIZE = 2048
ALG = "RS256"


class KeyFileError(Exception):
    """The key file exists but is not a usable RSA private key."""


class SigningKey:
    """The private key (for signing) and its public JWKS (for ``/certs``)."""

    def __init__(self, key: RSAKey) -> None:
        if not key.is_private:
            raise ValueError("a signing key must be private")
        kid = key.thumbprint()
        self.kid = kid
        self.private = RSAKey.import_key(
            key.as_pem(private=True), {"kid": kid, "use": "sig", "alg": ALG}
        )
        self.public = RSAKey.import_key(
            key.as_pem(private=False), {"kid": kid, "use": "sig", "alg": ALG}
        )
        self.public_set = KeySet([self.public])

    def jwks(self) -> dict[str, Any]:
        return dict(self.public_set.as_dict(private=False))

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(RSAKey.generate_key(KEY_SIZE, private=True))

    @classmethod
    def load_or_create(cls, data_dir: Path) -> SigningKey:
        """The key of ``data_dir/idp-signing-key.pem``, made on first use."""
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = data_dir / KEY_FILE
        if not path.exists():
            cls._create(path)
        return cls._load(path)

    @staticmethod
    def _create(path: Path) -> None:
        pem = RSAKey.generate_key(KEY_SIZE, private=True).as_pem(private=True)
        # written under a temporary name then linked: a concurrent start sees the whole key or
        # none, and the first one to link wins
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(pem)
                fh.flush()
                os.fsync(fh.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
                log.info("new signing key written to %s", path)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def _load(cls, path: Path) -> SigningKey:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("%s was readable by others: mode set to 0600", path)
            path.chmod(0o600)
        try:
            key = RSAKey.import_key(path.read_bytes())
        except (JoseError, ValueError, TypeError) as exc:
            raise KeyFileError(f"{path} is not an RSA private key in PEM: {exc}") from None
        if not key.is_private:
            raise KeyFileError(f"{path} holds a public key, not a private one")
        size = key.raw_value.key_size
        if size < KEY_SIZE:
            raise KeyFileError(f"{path}: RSA key of {size} bits, at least {KEY_SIZE} needed")
        return cls(key)
