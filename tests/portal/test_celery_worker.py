from django.db import transaction

from portal.models import Invitation, Membership
from portal.services import invitation_create


def test_real_worker_runs_the_task_enqueued_on_commit(celery_worker, org_a):
    actor = Membership.objects.get(organization=org_a)
    with transaction.atomic():
        invitation = invitation_create(actor=actor, email="friend@example.com", role="member")
        # Inside the transaction nothing is enqueued yet, so the worker cannot see a
        # row that might still roll back.
        assert Invitation.objects.get(pk=invitation.pk).sent_at is None
    # The send is claimed (sent_at) before the mail goes out, so wait for the task's end.
    celery_worker.wait_for(
        lambda: "succeeded" in celery_worker.log_path.read_text(),
        what="the worker to send the invitation",
    )
    assert Invitation.objects.get(pk=invitation.pk).sent_at is not None
    mails = list(celery_worker.mail_dir.glob("*.log"))
    assert len(mails) == 1
    body = mails[0].read_text()
    assert "To: friend@example.com" in body and "/invite/" in body
