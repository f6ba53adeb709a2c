"""API keys (stored as SHA-256 hashes) and ingest secrets (stored Fernet-encrypted).

API keys are 256-bit random tokens, so a plain SHA-256 is the right hash: lookups stay one index
probe and nothing reversible is kept. Ingest secrets must be usable to verify HMACs, so they are
encrypted with `TRACKD_SECRET_KEY` (any string; a key is derived from it) or, when that is unset,
with a key generated once and kept in the database's `keyring` table.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from cryptography.fernet import Fernet, InvalidToken

from trackd.errors import ConfigError


def new_api_key() -> str:
    return "tk_" + secrets.token_urlsafe(32)


def new_ingest_secret() -> str:
    return "is_" + secrets.token_urlsafe(32)


def new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def same(a: bytes | str, b: bytes | str) -> bool:
    """Constant-time comparison."""
    if isinstance(a, str):
        a = a.encode()
    if isinstance(b, str):
        b = b.encode()
    return hmac.compare_digest(a, b)


def fernet_for(secret: str) -> Fernet:
    """A Fernet from any secret string (a real Fernet key is used as is)."""
    try:
        return Fernet(secret.encode())
    except (ValueError, TypeError):
        derived = hashlib.sha256(b"trackd-secret-key:" + secret.encode()).digest()
        return Fernet(base64.urlsafe_b64encode(derived))


def generate_keyring_key() -> str:
    return Fernet.generate_key().decode()


class SecretBox:
    def __init__(self, fernet: Fernet) -> None:
        self._f = fernet

    def seal(self, plain: str) -> str:
        return self._f.encrypt(plain.encode()).decode()

    def open(self, sealed: str) -> str:
        try:
            return self._f.decrypt(sealed.encode()).decode()
        except InvalidToken:
            raise ConfigError(
                "cannot decrypt stored secrets: TRACKD_SECRET_KEY differs from the one they were sealed with"
            ) from None
