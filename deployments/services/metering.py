"""GPU time of replicas into billing's ledger, and giving their GPUs back.

Owns: ``replica_meter`` (what a replica ran, since it was last metered) and
``release_replica_gpus``. The reconciler and the local-pool shutdown both call them; neither
needs a reconcile pass to do so.

Invariants:
* Metering is idempotent: billing keys each minute window by replica and window start, and
  ``Replica.metered_until`` only moves forward to what the ledger covers, so a repeated call
  (or one killed half-way) never counts a second twice.
* A replica's GPUs are released exactly once: the release zeroes ``Replica.gpus`` under the
  replica's row lock in the same transaction that gives them back to the node.
"""

from datetime import datetime

from django.db import transaction
from django.db.models import F

from billing import services as billing
from deployments.models import Deployment, Node, Replica


def replica_meter(
    replica: Replica, end: datetime, *, deployment: Deployment | None = None, final: bool = False
) -> None:
    """GPU time from ready (or where metering last stopped) to `end`, in minute windows.
    Only complete windows are written unless `final` (the replica stopped)."""
    r = replica
    start = r.metered_until or r.ready_at
    if start is None or end <= start:
        return
    d = deployment or r.deployment
    covered = billing.meter_gpu_time(
        organization_id=d.organization_id,
        source=f"replica-{r.pk}",
        deployment_id=d.pk,
        deployment_name=d.name,
        region=r.region.code,
        gpu_type=d.gpu_type.code,
        # A replica whose GPUs were already released still ran on its deployment's share.
        gpus=max(r.gpus, d.gpus_per_replica),
        start=start,
        end=end,
        final=final,
    )
    if covered > start:
        Replica.objects.filter(pk=r.pk).update(metered_until=covered)
        r.metered_until = covered


def release_replica_gpus(replica_id: int) -> int:
    """Give a replica's GPUs (and their indices) back to its node, once. Returns how many
    were released."""
    with transaction.atomic():
        r = Replica.objects.select_for_update().filter(pk=replica_id).first()
        if r is None or r.gpus == 0:
            return 0
        released = r.gpus
        Node.objects.filter(pk=r.node_id).update(gpus_allocated=F("gpus_allocated") - released)
        Replica.objects.filter(pk=r.pk).update(gpus=0, gpu_indices=[])
        return released
