"""Who is calling: the bearer API key, checked against its HMAC digest, and whether the
caller's organization may spend now. Both answers are cached for a few seconds, misses
included, so neither a busy key nor a wrong one costs a database read per request.

The raw key is only ever a cache key in memory; it is never logged or sent on.
"""

from dataclasses import dataclass

from starlette.requests import Request

from gateway.cache import Cache
from gateway.db import db
from portal.models import ApiKey
from portal.tokens import api_key_digest, looks_like_api_key

KEY_TTL_S = 10.0
SPEND_TTL_S = 10.0


@dataclass(frozen=True)
class Caller:
    # The digest's start: stable across processes and databases, so rate-limit counters
    # shared in Redis agree on who is who, and it says nothing about the key itself.
    key_id: str
    organization_id: int
    requests_per_minute: int | None
    tokens_per_minute: int | None


def key_lookup(raw: str) -> Caller | None:
    """The caller an active key belongs to, or None (unknown, revoked, or its user gone)."""
    if not looks_like_api_key(raw):
        return None
    digest = api_key_digest(raw)
    row = (
        ApiKey.objects.filter(digest=digest, revoked_at=None, created_by__is_active=True)
        .values_list("organization_id", "requests_per_minute", "tokens_per_minute")
        .first()
    )
    return Caller(digest[:24], *row) if row else None


def spend_blocked(organization_id: int) -> str:
    """Why the organization may not spend now (hard limit, past due), or ""."""
    from billing.models import BillingAccount
    from billing.services import spend_status
    from portal.models import Organization

    org = Organization.objects.get(pk=organization_id)
    status = (
        BillingAccount.objects.filter(organization=org).values_list("status", flat=True).first()
    )
    if status in {BillingAccount.Status.PAST_DUE, BillingAccount.Status.SUSPENDED}:
        return f"This organization's account is {status.replace('_', ' ')}."
    if spend_status(org)["hard"]:
        return "The organization's monthly spend limit is reached."
    return ""


def bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    return header[7:].strip() if header.lower().startswith("bearer ") else ""


class Auth:
    def __init__(self):
        self.keys = Cache(ttl=KEY_TTL_S)
        self.spend = Cache(ttl=SPEND_TTL_S)

    async def caller(self, request: Request) -> Caller | None:
        raw = bearer(request)
        hit, value = self.keys.get(raw)
        if not hit:
            value = await db(key_lookup)(raw)
            self.keys.put(raw, value)
        return value

    async def spend_block(self, organization_id: int) -> str:
        hit, blocked = self.spend.get(organization_id)
        if not hit:
            blocked = await db(spend_blocked)(organization_id)
            self.spend.put(organization_id, blocked)
        return blocked
