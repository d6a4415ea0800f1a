"""API key minting and digests. Keys are shown once; only prefix and digest are kept."""

import hashlib
import hmac
import secrets

from django.conf import settings

KEY_PREFIX = "gk_"
# Characters of the key shown in lists so people can tell keys apart.
VISIBLE_CHARS = 8


def api_key_digest(raw_key: str) -> str:
    return hmac.new(
        settings.API_KEY_HMAC_SECRET.encode(), raw_key.encode(), hashlib.sha256
    ).hexdigest()


def api_key_mint() -> tuple[str, str, str]:
    """Return (raw key, visible prefix, digest)."""
    raw = KEY_PREFIX + secrets.token_urlsafe(32)
    return raw, raw[: len(KEY_PREFIX) + VISIBLE_CHARS], api_key_digest(raw)


def looks_like_api_key(value: str) -> bool:
    return value.startswith(KEY_PREFIX) and 20 <= len(value) <= 128
