"""The playground's credential: a short-lived token the portal mints for a signed-in member,
good for one deployment only, that the browser sends to the gateway like an API key.

Tokens look like `gp_<payload>:<signature>` (Django's signing, HMAC-SHA256 with
API_KEY_HMAC_SECRET, the secret the gateway already shares with the portal for key
digests). Nothing is stored: the gateway checks the signature and the expiry written into
the token, then that the member still belongs to the organization (see gateway.auth). The
page holds a token for minutes (PLAYGROUND_TOKEN_TTL_S), never a long-lived key, and the
gateway refuses it for any other deployment and for every management call.
"""

import statistics
import time
from dataclasses import dataclass

from django.conf import settings
from django.core import signing
from django.core.exceptions import ValidationError

from deployments.models import Deployment, DeploymentStatus

TOKEN_PREFIX = "gp_"  # noqa: S105 - a prefix, not a secret
SALT = "gantry.playground.v1"
MAX_TOKEN_CHARS = 512
MIN_TTL_S = 10
# How long a wake takes when the deployment has never started a replica to measure.
DEFAULT_WAKE_S = 30
STARTING = {DeploymentStatus.PENDING, DeploymentStatus.PLACING, DeploymentStatus.STARTING}


@dataclass(frozen=True)
class Grant:
    """What a valid token allows: `user_id`, inside `organization_id`, on `deployment_id`."""

    deployment_id: int
    organization_id: int
    user_id: int
    expires_at: float  # epoch seconds


def ttl_limit() -> int:
    return int(settings.PLAYGROUND_TOKEN_TTL_S)


def playground_token_mint(*, deployment: Deployment, user, ttl_s: int | None = None) -> dict:
    """A token for `user` on `deployment` (the caller has checked access and role), and
    what the page needs beside it: where to send it and whether the deployment must wake.
    """
    limit = ttl_limit()
    ttl = limit if ttl_s is None else ttl_s
    if not MIN_TTL_S <= ttl <= limit:
        raise ValidationError(
            {"ttl_s": f"Give a whole number of seconds from {MIN_TTL_S} to {limit}."}
        )
    if deployment.status == DeploymentStatus.DELETED:
        raise ValidationError({"deployment": "This deployment is deleted."})
    expires_at = int(time.time()) + ttl
    payload = {
        "d": deployment.pk,
        "o": deployment.organization_id,
        "u": user.pk,
        "e": expires_at,
    }
    token = TOKEN_PREFIX + signing.dumps(payload, key=settings.API_KEY_HMAC_SECRET, salt=SALT)
    return {
        "token": token,
        "expires_at": expires_at,
        "ttl_s": ttl,
        "deployment": deployment.pk,
        "model": deployment.name,
        "base_url": f"{settings.GATEWAY_URL}/v1",
        # Asleep (the first request wakes it) or still starting: either way the page waits.
        "waking": deployment.asleep or deployment.status in STARTING,
        "wake_estimate_s": wake_estimate_s(deployment),
    }


def playground_token_read(raw: str, *, now: float | None = None) -> Grant | None:
    """The grant a token carries, or None: not ours, tampered with, or expired."""
    if not raw.startswith(TOKEN_PREFIX) or len(raw) > MAX_TOKEN_CHARS:
        return None
    try:
        payload = signing.loads(
            raw[len(TOKEN_PREFIX) :], key=settings.API_KEY_HMAC_SECRET, salt=SALT
        )
    except signing.BadSignature:
        return None
    if not isinstance(payload, dict):
        return None
    values = [payload.get(k) for k in ("d", "o", "u", "e")]
    whole = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
    if len(whole) != len(values):
        return None
    grant = Grant(*whole)
    if grant.expires_at <= (time.time() if now is None else now):
        return None
    return grant


def looks_like_playground_token(value: str) -> bool:
    return value.startswith(TOKEN_PREFIX) and 20 <= len(value) <= MAX_TOKEN_CHARS


def wake_estimate_s(deployment: Deployment) -> int:
    """About how long this deployment takes from zero to serving: the median start-up of
    its last replicas (started → health check passed), or DEFAULT_WAKE_S with none."""
    took = [
        (ready - started).total_seconds()
        for started, ready in deployment.replicas.filter(
            started_at__isnull=False, ready_at__isnull=False
        )
        .order_by("-ready_at")
        .values_list("started_at", "ready_at")[:5]
        if started and ready
    ]
    return max(1, round(statistics.median(took))) if took else DEFAULT_WAKE_S
