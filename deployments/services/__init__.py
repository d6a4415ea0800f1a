"""Deployments' business operations, split by concern:

* ``lifecycle``    — desired state: create, scale, stop, start, delete; promising capacity
* ``reconcile``    — the reconciler pass that makes actual state follow desired state
* ``scaling``      — load reports, traffic counts, wake from zero, the autoscaler
* ``signals``      — engines' own load (scraped), gateways' in-flight per replica, draining
* ``serving``      — routing policy and what the autoscaler watches
* ``housekeeping`` — pool health and orphans, replica logs, local shutdown, spend-limit stop
* ``metering``     — replica GPU time into billing's ledger, releasing replica GPUs
* ``events``       — the deployment timeline and queueing a reconcile after commit

Placement is its own module (``deployments.placement``). Everything public is re-exported
here: callers import ``from deployments.services import …`` and need not know the cut.
"""

from deployments.artifacts import IMAGE_RE
from deployments.selectors import committed_gpus
from deployments.services.events import enqueue_reconcile, event, events_prune
from deployments.services.housekeeping import (
    local_pools_shutdown,
    pool_check,
    replica_logs,
    spend_limits_enforce,
)
from deployments.services.lease import LEASE
from deployments.services.lifecycle import (
    MAX_REPLICAS,
    NAME_RE,
    deployment_create,
    deployment_delete,
    deployment_scale,
    deployment_settle,
    deployment_start,
    deployment_stop,
    reserve_gpus,
)
from deployments.services.metering import release_replica_gpus, replica_meter
from deployments.services.reconcile import (
    ReconcileResult,
    deployment_reconcile,
    deployments_needing_reconcile,
)
from deployments.services.scaling import (
    autoscale,
    deployment_wake,
    load_report,
    traffic_record,
)
from deployments.services.serving import deployment_serving_update, target_meaning
from deployments.services.signals import engine_signals_scrape, replica_load_report

__all__ = [
    "IMAGE_RE",
    "LEASE",
    "MAX_REPLICAS",
    "NAME_RE",
    "ReconcileResult",
    "autoscale",
    "committed_gpus",
    "deployment_create",
    "deployment_delete",
    "deployment_reconcile",
    "deployment_scale",
    "deployment_serving_update",
    "deployment_settle",
    "deployment_start",
    "deployment_stop",
    "deployment_wake",
    "deployments_needing_reconcile",
    "engine_signals_scrape",
    "enqueue_reconcile",
    "event",
    "events_prune",
    "load_report",
    "local_pools_shutdown",
    "pool_check",
    "release_replica_gpus",
    "replica_load_report",
    "replica_logs",
    "replica_meter",
    "reserve_gpus",
    "spend_limits_enforce",
    "target_meaning",
    "traffic_record",
]
