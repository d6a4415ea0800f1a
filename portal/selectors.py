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
