"""Tenancy operations. Every write with rules or side effects goes through here."""

import logging
import re
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User as AuthUser
from django.contrib.auth.password_validation import validate_password
from django.core import signing
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.module_loading import import_string
from django.utils.text import slugify

from portal.models import ApiKey, Invitation, Membership, Organization, Role, slug_validator
from portal.tokens import api_key_digest, api_key_mint, looks_like_api_key

log = logging.getLogger(__name__)
User = get_user_model()

INVITATION_SALT = "gantry.invitation"


# --- Organizations --------------------------------------------------------------------


def _free_slug(base: str) -> str:
    # slugify keeps underscores, which slugs here do not allow; runs of them become one dash.
    base = re.sub(r"[^a-z0-9]+", "-", slugify(base).lower())[:34].strip("-") or "org"
    slug, n = base, 1
    while Organization.objects.filter(slug=slug).exists():
        n += 1
        slug = f"{base}-{n}"
    return slug


@transaction.atomic
def organization_create(
    *, name: str, owner: AuthUser, slug: str = "", personal: bool = False
) -> Organization:
    name = name.strip()
    if not name:
        raise ValidationError({"name": "Give the organization a name."})
    if len(name) > 100:
        raise ValidationError({"name": "Use at most 100 characters."})
    if slug:
        try:
            slug_validator(slug)
        except ValidationError as exc:
            raise ValidationError({"slug": exc.messages}) from exc
        if Organization.objects.filter(slug=slug).exists():
            raise ValidationError({"slug": f"The slug “{slug}” is taken; choose another."})
    else:
        slug = _free_slug(name)
    _check_may_own_another(owner)
    try:
        with transaction.atomic():
            org = Organization.objects.create(slug=slug, name=name, personal=personal)
    except IntegrityError as exc:  # a concurrent create took the slug between check and insert
        raise ValidationError({"slug": f"The slug “{slug}” is taken; choose another."}) from exc
    Membership.objects.create(organization=org, user=owner, role=Role.OWNER)
    # Inside this transaction: a hook that refuses (ValidationError) leaves nothing behind.
    for hook in settings.ORGANIZATION_CREATED_HOOKS:
        import_string(hook)(organization=org, owner=owner)
    log.info("organization %s created by user %s", org.slug, owner.pk)
    return org


def _check_may_own_another(owner: AuthUser) -> None:
    # Taken under a lock on the user's row, so two concurrent creates cannot both pass.
    User.objects.select_for_update().filter(pk=owner.pk).first()
    owned = Membership.objects.filter(user=owner, role=Role.OWNER).count()
    limit = settings.MAX_OWNED_ORGANIZATIONS
    if owned >= limit:
        raise ValidationError(
            f"You already own {owned} organizations, the most one account may own "
            f"({limit}); delete one or ask an administrator to raise the limit."
        )


def signup_invitation(token: str) -> Invitation | None:
    """The invitation a sign-up comes with, checked against ``SIGNUP_MODE``: refused when
    sign-up is closed, and required (valid) when it is by invitation only."""
    mode = settings.SIGNUP_MODE
    if mode == "closed":
        raise ValidationError(
            "Sign-up is closed on this Gantry; ask an administrator for an account."
        )
    if not token:
        if mode == "invite":
            raise ValidationError(
                {"token": "Sign-up is by invitation only; open the link from your invitation."}
            )
        return None
    return invitation_from_token(token)


@transaction.atomic
def user_signup(
    *, username: str, email: str, password: str, invitation_token: str = ""
) -> AuthUser:
    """Create a user and their personal organization, in which they are the owner; with an
    invitation, the user also joins the inviting organization."""
    invitation = signup_invitation(invitation_token)
    username = username.strip()
    email = User.objects.normalize_email(email.strip())
    errors: dict[str, list[str]] = {}
    if not re.fullmatch(r"[\w.@+-]{1,150}", username):
        errors["username"] = ["Use 1–150 letters, digits and @ . + - _ only."]
    elif User.objects.filter(username__iexact=username).exists():
        errors["username"] = ["That username is taken."]
    if not email or "@" not in email:
        errors["email"] = ["Enter a valid email address."]
    elif invitation is not None and email.lower() != invitation.email:
        errors["email"] = [f"This invitation is for {invitation.email}; sign up with it."]
    candidate = User(username=username, email=email)
    try:
        validate_password(password, candidate)
    except ValidationError as exc:
        errors["password"] = exc.messages
    if errors:
        raise ValidationError(errors)
    user = User.objects.create_user(username=username, email=email, password=password)
    organization_create(name=username, owner=user, personal=True)
    if invitation is not None:
        invitation_accept(token=invitation_token, user=user)
    return user


def membership_for(user: AuthUser, org: Organization) -> Membership | None:
    return Membership.objects.filter(user=user, organization=org).first()


def _owner_count(org: Organization) -> int:
    return Membership.objects.filter(organization=org, role=Role.OWNER).count()


def _check_may_change(actor: Membership, target_role: str) -> None:
    if target_role == Role.OWNER and actor.role != Role.OWNER:
        raise ValidationError({"role": "Only an owner can grant, change or remove the owner role."})


@transaction.atomic
def membership_update_role(*, actor: Membership, membership: Membership, role: str) -> Membership:
    if role not in Role.values:
        raise ValidationError({"role": f"Choose one of: {', '.join(Role.values)}."})
    # Lock the org's owner rows so two demotions cannot both see "another owner remains".
    list(
        Membership.objects.select_for_update().filter(
            organization=membership.organization, role=Role.OWNER
        )
    )
    membership.refresh_from_db()
    _check_may_change(actor, membership.role)
    _check_may_change(actor, role)
    if (
        membership.role == Role.OWNER
        and role != Role.OWNER
        and _owner_count(membership.organization) <= 1
    ):
        raise ValidationError({"role": "An organization needs at least one owner."})
    membership.role = role
    membership.save(update_fields=["role", "updated_at"])
    return membership


@transaction.atomic
def membership_remove(*, actor: Membership, membership: Membership) -> None:
    list(
        Membership.objects.select_for_update().filter(
            organization=membership.organization, role=Role.OWNER
        )
    )
    membership.refresh_from_db()
    _check_may_change(actor, membership.role)
    if membership.role == Role.OWNER and _owner_count(membership.organization) <= 1:
        raise ValidationError({"role": "An organization needs at least one owner."})
    # A removed member's keys stop working in this organization at once.
    ApiKey.objects.filter(
        organization=membership.organization, created_by=membership.user, revoked_at=None
    ).update(revoked_at=timezone.now())
    membership.delete()


# --- Invitations ----------------------------------------------------------------------


def invitation_token(invitation: Invitation) -> str:
    return signing.dumps({"i": invitation.pk}, salt=INVITATION_SALT)


def invitation_url(invitation: Invitation) -> str:
    path = reverse("portal:invitation_accept", args=[invitation_token(invitation)])
    return settings.SITE_URL + path


@transaction.atomic
def invitation_create(*, actor: Membership, email: str, role: str = Role.MEMBER) -> Invitation:
    from portal.tasks import send_invitation

    org = actor.organization
    email = User.objects.normalize_email((email or "").strip()).lower()
    errors: dict[str, str] = {}
    if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", email):
        errors["email"] = "Enter a valid email address."
    if role not in Role.values:
        errors["role"] = f"Choose one of: {', '.join(Role.values)}."
    if errors:
        raise ValidationError(errors)
    _check_may_change(actor, role)
    if Membership.objects.filter(organization=org, user__email__iexact=email).exists():
        raise ValidationError({"email": f"{email} is already a member of {org.name}."})
    if Invitation.objects.filter(organization=org, email=email, accepted_at=None).exists():
        raise ValidationError({"email": f"{email} already has an open invitation."})
    invitation = Invitation.objects.create(
        organization=org, email=email, role=role, invited_by=actor.user
    )
    transaction.on_commit(lambda: send_invitation.delay(invitation.pk))
    return invitation


def invitation_send(*, invitation_id: int) -> bool:
    """Email the invitation link; True when this call sent it.

    The send is claimed first, by a conditional UPDATE of `sent_at` that only one caller
    can win, and the mail goes out only after the claim has committed: a duplicate task
    delivery, or two workers at once, find nothing to claim and send nothing. If the mail
    server refuses, the claim is released so the task's retry can send. So a mail goes out
    at most once, except when the server accepted it and still reported a failure; a worker
    killed between the claim and the send leaves it claimed and unsent (never twice)."""
    now = timezone.now()
    claimed = Invitation.objects.filter(pk=invitation_id, accepted_at=None, sent_at=None).update(
        sent_at=now
    )
    if not claimed:
        return False
    invitation = Invitation.objects.select_related("organization", "invited_by").get(
        pk=invitation_id
    )
    context = {
        "invitation": invitation,
        "url": invitation_url(invitation),
        "days": settings.INVITATION_MAX_AGE_DAYS,
    }
    try:
        send_mail(
            subject=f"Join {invitation.organization.name} on Gantry",
            message=render_to_string("portal/email/invitation.txt", context),
            from_email=None,
            recipient_list=[invitation.email],
        )
    except Exception:
        # Release only our own claim (same timestamp), then let the task retry.
        Invitation.objects.filter(pk=invitation_id, sent_at=now).update(sent_at=None)
        raise
    return True


def invitation_from_token(token: str) -> Invitation:
    try:
        data = signing.loads(
            token,
            salt=INVITATION_SALT,
            max_age=timedelta(days=settings.INVITATION_MAX_AGE_DAYS),
        )
    except signing.SignatureExpired as exc:
        raise ValidationError({"token": "This invitation has expired; ask for a new one."}) from exc
    except signing.BadSignature as exc:
        raise ValidationError({"token": "This invitation link is not valid."}) from exc
    invitation = Invitation.objects.select_related("organization").filter(pk=data.get("i")).first()
    if invitation is None:
        raise ValidationError({"token": "This invitation was withdrawn."})
    return invitation


@transaction.atomic
def invitation_accept(*, token: str, user: AuthUser) -> Membership:
    invitation = invitation_from_token(token)
    invitation = Invitation.objects.select_for_update().get(pk=invitation.pk)
    if invitation.accepted_at is not None:
        raise ValidationError({"token": "This invitation was already used."})
    if (user.email or "").lower() != invitation.email:
        raise ValidationError(
            {"token": f"This invitation is for {invitation.email}; sign in with that address."}
        )
    membership, _created = Membership.objects.get_or_create(
        organization=invitation.organization, user=user, defaults={"role": invitation.role}
    )
    invitation.accepted_at = timezone.now()
    invitation.accepted_by = user
    invitation.save(update_fields=["accepted_at", "accepted_by"])
    return membership


def invitation_revoke(*, invitation: Invitation) -> None:
    if invitation.accepted_at is not None:
        raise ValidationError({"invitation": "This invitation was already accepted."})
    invitation.delete()


def invitation_purge_expired() -> int:
    cutoff = timezone.now() - timedelta(days=settings.INVITATION_MAX_AGE_DAYS)
    deleted, _ = Invitation.objects.filter(accepted_at=None, created_at__lt=cutoff).delete()
    return deleted


# --- API keys -------------------------------------------------------------------------


@transaction.atomic
def api_key_create(
    *,
    organization: Organization,
    user: AuthUser,
    name: str,
    requests_per_minute: int | None = None,
    tokens_per_minute: int | None = None,
) -> tuple[ApiKey, str]:
    """Create a key; returns (key row, raw key). The raw key is never stored."""
    name = (name or "").strip()
    if not name:
        raise ValidationError({"name": "Give the key a name, e.g. “ci” or “notebook”."})
    if len(name) > 100:
        raise ValidationError({"name": "Use at most 100 characters."})
    if not Membership.objects.filter(organization=organization, user=user).exists():
        raise ValidationError({"user": f"{user} is not a member of {organization.slug}."})
    raw, prefix, digest = api_key_mint()
    for field, value in (
        ("requests_per_minute", requests_per_minute),
        ("tokens_per_minute", tokens_per_minute),
    ):
        if value is not None and not 1 <= int(value) <= 10_000_000:
            raise ValidationError({field: "Give a whole number from 1 to 10,000,000, or none."})
    key = ApiKey.objects.create(
        organization=organization,
        created_by=user,
        name=name,
        prefix=prefix,
        digest=digest,
        requests_per_minute=requests_per_minute,
        tokens_per_minute=tokens_per_minute,
    )
    log.info("api key %s (%s) created in %s", key.pk, prefix, organization.slug)
    return key, raw


def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    if api_key.revoked_at is None:
        ApiKey.objects.filter(pk=api_key.pk, revoked_at=None).update(revoked_at=timezone.now())
        api_key.refresh_from_db()
        log.info("api key %s (%s) revoked", api_key.pk, api_key.prefix)
    return api_key


def api_key_authenticate(raw_key: str) -> ApiKey | None:
    """The active key for ``raw_key``, or None. Records last use, at most once a minute."""
    if not looks_like_api_key(raw_key):
        return None
    key = (
        ApiKey.objects.select_related("organization", "created_by")
        .filter(digest=api_key_digest(raw_key), revoked_at=None)
        .first()
    )
    if key is None or not key.created_by.is_active:
        return None
    now = timezone.now()
    stale = now - timedelta(seconds=settings.API_KEY_LAST_USED_RESOLUTION_S)
    if key.last_used_at is None or key.last_used_at < stale:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now
    return key


# --- Hub token --------------------------------------------------------------------------

HUB_TOKEN_RE = re.compile(r"^[A-Za-z0-9_.-]{8,200}$")


def organization_hub_token_set(*, organization: Organization, token) -> Organization:
    """Set (or, with "", clear) the organization's Hugging Face token: deploys of gated
    repos use it to fetch the weights. Stored encrypted; never shown again."""
    from portal.secrets import secret_encrypt

    if not isinstance(token, str):
        raise ValidationError({"token": "Give the token as text (empty clears it)."})
    token = token.strip()
    if token and not HUB_TOKEN_RE.match(token):
        raise ValidationError(
            {"token": "A hub token is 8–200 letters, digits, '_', '-' or '.', like hf_…."}
        )
    Organization.objects.filter(pk=organization.pk).update(
        hub_token_encrypted=secret_encrypt(token), updated_at=timezone.now()
    )
    organization.refresh_from_db()
    log.info("hub token of %s %s", organization.slug, "set" if token else "cleared")
    return organization
