from celery import shared_task


@shared_task(
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(OSError,),
    retry_backoff=True,
    max_retries=5,
)
def send_invitation(invitation_id: int) -> None:
    from portal.services import invitation_send

    invitation_send(invitation_id=invitation_id)


@shared_task(acks_late=True)
def purge_expired_invitations() -> None:
    from portal.services import invitation_purge_expired

    invitation_purge_expired()
