"""The two permission rules that used to be written in each door (revoke a key, remove a
member) now live in portal.access; both doors answer the same."""

from django.urls import reverse

from portal.models import ApiKey, Membership, Role
from portal.services import api_key_create
from tests.conftest import owner_of


def test_a_member_revokes_their_own_key_but_not_a_colleagues_in_either_door(
    org_a, make_user, add_member, api_client_for, web_client
):
    mia = add_member(org_a, make_user("mia"), Role.MEMBER).user
    own_page, _ = api_key_create(organization=org_a, user=mia, name="own-page")
    own_api, _ = api_key_create(organization=org_a, user=mia, name="own-api")
    colleague, _ = api_key_create(organization=org_a, user=owner_of(org_a), name="boss")
    page, api = web_client(mia, org_a), api_client_for(org_a, mia)
    url = reverse("portal:api_key_revoke", args=[colleague.pk])
    assert page.post(url).status_code == 403
    assert api.delete(f"/api/v1/keys/{colleague.pk}").status_code == 403
    assert ApiKey.objects.get(pk=colleague.pk).revoked_at is None
    assert page.post(reverse("portal:api_key_revoke", args=[own_page.pk])).status_code == 302
    assert api.delete(f"/api/v1/keys/{own_api.pk}").status_code == 204
    assert ApiKey.objects.filter(pk__in=[own_page.pk, own_api.pk], revoked_at=None).count() == 0


def test_an_admin_revokes_a_colleagues_key_but_another_orgs_key_answers_404(
    org_a, org_b, make_user, add_member, api_client_for, web_client
):
    adm = add_member(org_a, make_user("adm"), Role.ADMIN).user
    key, _ = api_key_create(organization=org_a, user=owner_of(org_a), name="boss")
    theirs, _ = api_key_create(organization=org_b, user=owner_of(org_b), name="theirs")
    page, api = web_client(adm, org_a), api_client_for(org_a, adm)
    assert page.post(reverse("portal:api_key_revoke", args=[theirs.pk])).status_code == 404
    assert api.delete(f"/api/v1/keys/{theirs.pk}").status_code == 404
    assert ApiKey.objects.get(pk=theirs.pk).revoked_at is None
    assert api.delete(f"/api/v1/keys/{key.pk}").status_code == 204


def test_a_member_may_leave_but_not_remove_others_in_either_door(
    org_a, org_b, make_user, add_member, api_client_for, web_client
):
    mia = add_member(org_a, make_user("mia"), Role.MEMBER)
    leo = add_member(org_a, make_user("leo"), Role.MEMBER)
    stranger = Membership.objects.get(organization=org_b)
    page, api = web_client(mia.user, org_a), api_client_for(org_a, mia.user)
    assert page.post(reverse("portal:member_remove", args=[leo.pk])).status_code == 403
    assert api.delete(f"/api/v1/members/{leo.pk}").status_code == 403
    assert page.post(reverse("portal:member_remove", args=[stranger.pk])).status_code == 404
    assert api.delete(f"/api/v1/members/{stranger.pk}").status_code == 404
    assert Membership.objects.filter(pk__in=[leo.pk, stranger.pk]).count() == 2
    response = page.post(reverse("portal:member_remove", args=[mia.pk]))
    assert response.status_code == 302 and response["Location"] == "/"
    assert not Membership.objects.filter(pk=mia.pk).exists()
