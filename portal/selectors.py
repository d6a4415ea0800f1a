from django.apps import apps
from django.db.models import QuerySet

from portal.models import ApiKey, Invitation, Membership, Organization


def api_key_list(*, org: Organization) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(organization=org).select_related("created_by")


def membership_list(*, org: Organization) -> QuerySet[Membership]:
    return (
        Membership.objects.filter(organization=org)
        .select_related("user")
        .order_by("user__username")
    )


def invitation_open_list(*, org: Organization) -> QuerySet[Invitation]:
    return Invitation.objects.filter(organization=org, accepted_at=None).select_related(
        "invited_by"
    )


def organization_list_for_user(*, user) -> QuerySet[Organization]:
    return Organization.objects.filter(memberships__user=user).order_by("name")


def organization_summary(org: Organization) -> dict:
    return {
        "members": Membership.objects.filter(organization=org).count(),
        "api_keys": ApiKey.objects.filter(organization=org, revoked_at=None).count(),
        "invitations": Invitation.objects.filter(organization=org, accepted_at=None).count(),
    }


def app_dashboard_cards(org: Organization) -> list[dict]:
    """The cards other apps put on the dashboard, in INSTALLED_APPS order. Tenancy sits below
    them and may not import them, so each app offers `dashboard_cards(org)` on its AppConfig
    (title, and a `stat` or `text`, a `url` and its `link` words)."""
    return [
        card
        for config in apps.get_app_configs()
        if hasattr(config, "dashboard_cards")
        for card in config.dashboard_cards(org)
    ]
