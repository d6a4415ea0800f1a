"""The tenancy matrix: every organization-owned URL, HTML and API.

Each entry names a URL (by its Django name), the methods that reach it, and a factory
that creates the object inside a *victim* organization and returns the URL kwargs.
The matrix test asks each URL as a member of another organization and expects 404 —
and the victim's object unchanged. A completeness test walks the URL configuration and
fails when a URL with an object in its path is neither here nor in ``EXEMPT``, so no
new URL escapes. Later capabilities append their entries with ``register``.
"""

from collections.abc import Callable
from dataclasses import dataclass

from django.forms.models import model_to_dict

from portal.models import Invitation, Membership, Organization, Role


@dataclass(frozen=True)
class OrgUrl:
    name: str
    methods: tuple[str, ...]
    # (victim org, a member of it) -> (url kwargs, the object that must stay unchanged)
    make: Callable
    api: bool = False


MATRIX: list[OrgUrl] = []

# URLs with a path parameter that are not organization-owned objects, and why.
EXEMPT: dict[str, str] = {
    "portal:invitation_accept": "signed token, not an object id; bad tokens get 400",
    "schema": "format parameter of the OpenAPI document",
}


def register(name: str, methods: tuple[str, ...], make: Callable, api: bool = False) -> None:
    MATRIX.append(OrgUrl(name=name, methods=methods, make=make, api=api))


def snapshot(obj) -> dict | None:
    if obj is None:
        return None
    fresh = type(obj).objects.filter(pk=obj.pk).first()
    return model_to_dict(fresh) if fresh is not None else None


# --- portal ---------------------------------------------------------------------------


def _api_key(org: Organization, member):
    from portal.services import api_key_create

    key, _raw = api_key_create(organization=org, user=member, name="victim")
    return {"pk": key.pk}, key


def _membership(org: Organization, member):
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_user(
        username=f"victim-{org.slug}-{Membership.objects.count()}", password="x-long-pass-42"
    )
    m = Membership.objects.create(organization=org, user=user, role=Role.MEMBER)
    return {"pk": m.pk}, m


def _invitation(org: Organization, member):
    inv = Invitation.objects.create(
        organization=org,
        email=f"victim{Invitation.objects.count()}@example.com",
        invited_by=member,
    )
    return {"pk": inv.pk}, inv


def _org_slug(org: Organization, member):
    return {"slug": org.slug}, org


register("portal:api_key_revoke", ("POST",), _api_key)
register("portal:member_update", ("POST",), _membership)
register("portal:member_remove", ("POST",), _membership)
register("portal:invitation_revoke", ("POST",), _invitation)
register("portal:org_switch", ("POST",), _org_slug)
register("api:apikey-detail", ("GET", "DELETE"), _api_key, api=True)
register("api:member-detail", ("GET", "PATCH", "DELETE"), _membership, api=True)
register("api:invitation-detail", ("DELETE",), _invitation, api=True)


# --- deployments ----------------------------------------------------------------------


def _deployment(org: Organization, member):
    from deployments.models import Deployment, GpuType

    d = Deployment.objects.create(
        organization=org,
        name=f"victim-{Deployment.objects.count()}",
        model_ref="demo:tiny-random-llama",
        gpu_type=GpuType.objects.get(code="cpu"),
        regions=["local"],
    )
    return {"pk": d.pk}, d


def _replica(org: Organization, member):
    from deployments.models import Driver, GpuPool, GpuType, Node, Region, Replica

    _kwargs, d = _deployment(org, member)
    region, _ = Region.objects.get_or_create(code="victim-region", defaults={"name": "v"})
    pool, _ = GpuPool.objects.get_or_create(
        region=region,
        name="p",
        defaults={"driver": Driver.LOCAL, "gpu_type": GpuType.objects.get(code="cpu")},
    )
    node, _ = Node.objects.get_or_create(pool=pool, name="n", defaults={"gpus_total": 1})
    r = Replica.objects.create(
        deployment=d,
        ordinal=0,
        region=region,
        pool=pool,
        node=node,
        gpus=0,
        status="stopped",
        handle="gantry-r999999",
    )
    return {"pk": d.pk, "replica_pk": r.pk}, d


for _name in (
    "deployments:detail",
    "deployments:scale",
    "deployments:stop",
    "deployments:start",
    "deployments:delete",
    "deployments:weights_retry",
    "deployments:serving",
    "deployments:playground_token",
):
    register(_name, ("GET",) if _name == "deployments:detail" else ("POST",), _deployment)
register("deployments:playground_cost", ("GET",), _deployment)
register("deployments:replica_logs", ("GET",), _replica)
register("api:deployment-detail", ("GET", "DELETE"), _deployment, api=True)
register("api:deployment-scale", ("POST",), _deployment, api=True)
register("api:deployment-stop", ("POST",), _deployment, api=True)
register("api:deployment-start", ("POST",), _deployment, api=True)
register("api:deployment-events", ("GET",), _deployment, api=True)
register("api:deployment-weights-retry", ("POST",), _deployment, api=True)
register("api:deployment-serving", ("POST",), _deployment, api=True)
register("api:deployment-playground-token", ("POST",), _deployment, api=True)
register("api:deployment-traffic", ("GET",), _deployment, api=True)


def _replica_api(org: Organization, member):
    kwargs, d = _replica(org, member)
    return {"pk": kwargs["pk"], "replica_id": kwargs["replica_pk"]}, d


register("api:deployment-logs", ("GET",), _replica_api, api=True)


# --- marketplace ----------------------------------------------------------------------


def _private_model(org: Organization, member):
    from marketplace.models import CatalogModel

    m = CatalogModel.objects.create(
        organization=org,
        slug=f"private-{org.slug}",
        name="Private",
        family="other",
        parameters_b=1,
        context_length=4096,
        license="proprietary",
        num_layers=1,
        hidden_size=1,
        num_heads=1,
        num_kv_heads=1,
        head_dim=1,
    )
    return {"slug": m.slug}, m


register("marketplace:model", ("GET",), _private_model)
register("marketplace:deploy", ("GET", "POST"), _private_model)
register("api:model-detail", ("GET",), _private_model, api=True)


# --- builder --------------------------------------------------------------------------


def _build(org: Organization, member):
    from builder.models import Build

    b = Build.objects.create(
        organization=org,
        created_by=member,
        name=f"victim-{org.slug}",
        source_kind="huggingface",
        repo_id="acme/x",
        engine="vllm",
        facts={"architecture": "LlamaForCausalLM"},
    )
    return {"pk": b.pk}, b


register("builder:detail", ("GET",), _build)
register("builder:configure", ("POST",), _build)
register("builder:start", ("POST",), _build)
register("api:build-detail", ("GET",), _build, api=True)


# --- billing --------------------------------------------------------------------------


def _invoice(org: Organization, member):
    from datetime import date

    from billing.models import Invoice

    inv = Invoice.objects.create(organization=org, period_start=date(2026, 1, 1))
    return {"pk": inv.pk}, inv


register("api:invoice-detail", ("GET",), _invoice, api=True)
register("billing:invoice", ("GET",), _invoice)


# --- lab: tunings ---------------------------------------------------------------------


def _tuning(org: Organization, member):
    from lab.models import Tuning

    t = Tuning.objects.create(
        organization=org,
        created_by=member,
        model_label="victim model",
        model_ref="demo:tiny-random-llama",
        engine="llama.cpp",
        engine_version="0.3.36",
        gpu_types=["cpu"],
        objective="max_throughput_under_slo",
        budget={"trials": 3},
    )
    return {"pk": t.pk}, t


def _tuning_action(org: Organization, member):
    kwargs, t = _tuning(org, member)
    return {**kwargs, "verb": "cancel"}, t


register("lab:tuning", ("GET",), _tuning)
register("lab:tuning_action", ("POST",), _tuning_action)
register("api:tuning-detail", ("GET",), _tuning, api=True)
register("api:tuning-cancel", ("POST",), _tuning, api=True)
register("api:tuning-deploy", ("POST",), _tuning, api=True)
register("api:tuning-publish", ("POST",), _tuning, api=True)
# --- lab ------------------------------------------------------------------------------


def _benchmark(org: Organization, member):
    from lab.models import Benchmark

    _kwargs, d = _deployment(org, member)
    b = Benchmark.objects.create(organization=org, created_by=member, deployment=d)
    return {"pk": b.pk}, b


register("lab:benchmark", ("GET",), _benchmark)
register("lab:benchmark_cancel", ("POST",), _benchmark)
register("api:benchmark-detail", ("GET",), _benchmark, api=True)
register("api:benchmark-cancel", ("POST",), _benchmark, api=True)
