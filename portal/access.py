"""Access checks. No view or API fetches an organization-owned object any other way.

Objects of another organization answer 404 (never 403, never data); a known object
that the member's role may not touch answers 403.
"""

from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import get_object_or_404

from portal.models import ApiKey, Invitation, Membership, Organization
from portal.roles import can


def require(membership: Membership | None, action: str) -> None:
    if membership is None:
        raise Http404("No organization.")
    if not can(membership.role, action):
        raise PermissionDenied(f"Your role ({membership.role}) may not do this ({action}).")


def access_organization(user, slug: str) -> Membership:
    return get_object_or_404(
        Membership.objects.select_related("organization"), user=user, organization__slug=slug
    )


def access_api_key(org: Organization | None, pk) -> ApiKey:
    if org is None:
        raise Http404
    return get_object_or_404(ApiKey.objects.select_related("created_by"), organization=org, pk=pk)


def access_membership(org: Organization | None, pk) -> Membership:
    if org is None:
        raise Http404
    return get_object_or_404(Membership.objects.select_related("user"), organization=org, pk=pk)


def access_invitation(org: Organization | None, pk) -> Invitation:
    if org is None:
        raise Http404
    return get_object_or_404(Invitation, organization=org, pk=pk)


def access_api_key_to_revoke(membership: Membership | None, pk) -> ApiKey:
    """A key the member may revoke: one they created, or any of the organization's with the
    right to manage keys. Another organization's key answers 404; a colleague's key without
    that right, 403."""
    if membership is None:
        raise Http404("No organization.")
    key = access_api_key(membership.organization, pk)
    if key.created_by_id != membership.user_id:
        require(membership, "keys.manage")
    return key


def access_membership_to_remove(membership: Membership | None, pk) -> Membership:
    """A membership the member may end: their own (leaving), or anyone's with the right to
    manage members. Whether the organization would be left without an owner is the
    service's rule (`membership_remove`), not an access one."""
    if membership is None:
        raise Http404("No organization.")
    target = access_membership(membership.organization, pk)
    if target.user_id != membership.user_id:
        require(membership, "members.manage")
    return target
