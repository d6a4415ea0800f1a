"""Hub access tokens, kept encrypted on the build row (Fernet, keyed from SECRET_KEY) and
decrypted only to call the hub."""

import base64
import hashlib

from django.conf import settings


def _fernet():
    from cryptography.fernet import Fernet

    key = hashlib.sha256(f"gantry.builder:{settings.SECRET_KEY}".encode()).digest()
    return Fernet(base64.urlsafe_b64encode(key))


def token_encrypt(token: str) -> str:
    return _fernet().encrypt(token.encode()).decode() if token else ""


def token_decrypt(value: str) -> str:
    return _fernet().decrypt(value.encode()).decode() if value else ""
