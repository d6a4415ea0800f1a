"""The lease that keeps two reconcile passes of one deployment apart.

A conditional UPDATE on the deployment row takes it, so the database decides between racing
passes without a lock held across the driver calls that follow. A lease whose holder died
on this host is taken over at once; elsewhere, once it expires.
"""

import logging
import os
import socket
import threading
from datetime import timedelta

from django.db.models import Q
from django.utils import timezone

from deployments.models import Deployment

log = logging.getLogger("deployments.services")

# Longer than any pass takes, so a live holder never loses its lease mid-pass; a holder
# that died elsewhere blocks the deployment for at most this long.
LEASE = timedelta(seconds=120)


def lease_holder_name() -> str:
    # Host, process and thread: a dead holder on this host can then be recognised (and its
    # lease taken at once), and two threads of one worker never share a lease.
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


def holder_dead(owner: str) -> bool:
    try:
        host, pid, _thread = owner.rsplit(":", 2)
        if host != socket.gethostname():
            return False
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (ValueError, PermissionError):
        return False
    return False


def lease_acquire(deployment_id: int) -> str | None:
    me, now = lease_holder_name(), timezone.now()
    # One conditional UPDATE takes the lease: the database decides between racing passes,
    # without a lock held across the driver calls that follow.
    free = Q(lease_until__isnull=True) | Q(lease_until__lt=now) | Q(lease_owner=me)
    if Deployment.objects.filter(free, pk=deployment_id).update(
        lease_owner=me, lease_until=now + LEASE
    ):
        return me
    holder = (
        Deployment.objects.filter(pk=deployment_id).values_list("lease_owner", flat=True).first()
    )
    if (
        holder
        and holder_dead(holder)
        # Conditional on the dead holder still owning it, so two passes that both saw it
        # die cannot both take over.
        and Deployment.objects.filter(pk=deployment_id, lease_owner=holder).update(
            lease_owner=me, lease_until=now + LEASE
        )
    ):
        log.warning("deployment %s: took over the lease of dead %s", deployment_id, holder)
        return me
    return None


def lease_release(deployment_id: int, me: str) -> None:
    # Only our own: a pass that overran its lease must not free a successor's.
    Deployment.objects.filter(pk=deployment_id, lease_owner=me).update(
        lease_owner="", lease_until=None
    )
