"""Secrets an organization sets (its hub token), encrypted at rest with a key derived from
SECRET_KEY (Fernet), decrypted only where they are used and never rendered back."""

import base64
import hashlib

from django.conf import settings


def _fernet():
    from cryptography.fernet import Fernet

    key = hashlib.sha256(f"gantry.portal.secrets:{settings.SECRET_KEY}".encode()).digest()
    return Fernet(base64.urlsafe_b64encode(key))


def secret_encrypt(value: str) -> str:
    return _fernet().encrypt(value.encode()).decode() if value else ""


def secret_decrypt(value: str) -> str:
    """The plain secret, or "" when none is set or SECRET_KEY changed since it was set."""
    from cryptography.fernet import InvalidToken

    if not value:
        return ""
    try:
        return _fernet().decrypt(value.encode()).decode()
    except InvalidToken:
        return ""
