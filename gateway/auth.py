"""Who is calling: the bearer API key, checked against its HMAC digest — or a playground
token (`gp_…`, see deployments.playground), checked by its signature and expiry, then its
member's standing — and whether the caller's organization may spend now. The answers are
cached for a few seconds, misses included (unknown keys for longer), so neither a busy key
nor a wrong one costs a database read per request.

The raw key is only ever a cache key in memory; it is never logged or sent on.
"""

import asyncio
from dataclasses import dataclass

from django.conf import settings
from starlette.requests import Request

from deployments.playground import Grant, looks_like_playground_token, playground_token_read
from gateway.cache import Cache, KeyCache
from gateway.db import db
from portal.models import ApiKey, Membership
from portal.roles import can
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
    # A playground token's one deployment; None for API keys (any of the organization's).
    deployment_id: int | None = None


def grant_lookup(grant: Grant) -> Caller | None:
    """The caller a playground grant stands for while its member is still active in the
    organization and allowed the playground, or None."""
    role = (
        Membership.objects.filter(
            organization_id=grant.organization_id, user_id=grant.user_id, user__is_active=True
        )
        .values_list("role", flat=True)
        .first()
    )
    if not can(role, "playground.use"):
        return None
    return Caller(
        # One rate-limit window per member, across the deployments they try.
        f"gp:{grant.organization_id}:{grant.user_id}",
        grant.organization_id,
        int(settings.PLAYGROUND_REQUESTS_PER_MINUTE),
        None,
        grant.deployment_id,
    )


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
    """Key lookups are coalesced — concurrent requests with the same unknown-to-the-cache
    key share one database read — and at most GATEWAY_DB_CONCURRENCY of them run at once,
    so a flood of made-up keys queues here instead of opening a database connection each.
    Keys that cannot be ours (wrong shape) never reach the database at all."""

    def __init__(self):
        self.keys = KeyCache(
            size=int(getattr(settings, "GATEWAY_KEY_CACHE_SIZE", 10_000)),
            ttl=KEY_TTL_S,
            negative_ttl=float(getattr(settings, "GATEWAY_KEY_NEGATIVE_TTL_S", 60.0)),
        )
        self.spend = Cache(ttl=SPEND_TTL_S)
        self.db_slots = asyncio.Semaphore(int(getattr(settings, "GATEWAY_DB_CONCURRENCY", 4)))
        self.lookups: dict[str, asyncio.Future] = {}  # key -> the lookup under way
        self.db_reads = 0  # key lookups that reached the database, for tests and metrics

    async def caller(self, request: Request) -> Caller | None:
        raw = bearer(request)
        if looks_like_playground_token(raw):
            return await self.playground_caller(raw)
        hit, value = self.keys.get(raw)
        if hit:
            return value
        if not looks_like_api_key(raw):
            return None  # costs nothing to tell again; kept out of the cache of real keys
        if raw in self.lookups:
            return await asyncio.shield(self.lookups[raw])
        future = asyncio.get_running_loop().create_future()
        self.lookups[raw] = future
        try:
            async with self.db_slots:
                self.db_reads += 1
                value = await db(key_lookup)(raw)
            self.keys.put(raw, value)
            future.set_result(value)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters get it, an unawaited one is not logged
            raise
        finally:
            del self.lookups[raw]
        return value

    async def spend_block(self, organization_id: int) -> str:
        hit, blocked = self.spend.get(organization_id)
        if not hit:
            async with self.db_slots:
                blocked = await db(spend_blocked)(organization_id)
            self.spend.put(organization_id, blocked)
        return blocked

    async def playground_caller(self, raw: str) -> Caller | None:
        """The signature and expiry are checked on every request (no database, and an
        expired token is refused the second it expires); the member's standing is read
        at most every few seconds per member."""
        grant = playground_token_read(raw)
        if grant is None:
            return None
        cache_key = ("gp", grant.organization_id, grant.user_id, grant.deployment_id)
        hit, value = self.keys.get(cache_key)
        if not hit:
            async with self.db_slots:
                self.db_reads += 1
                value = await db(grant_lookup)(grant)
            self.keys.put(cache_key, value)
        return value
