"""The per-replica secret an engine demands of every caller (OpenAI-style bearer key).

Derived, not stored: HMAC-SHA256 of the replica's id under a key taken from SECRET_KEY.
Whoever holds the settings — the driver
that starts the engine, the reconciler's health probe, the gateway — computes the same
value, so nothing secret sits in the database, a dump or a backup, and there is nothing
to decrypt or rotate per row. The price: changing that key changes every replica's
secret, so replicas started before the change answer 401 until they are replaced (the
health probe fails them and the reconciler starts new ones).
"""

import hashlib
import hmac

from django.conf import settings

# Prefix of the value, so a leaked one is recognisable in a log or a paste.
PREFIX = "gre_"


def engine_api_key(replica_id: int) -> str:
    digest = hmac.new(
        f"gantry.engine-key:{settings.SECRET_KEY}".encode(),
        f"replica:{int(replica_id)}".encode(),
        hashlib.sha256,
    ).hexdigest()
    return PREFIX + digest


def engine_auth_headers(replica_id: int) -> dict[str, str]:
    """What the platform sends an engine with every request (gateway relay, health probe)."""
    return {"Authorization": f"Bearer {engine_api_key(replica_id)}"}
