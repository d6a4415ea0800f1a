"""How a deployment serves: its routing policy and what its autoscaler watches.

Owns: ``Deployment.routing_policy``, ``autoscale_metric``, ``autoscale_target``,
``scale_up_window_s`` and ``scale_down_window_s``. The gateway reads the policy with its
route table (within GATEWAY_ROUTE_TTL_S), the autoscaler the rest on its next run.

Every value is checked whole before anything is written: exact choice names (no prefixes,
no other case), whole numbers in range (never booleans or fractions).
"""

from django.core.exceptions import ValidationError
from django.db import transaction

from deployments.models import AutoscaleMetric, Deployment, RoutingPolicy
from deployments.services.events import event

# What a target means per metric, and the values it may take.
TARGET_RANGES = {
    AutoscaleMetric.IN_FLIGHT: (1, 10_000, "requests in flight per replica"),
    AutoscaleMetric.QUEUE_DEPTH: (1, 10_000, "requests queued per replica"),
    AutoscaleMetric.KV_CACHE: (1, 100, "% of the KV cache used per replica"),
    AutoscaleMetric.TTFT_P95: (10, 600_000, "ms TTFT p95 (the SLO)"),
}
MAX_WINDOW_S = 3600
UNSET = object()


def _whole(errors: dict, name: str, value, low: int, high: int) -> int | None:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        errors[name] = f"Give a whole number from {low} to {high}."
        return None
    if not low <= value <= high:
        errors[name] = f"Must be from {low} to {high}; got {value}."
        return None
    return value


def _choice(errors: dict, name: str, value, choices) -> str | None:
    allowed = [c.value for c in choices]
    if not isinstance(value, str) or value not in allowed:
        errors[name] = f"Choose one of: {', '.join(allowed)}."
        return None
    return value


@transaction.atomic
def deployment_serving_update(
    *,
    deployment: Deployment,
    routing_policy=UNSET,
    autoscale_metric=UNSET,
    autoscale_target=UNSET,
    scale_up_window_s=UNSET,
    scale_down_window_s=UNSET,
) -> Deployment:
    """Change what is given (UNSET: leave it); `autoscale_target` None turns autoscaling
    on load off (scale-to-zero stays as it is)."""
    d = Deployment.objects.select_for_update().get(pk=deployment.pk)
    errors: dict[str, str] = {}
    values: dict = {}
    if routing_policy is not UNSET:
        values["routing_policy"] = _choice(errors, "routing_policy", routing_policy, RoutingPolicy)
    metric: str | None = d.autoscale_metric
    if autoscale_metric is not UNSET:
        metric = _choice(errors, "autoscale_metric", autoscale_metric, AutoscaleMetric)
        values["autoscale_metric"] = metric
    if autoscale_target is not UNSET and metric is not None:
        if autoscale_target is None or autoscale_target == "":
            values["autoscale_target"] = None
        else:
            low, high, _ = TARGET_RANGES[AutoscaleMetric(metric)]
            values["autoscale_target"] = _whole(
                errors, "autoscale_target", autoscale_target, low, high
            )
    elif autoscale_metric is not UNSET and metric is not None and d.autoscale_target is not None:
        # A new metric with the old target: the number must make sense for the new one.
        low, high, _ = TARGET_RANGES[AutoscaleMetric(metric)]
        if not low <= d.autoscale_target <= high:
            errors["autoscale_target"] = (
                f"Give a target for {metric}: from {low} to {high}; the current one is "
                f"{d.autoscale_target}."
            )
    for name, value in (
        ("scale_up_window_s", scale_up_window_s),
        ("scale_down_window_s", scale_down_window_s),
    ):
        if value is not UNSET:
            values[name] = _whole(errors, name, value, 0, MAX_WINDOW_S)
    if errors:
        raise ValidationError(errors)
    changed = {k: v for k, v in values.items() if getattr(d, k) != v}
    if not changed:
        return d
    Deployment.objects.filter(pk=d.pk).update(**changed)
    d.refresh_from_db()
    event(d, "serving_changed", "; ".join(f"{k} = {v}" for k, v in sorted(changed.items())))
    return d


def target_meaning(deployment: Deployment) -> str:
    """What the autoscale target counts, in words ("4 requests in flight per replica")."""
    if deployment.autoscale_target is None:
        return ""
    _, _, unit = TARGET_RANGES[AutoscaleMetric(deployment.autoscale_metric)]
    return f"{deployment.autoscale_target} {unit}"
