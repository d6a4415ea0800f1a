from rest_framework.permissions import BasePermission

from portal.models import ApiKey, Membership


def resolve_org(request) -> None:
    """Put the acting organization and membership on the request (DRF and Django)."""
    if isinstance(request.auth, ApiKey):
        key = request.auth
        membership = (
            Membership.objects.select_related("organization")
            .filter(organization_id=key.organization_id, user_id=key.created_by_id)
            .first()
        )
        request.org = key.organization
        request.membership = membership
    else:
        django_request = request._request
        request.org = getattr(django_request, "org", None)
        request.membership = getattr(django_request, "membership", None)


class IsOrganizationMember(BasePermission):
    message = "Sign in, or send an API key of an organization you belong to."

    def has_permission(self, request, view) -> bool:
        if not (request.user and request.user.is_authenticated):
            return False
        resolve_org(request)
        return request.membership is not None
