"""Abuse limits: who may sign up, how many organizations one may own, no fresh start
for the owner of a suspended or past-due organization, default quotas from a plan, and
throttled sign-in and sign-up."""

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from billing.models import BillingAccount, Plan, Quota
from billing.plans import quota_get_or_create
from portal.models import Invitation, Membership, Organization
from portal.services import invitation_token
from tests.conftest import owner_of

User = get_user_model()
SIGNUP = {"username": "ada", "email": "ada@example.com", "password": "correct-horse-battery"}


# --- Sign-up modes ----------------------------------------------------------------------


def test_closed_signup_refuses_the_page_and_the_form(client, db, settings):
    settings.SIGNUP_MODE = "closed"
    page = client.get(reverse("portal:signup"))
    assert page.status_code == 403 and "Sign-up is closed" in page.content.decode()
    response = client.post(reverse("portal:signup"), SIGNUP)
    assert response.status_code == 403
    assert not User.objects.filter(username="ada").exists()


def test_invite_only_signup_needs_a_valid_invitation(client, db, settings):
    settings.SIGNUP_MODE = "invite"
    response = client.post(reverse("portal:signup"), SIGNUP)
    assert response.status_code == 403 and "by invitation only" in response.content.decode()
    forged = client.post(reverse("portal:signup") + "?invite=forged", SIGNUP)
    assert forged.status_code == 403 and "not valid" in forged.content.decode()
    assert not User.objects.filter(username="ada").exists()


def test_invite_only_signup_with_an_invitation_joins_the_organization(client, org_a, settings):
    settings.SIGNUP_MODE = "invite"
    invitation = Invitation.objects.create(organization=org_a, email="ada@example.com")
    url = reverse("portal:signup") + f"?invite={invitation_token(invitation)}"
    wrong = client.post(url, {**SIGNUP, "email": "eve@example.com"})
    assert wrong.status_code == 400 and "This invitation is for ada@example.com" in (
        wrong.content.decode()
    )
    assert client.post(url, SIGNUP).status_code == 302
    ada = User.objects.get(username="ada")
    assert Membership.objects.filter(organization=org_a, user=ada).exists()
    invitation.refresh_from_db()
    assert invitation.accepted_by == ada


def test_open_signup_is_the_default(client, db, settings):
    assert settings.SIGNUP_MODE == "open"
    assert client.post(reverse("portal:signup"), SIGNUP).status_code == 302


def test_signup_is_throttled_per_address(client, db, monkeypatch):
    from portal.throttles import SignupThrottle

    # The rate is read from settings when the module loads; this test sets a small one.
    monkeypatch.setattr(SignupThrottle, "rate", "2/hour", raising=False)
    for i in range(2):
        response = client.post(reverse("portal:signup"), {**SIGNUP, "username": f"u{i}"})
        assert response.status_code == 302
        client.logout()
    third = client.post(reverse("portal:signup"), {**SIGNUP, "username": "u3"})
    assert third.status_code == 429 and int(third["Retry-After"]) > 0
    assert "Too many sign-ups" in third.content.decode()
    assert not User.objects.filter(username="u3").exists()


# --- Sign-in lockout ----------------------------------------------------------------------


def test_repeated_failed_sign_ins_lock_the_account_out(client, make_user, settings):
    settings.AXES_FAILURE_LIMIT = 3
    make_user("bob")
    for _ in range(3):
        response = client.post(reverse("login"), {"username": "bob", "password": "wrong-password"})
    assert response.status_code == 429
    # Even the right password is refused while locked out.
    locked = client.post(reverse("login"), {"username": "bob", "password": "a-long-test-pass-42"})
    assert locked.status_code == 429 and "_auth_user_id" not in client.session


def test_a_good_sign_in_still_works(client, make_user):
    make_user("carol")
    response = client.post(
        reverse("login"), {"username": "carol", "password": "a-long-test-pass-42"}
    )
    assert response.status_code == 302 and "_auth_user_id" in client.session


# --- Organizations --------------------------------------------------------------------------


def test_owned_organization_limit_in_the_browser_and_the_api(
    org_a, web_client, api_client_for, settings
):
    settings.MAX_OWNED_ORGANIZATIONS = 2
    owner = owner_of(org_a)
    api = api_client_for(org_a)
    assert api.post("/api/v1/organizations", {"name": "Second"}).status_code == 201
    response = api.post("/api/v1/organizations", {"name": "Third"})
    assert response.status_code == 400
    assert "the most one account may own (2)" in str(response.json())
    page = web_client(owner, org_a).post(reverse("portal:organizations"), {"name": "Third"})
    assert page.status_code == 400 and "the most one account may own" in page.content.decode()
    assert not Organization.objects.filter(name="Third").exists()


@pytest.mark.parametrize("status", ["suspended", "past_due"])
def test_owner_of_a_blocked_organization_cannot_start_another(
    status, org_a, web_client, api_client_for
):
    BillingAccount.objects.create(organization=org_a, status=status)
    words = "suspended" if status == "suspended" else "past due"
    response = api_client_for(org_a).post("/api/v1/organizations", {"name": "Fresh start"})
    assert response.status_code == 400 and f"is {words}" in str(response.json())
    page = web_client(owner_of(org_a), org_a).post(
        reverse("portal:organizations"), {"name": "Fresh start"}
    )
    assert page.status_code == 400 and f"“Alpha” is {words}" in page.content.decode()
    assert not Organization.objects.filter(name="Fresh start").exists()


def test_a_member_of_a_blocked_organization_may_still_create_their_own(
    org_a, make_user, add_member, web_client
):
    BillingAccount.objects.create(organization=org_a, status="suspended")
    member = make_user("dev")
    add_member(org_a, member)
    page = web_client(member, org_a).post(reverse("portal:organizations"), {"name": "Mine"})
    assert page.status_code == 302 and Organization.objects.filter(name="Mine").exists()


def test_new_organizations_get_the_default_plan_not_unlimited(org_a, api_client_for):
    plan = Plan.objects.get(is_default=True)
    rows = {r["name"]: r for r in api_client_for(org_a).get("/api/v1/quotas").json()}
    assert rows["deployments"]["limit"] == plan.max_deployments is not None
    assert rows["monthly_spend_cents"]["limit"] == plan.monthly_spend_limit_cents is not None


def test_an_operator_edited_plan_applies_to_new_organizations(make_org, db):
    plan = Plan.objects.get(is_default=True)
    plan.max_deployments = 2
    plan.max_gpus_per_type = 1
    plan.gpu_types = "h100-80gb, cpu"
    plan.save()
    quota = quota_get_or_create(make_org("gamma"))
    assert quota.max_deployments == 2
    assert {(g.gpu_type, g.max_gpus) for g in quota.gpu_limits.all()} == {
        ("h100-80gb", 1),
        ("cpu", 1),
    }
    assert Quota.objects.filter(organization__slug="gamma").count() == 1
