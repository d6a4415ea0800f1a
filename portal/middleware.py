from django.http import HttpRequest, HttpResponse

from portal.models import Membership

SESSION_KEY = "gantry_org_id"


class CurrentOrganizationMiddleware:
    """Sets ``request.org`` and ``request.membership`` for signed-in users.

    The current organization lives in the session; it falls back to the user's first
    membership. API-key requests get theirs from the key (see ``permissions``).
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request.org = None
        request.membership = None
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            memberships = Membership.objects.select_related("organization").filter(user=user)
            org_id = request.session.get(SESSION_KEY)
            membership = None
            if org_id is not None:
                membership = memberships.filter(organization_id=org_id).first()
            if membership is None:
                membership = memberships.order_by("-organization__personal", "created_at").first()
                if membership is not None:
                    request.session[SESSION_KEY] = membership.organization_id
            if membership is not None:
                request.membership = membership
                request.org = membership.organization
        return self.get_response(request)
