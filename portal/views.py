from functools import wraps

from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from portal import selectors, services
from portal.access import (
    access_api_key_to_revoke,
    access_invitation,
    access_membership,
    access_membership_to_remove,
    access_organization,
    require,
)
from portal.forms import (
    ApiKeyForm,
    InvitationForm,
    OrganizationForm,
    RoleForm,
    SignupForm,
    apply_errors,
)
from portal.middleware import SESSION_KEY
from portal.roles import can
from portal.throttles import SignupThrottle


def org_required(view):
    """Signed in and inside an organization; otherwise off to sign in or create one."""

    @login_required
    @wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if request.org is None:
            messages.info(request, "Create an organization to continue.")
            return redirect("portal:organizations")
        return view(request, *args, **kwargs)

    return wrapper


def dashboard(request: HttpRequest) -> HttpResponse:
    if not request.user.is_authenticated:
        return render(request, "portal/landing.html")
    if request.org is None:
        return redirect("portal:organizations")
    summary = selectors.organization_summary(request.org)
    cards = selectors.app_dashboard_cards(request.org)
    return render(request, "portal/dashboard.html", {"summary": summary, "cards": cards})


@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("portal:dashboard")
    token = request.GET.get("invite", "")
    form = SignupForm(request.POST or None)
    refused = None
    try:
        services.signup_invitation(token)
    except ValidationError as exc:
        refused = " ".join(exc.messages)
    status = 403 if refused else 200
    if request.method == "POST" and refused is None:
        throttle = SignupThrottle()
        if not throttle.allow_request(request, None):
            wait = int(throttle.wait() or 0) + 1
            form.add_error(None, f"Too many sign-ups from your address; try again in {wait} s.")
            response = render(request, "registration/signup.html", {"form": form}, status=429)
            response["Retry-After"] = str(wait)
            return response
        if form.is_valid():
            try:
                user = services.user_signup(invitation_token=token, **form.cleaned_data)
            except ValidationError as exc:
                apply_errors(form, exc)
                status = 400
            else:
                login(request, user, backend="django.contrib.auth.backends.ModelBackend")
                messages.success(request, f"Welcome, {user.username}. Your organization is ready.")
                target = request.GET.get("next", "")
                return redirect(
                    target
                    if target.startswith("/") and not target.startswith("//")
                    else "portal:dashboard"
                )
        else:
            status = 400
    return render(
        request, "registration/signup.html", {"form": form, "refused": refused}, status=status
    )


@login_required
@require_http_methods(["GET", "POST"])
def organization_list(request: HttpRequest) -> HttpResponse:
    form = OrganizationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            org = services.organization_create(owner=request.user, **form.cleaned_data)
        except ValidationError as exc:
            apply_errors(form, exc)
        else:
            request.session[SESSION_KEY] = org.pk
            messages.success(request, f"Created {org.name}; you are its owner.")
            return redirect("portal:dashboard")
    status = 400 if form.errors else 200
    return render(request, "portal/organization_list.html", {"form": form}, status=status)


@login_required
@require_POST
def organization_switch(request: HttpRequest, slug: str) -> HttpResponse:
    membership = access_organization(request.user, slug)
    request.session[SESSION_KEY] = membership.organization_id
    messages.info(request, f"Now working in {membership.organization.name}.")
    response = redirect("portal:dashboard")
    if request.htmx:
        response = HttpResponse(status=204)
        response["HX-Redirect"] = reverse("portal:dashboard")
    return response


# --- API keys ---------------------------------------------------------------------------


@org_required
@require_http_methods(["GET", "POST"])
def api_key_list(request: HttpRequest) -> HttpResponse:
    form = ApiKeyForm(request.POST or None)
    new_key = None
    if request.method == "POST":
        require(request.membership, "keys.create")
        if form.is_valid():
            try:
                _key, new_key = services.api_key_create(
                    organization=request.org, user=request.user, name=form.cleaned_data["name"]
                )
            except ValidationError as exc:
                apply_errors(form, exc)
            else:
                form = ApiKeyForm()
    context = {
        "form": form,
        "new_key": new_key,
        "keys": selectors.api_key_list(org=request.org),
        "may_manage": can(request.membership.role, "keys.manage"),
    }
    template = "portal/api_key_list.html"
    if request.htmx:
        template += "#keys-panel"
    response = render(request, template, context)
    # The one page that shows a secret must never be cached anywhere.
    response["Cache-Control"] = "no-store"
    return response


@org_required
@require_POST
def api_key_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    key = access_api_key_to_revoke(request.membership, pk)
    services.api_key_revoke(api_key=key)
    if request.htmx:
        return render(
            request,
            "portal/api_key_list.html#key-row",
            {"key": key, "may_manage": can(request.membership.role, "keys.manage")},
        )
    messages.success(request, f"Revoked {key.name}.")
    return redirect("portal:api_keys")


@org_required
@require_POST
def hub_token_set(request: HttpRequest) -> HttpResponse:
    require(request.membership, "keys.manage")
    try:
        services.organization_hub_token_set(
            organization=request.org, token=request.POST.get("token", "")
        )
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(
            request, "Hub token saved." if request.org.hub_token_encrypted else "Hub token removed."
        )
    return redirect("portal:api_keys")


# --- Members and invitations ------------------------------------------------------------


def _members_page(request: HttpRequest, form: InvitationForm, status: int = 200) -> HttpResponse:
    context = {
        "form": form,
        "members": selectors.membership_list(org=request.org),
        "invitations": selectors.invitation_open_list(org=request.org),
        "may_manage": can(request.membership.role, "members.manage"),
        "role_choices": RoleForm.base_fields["role"].choices,
    }
    template = "portal/member_list.html"
    if request.htmx:
        template += "#members-panel"
    return render(request, template, context, status=status)


@org_required
@require_http_methods(["GET", "POST"])
def member_list(request: HttpRequest) -> HttpResponse:
    require(request.membership, "members.view")
    form = InvitationForm(request.POST or None)
    if request.method == "POST":
        require(request.membership, "members.manage")
        if form.is_valid():
            try:
                invitation = services.invitation_create(
                    actor=request.membership, **form.cleaned_data
                )
            except ValidationError as exc:
                apply_errors(form, exc)
            else:
                messages.success(request, f"Invitation sent to {invitation.email}.")
                form = InvitationForm()
    return _members_page(request, form)


@org_required
@require_POST
def member_update(request: HttpRequest, pk: int) -> HttpResponse:
    membership = access_membership(request.org, pk)
    require(request.membership, "members.manage")
    form = RoleForm(request.POST)
    try:
        if not form.is_valid():
            raise ValidationError({"role": form.errors.get("role", ["Choose a role."])[0]})
        services.membership_update_role(
            actor=request.membership, membership=membership, role=form.cleaned_data["role"]
        )
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, f"{membership.user.username} is now {membership.role}.")
    if request.htmx:
        return _members_page(request, InvitationForm())
    return redirect("portal:members")


@org_required
@require_POST
def member_remove(request: HttpRequest, pk: int) -> HttpResponse:
    membership = access_membership_to_remove(request.membership, pk)
    try:
        services.membership_remove(actor=request.membership, membership=membership)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        if membership.user_id == request.user.pk:
            request.session.pop(SESSION_KEY, None)
            messages.success(request, f"You left {request.org.name}.")
            return redirect("portal:dashboard")
        messages.success(request, f"Removed {membership.user.username}.")
    if request.htmx:
        return _members_page(request, InvitationForm())
    return redirect("portal:members")


@org_required
@require_POST
def invitation_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    invitation = access_invitation(request.org, pk)
    require(request.membership, "members.manage")
    try:
        services.invitation_revoke(invitation=invitation)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, f"Withdrew the invitation to {invitation.email}.")
    if request.htmx:
        return _members_page(request, InvitationForm())
    return redirect("portal:members")


@require_http_methods(["GET", "POST"])
def invitation_accept(request: HttpRequest, token: str) -> HttpResponse:
    error = None
    invitation = None
    try:
        invitation = services.invitation_from_token(token)
    except ValidationError as exc:
        error = " ".join(exc.messages)
    if request.method == "POST" and invitation is not None:
        if not request.user.is_authenticated:
            return redirect(f"{reverse('login')}?next={request.path}")
        try:
            membership = services.invitation_accept(token=token, user=request.user)
        except ValidationError as exc:
            error = " ".join(exc.messages)
        else:
            request.session[SESSION_KEY] = membership.organization_id
            messages.success(request, f"You joined {membership.organization.name}.")
            return redirect("portal:dashboard")
    status = 400 if error else 200
    return render(
        request,
        "portal/invitation_accept.html",
        {"invitation": invitation, "error": error, "token": token},
        status=status,
    )
