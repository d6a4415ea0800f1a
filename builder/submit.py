"""The builder's composite operations, which both doors call: submit a build (inspect →
create → configure → start, all or nothing) and deploy a finished build.

They live beside `services.py` rather than in it because that module is past the size where
it should grow; the single steps stay there.
"""

from django.core.exceptions import ValidationError
from django.db import transaction

from builder import services
from builder.models import Build, BuildStatus
from deployments.models import Deployment
from marketplace.services import catalog_deploy


def build_submit(
    *,
    organization,
    user,
    name: str,
    source_kind: str,
    repo_id: str = "",
    revision: str = "",
    token: str = "",
    upload_id=None,
    path: str = "",
    spec: dict | None = None,
) -> Build:
    """Inspect the source and keep the build; with a `spec` (engine, engine_version,
    quantization, max_context, options, env) also configure it and queue it.

    The inspection calls the hub, so it runs before the transaction opens. Everything after
    it is one transaction: a spec that does not validate leaves no draft behind, and the
    build and prefetch tasks are enqueued only once it commits (`build_start` uses
    `on_commit`). Without a spec the wizard's next step configures the inspected draft."""
    source = {
        "source_kind": source_kind,
        "repo_id": repo_id,
        "revision": revision,
        "token": token,
        "upload_id": upload_id,
        "path": path,
    }
    services.build_name_check(organization=organization, name=name)
    inspected = services.source_inspect(organization=organization, **source)
    with transaction.atomic():
        build = services.build_create(
            organization=organization, user=user, name=name, inspected=inspected, **source
        )
        if spec is None:
            return build
        build = services.build_configure(
            build=build,
            engine=spec.get("engine") or build.engine,
            engine_version=spec.get("engine_version", ""),
            quantization=spec.get("quantization", ""),
            max_context=spec.get("max_context"),
            options=spec.get("options"),
            env=spec.get("env"),
        )
        return services.build_start(build=build)


def build_deploy(*, org, user, value, profile=None, **options) -> Deployment:
    """The builder's deployment source: `build` (an id of this organization's builds) in
    POST /api/v1/deployments. A build of another organization and a build that does not
    exist get the same answer, so the answer reveals nothing about other tenants."""
    build = None
    if str(value).isdigit():
        build = (
            Build.objects.filter(organization=org, pk=int(value))
            .select_related("catalog_model")
            .first()
        )
    if build is None:
        raise ValidationError({"build": f"No build {value!r} in this organization."})
    if build.status != BuildStatus.SUCCEEDED or build.catalog_model is None:
        raise ValidationError(
            {
                "build": f"Build {build.pk} ({build.name}) is {build.get_status_display()}, "
                "not finished; deploy it once it has succeeded."
            }
        )
    return catalog_deploy(
        org=org,
        user=user,
        model=build.catalog_model,
        profile=profile,
        source=f"build:{build.pk}",
        **options,
    )
