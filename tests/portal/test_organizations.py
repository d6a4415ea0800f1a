import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from portal.models import Membership, Organization, Role
from tests.conftest import owner_of


def test_signup_creates_a_personal_org_and_signs_in(client, db):
    response = client.post(
        reverse("portal:signup"),
        {"username": "ada", "email": "ada@example.com", "password": "correct-horse-battery"},
    )
    assert response.status_code == 302
    user = get_user_model().objects.get(username="ada")
    membership = Membership.objects.get(user=user)
    assert membership.role == Role.OWNER and membership.organization.personal
    page = client.get(reverse("portal:dashboard")).content.decode()
    assert "ada" in page and "personal organization" in page


def test_signup_refuses_weak_password_and_taken_name_naming_fields(client, make_user):
    make_user("taken")
    response = client.post(
        reverse("portal:signup"),
        {"username": "taken", "email": "x@example.com", "password": "123"},
    )
    body = response.content.decode()
    assert response.status_code == 400
    assert "username: That username is taken." in body
    assert "password:" in body
    assert not Organization.objects.filter(slug="taken-2").exists()


def test_anonymous_visitor_sees_the_landing_page(client, db):
    response = client.get("/")
    assert response.status_code == 200 and "Sign up" in response.content.decode()


def test_user_creates_and_switches_organizations(org_a, web_client):
    owner = owner_of(org_a)
    client = web_client(owner, org_a)
    response = client.post(reverse("portal:organizations"), {"name": "Research Lab", "slug": ""})
    assert response.status_code == 302
    lab = Organization.objects.get(slug="research-lab")
    assert Membership.objects.get(organization=lab, user=owner).role == Role.OWNER
    assert "Research Lab" in client.get("/").content.decode()  # now current
    client.post(reverse("portal:org_switch", args=["alpha"]))
    assert "<h1>Alpha</h1>" in client.get("/").content.decode()


def test_bad_org_slug_is_refused_with_the_field_named(org_a, web_client, api_client_for):
    client = web_client(owner_of(org_a), org_a)
    response = client.post(reverse("portal:organizations"), {"name": "X", "slug": "Bad Slug!"})
    assert "slug:" in response.content.decode()
    api = api_client_for(org_a)
    response = api.post("/api/v1/organizations", {"name": "X", "slug": "alpha"}, format="json")
    assert response.status_code == 400 and "taken" in response.json()["slug"][0]


def test_pages_show_only_the_current_orgs_objects(org_a, org_b, web_client, api_client_for):
    api_client_for(org_b)  # a key in bravo
    client = web_client(owner_of(org_a), org_a)
    page = client.get(reverse("portal:api_keys")).content.decode()
    assert "No keys yet." in page
    members = client.get(reverse("portal:members")).content.decode()
    assert "bravo-owner" not in members and "alpha-owner" in members


@pytest.mark.parametrize("url_name", ["portal:api_keys", "portal:members"])
def test_list_pages_keep_a_constant_query_count(
    url_name,
    org_a,
    web_client,
    make_user,
    add_member,
    api_client_for,
    django_assert_max_num_queries,
):
    for i in range(30):
        user = make_user(f"m{i}")
        add_member(org_a, user)
        api_client_for(org_a, user)
    client = web_client(owner_of(org_a), org_a)
    with django_assert_max_num_queries(12):
        assert client.get(reverse(url_name)).status_code == 200


@pytest.mark.parametrize("path", ["/api/v1/keys", "/api/v1/members", "/api/v1/organizations"])
def test_list_apis_keep_a_constant_query_count(
    path, org_a, make_user, add_member, api_client_for, django_assert_max_num_queries
):
    for i in range(30):
        user = make_user(f"m{i}")
        add_member(org_a, user)
        api_client_for(org_a, user)
    api = api_client_for(org_a)
    with django_assert_max_num_queries(8):
        assert api.get(path).status_code == 200
