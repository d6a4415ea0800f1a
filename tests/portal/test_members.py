from django.core import mail
from django.urls import reverse

from portal.models import Invitation, Membership, Role
from portal.services import invitation_send, invitation_token
from tests.conftest import owner_of


def test_owner_invites_by_email_and_invitee_joins_with_the_role(
    org_a, web_client, make_user, client, django_capture_on_commit_callbacks
):
    owner_client = web_client(owner_of(org_a), org_a)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = owner_client.post(
            reverse("portal:members"),
            {"email": "Newbie@Example.com", "role": "admin"},
            HTTP_HX_REQUEST="true",
        )
    assert response.status_code == 200 and "newbie@example.com" in response.content.decode()
    assert len(callbacks) == 1  # the mail is enqueued after commit, not inside the write
    invitation = Invitation.objects.get(organization=org_a)
    assert invitation_send(invitation_id=invitation.pk) is True
    assert invitation_send(invitation_id=invitation.pk) is False  # mailed once only
    assert len(mail.outbox) == 1 and invitation_token(invitation)[:20] in mail.outbox[0].body

    newbie = make_user("newbie", email="newbie@example.com")
    client.force_login(newbie)
    url = reverse("portal:invitation_accept", args=[invitation_token(invitation)])
    assert "Join Alpha" in client.get(url).content.decode()
    assert client.post(url).status_code == 302
    assert Membership.objects.get(organization=org_a, user=newbie).role == Role.ADMIN
    assert client.post(url).status_code == 400  # used


def test_invitation_for_someone_else_is_refused(org_a, make_user, client):
    invitation = Invitation.objects.create(organization=org_a, email="right@example.com")
    client.force_login(make_user("wrong", email="wrong@example.com"))
    url = reverse("portal:invitation_accept", args=[invitation_token(invitation)])
    response = client.post(url)
    assert response.status_code == 400 and "right@example.com" in response.content.decode()
    assert not Membership.objects.filter(organization=org_a, user__username="wrong").exists()


def test_forged_invitation_link_is_refused(client, db):
    response = client.get(reverse("portal:invitation_accept", args=["forged.token:abc"]))
    assert response.status_code == 400 and "not valid" in response.content.decode()


def test_bad_invitation_input_names_the_field(org_a, api_client_for):
    api = api_client_for(org_a)
    response = api.post("/api/v1/invitations", {"email": "nope", "role": "king"}, format="json")
    assert response.status_code == 400
    assert set(response.json()) == {"email", "role"}
    assert not Invitation.objects.exists()


def test_last_owner_cannot_be_demoted_or_removed(org_a, api_client_for):
    api = api_client_for(org_a)
    me = Membership.objects.get(organization=org_a, role=Role.OWNER)
    response = api.patch(f"/api/v1/members/{me.pk}", {"role": "member"}, format="json")
    assert response.status_code == 400 and "at least one owner" in response.json()["role"][0]
    assert api.delete(f"/api/v1/members/{me.pk}").status_code == 400
    assert Membership.objects.get(pk=me.pk).role == Role.OWNER


def test_admin_cannot_make_owners_but_owner_can(org_a, make_user, add_member, api_client_for):
    admin = add_member(org_a, make_user("adm"), Role.ADMIN)
    member = add_member(org_a, make_user("mem"), Role.MEMBER)
    admin_api = api_client_for(org_a, admin.user)
    response = admin_api.patch(f"/api/v1/members/{member.pk}", {"role": "owner"}, format="json")
    assert response.status_code == 400 and "Only an owner" in response.json()["role"][0]
    owner_api = api_client_for(org_a)
    response = owner_api.patch(f"/api/v1/members/{member.pk}", {"role": "owner"}, format="json")
    assert response.status_code == 200 and response.json()["role"] == "owner"


def test_member_and_billing_roles_cannot_manage_members(
    org_a, make_user, add_member, api_client_for, web_client
):
    for role in (Role.MEMBER, Role.BILLING):
        m = add_member(org_a, make_user(f"r-{role}"), role)
        api = api_client_for(org_a, m.user)
        response = api.post("/api/v1/invitations", {"email": "x@example.com"}, format="json")
        assert response.status_code == 403
        client = web_client(m.user, org_a)
        page = client.get(reverse("portal:members")).content.decode()
        assert "Invite someone" not in page
        assert client.post(reverse("portal:members"), {"email": "y@example.com"}).status_code == 403
    assert not Invitation.objects.exists()


def test_role_change_through_the_page(org_a, make_user, add_member, web_client):
    m = add_member(org_a, make_user("pat"), Role.MEMBER)
    client = web_client(owner_of(org_a), org_a)
    response = client.post(
        reverse("portal:member_update", args=[m.pk]), {"role": "billing"}, HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 200 and "pat is now billing" in response.content.decode()
    m.refresh_from_db()
    assert m.role == Role.BILLING


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_running_the_invitation_task_twice_sends_one_mail(org_a):
    from portal.tasks import send_invitation

    invitation = Invitation.objects.create(organization=org_a, email="twice@example.com")
    send_invitation.apply(args=[invitation.pk]).get()
    send_invitation.apply(args=[invitation.pk]).get()
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["twice@example.com"]
    assert Invitation.objects.get(pk=invitation.pk).sent_at is not None


def test_a_refused_mail_releases_its_claim_so_the_retry_sends_it(org_a, settings):
    import pytest

    invitation = Invitation.objects.create(organization=org_a, email="later@example.com")
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", _closed_port()
    settings.EMAIL_TIMEOUT = 5
    with pytest.raises(OSError):  # nothing listens: the real SMTP client is refused
        invitation_send(invitation_id=invitation.pk)
    assert Invitation.objects.get(pk=invitation.pk).sent_at is None
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    assert invitation_send(invitation_id=invitation.pk) is True
    assert invitation_send(invitation_id=invitation.pk) is False
    assert len(mail.outbox) == 1


def test_an_accepted_invitation_is_not_mailed(org_a, make_user):
    from django.utils import timezone

    invitation = Invitation.objects.create(
        organization=org_a, email="done@example.com", accepted_at=timezone.now()
    )
    assert invitation_send(invitation_id=invitation.pk) is False
    assert mail.outbox == [] and Invitation.objects.get(pk=invitation.pk).sent_at is None
