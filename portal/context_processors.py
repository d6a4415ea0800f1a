from portal.models import Membership
from portal.roles import can


def tenancy(request):
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    membership = getattr(request, "membership", None)
    role = membership.role if membership else None
    return {
        "current_org": getattr(request, "org", None),
        "current_role": role,
        "my_memberships": Membership.objects.select_related("organization")
        .filter(user=user)
        .order_by("organization__name"),
        "perms_for": lambda action: can(role, action),
    }
