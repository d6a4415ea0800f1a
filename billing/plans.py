"""Admission of new organizations, and the plan their quota starts from.

Tenancy (``portal``) cannot import billing, so ``portal.services.organization_create``
calls the functions named in ``settings.ORGANIZATION_CREATED_HOOKS`` inside its
transaction; raising ``ValidationError`` there refuses the organization and nothing of it
is written.
"""

from django.core.exceptions import ValidationError
from django.db import transaction

from billing.models import BillingAccount, GpuQuota, Plan, Quota
from portal.models import Organization, Role

BLOCKING_STATUSES = (BillingAccount.Status.SUSPENDED, BillingAccount.Status.PAST_DUE)


# The plan migration 0006 seeds; ensure_default_plan puts it back (a flushed test database).
STARTER_PLAN = {"name": "starter", "max_deployments": 50, "monthly_spend_limit_cents": 50_000}


def default_plan() -> Plan | None:
    return Plan.objects.filter(is_default=True).first()


def ensure_default_plan() -> Plan:
    plan = default_plan()
    if plan is None:
        values = dict(STARTER_PLAN)
        plan, _ = Plan.objects.get_or_create(
            name=values.pop("name"), defaults={**values, "is_default": True}
        )
    return plan


def organization_admission_check(*, owner, exclude: Organization | None = None) -> None:
    """Refuse a new organization while another one its owner owns is suspended or past
    due, so an owner cannot leave a debt behind by starting afresh."""
    accounts = BillingAccount.objects.filter(
        status__in=BLOCKING_STATUSES,
        organization__memberships__user=owner,
        organization__memberships__role=Role.OWNER,
    ).select_related("organization")
    if exclude is not None:
        accounts = accounts.exclude(organization=exclude)
    blocked = accounts.order_by("organization__slug").first()
    if blocked is not None:
        raise ValidationError(
            f"Your organization “{blocked.organization.name}” is "
            f"{blocked.get_status_display().lower()}; settle its account before creating "
            "another organization."
        )


def quota_get_or_create(organization: Organization) -> Quota:
    """The organization's quota; made from the default plan the first time it is needed,
    so no organization is ever without limits unless an operator clears them."""
    quota = Quota.objects.filter(organization=organization).first()
    if quota is not None:
        return quota
    plan = default_plan()
    values = {}
    if plan is not None:
        values = {
            "max_deployments": plan.max_deployments,
            "monthly_spend_limit_cents": plan.monthly_spend_limit_cents,
        }
    with transaction.atomic():
        quota, created = Quota.objects.get_or_create(organization=organization, defaults=values)
        if created and plan is not None and plan.max_gpus_per_type is not None:
            GpuQuota.objects.bulk_create(
                GpuQuota(quota=quota, region="", gpu_type=code, max_gpus=plan.max_gpus_per_type)
                for code in dict.fromkeys(c.strip() for c in plan.gpu_types.split(","))
                if code
            )
    return quota


def organization_admit(*, organization: Organization, owner) -> None:
    """The hook ``organization_create`` calls. The quota is not made here: every reader
    takes it through ``quota_get_or_create``, which applies the default plan then."""
    organization_admission_check(owner=owner, exclude=organization)
