"""Deployment sources: what a deployment can be made from besides the raw engine fields.

POST /api/v1/deployments takes `model` (a catalog slug) or `build` (a build id). Those
belong to the marketplace and the builder, which sit above this app; `deployments` may not
import them. So they register here, from their `AppConfig.ready()`, a function that turns
the value into a Deployment (through `deployments.services.deployment_create`), and this
app's API looks the field up by name. A registry rather than routing a composed viewset in
`portal/urls.py`: the endpoint, its input and its schema then live in one place, and an app
that is not installed simply contributes no field.
"""

from collections.abc import Callable
from dataclasses import dataclass

from deployments.models import Deployment


@dataclass(frozen=True)
class DeploymentSource:
    field: str
    help_text: str
    # deploy(*, org, user, value, profile, regions, name, min_replicas, max_replicas,
    #        replicas, autoscale_target, scale_to_zero_after_s) -> Deployment;
    # raises ValidationError naming its field for a value it cannot deploy.
    deploy: Callable[..., Deployment]


_SOURCES: dict[str, DeploymentSource] = {}


def source_register(*, field: str, help_text: str, deploy: Callable[..., Deployment]) -> None:
    """Idempotent per field, since `ready()` may run more than once in tests."""
    _SOURCES[field] = DeploymentSource(field=field, help_text=help_text, deploy=deploy)


def source_list() -> list[DeploymentSource]:
    return sorted(_SOURCES.values(), key=lambda s: s.field)


def source_deploy(*, field: str, **kwargs) -> Deployment:
    """Deploy from the source registered for `field` (one `source_list()` offered)."""
    return _SOURCES[field].deploy(**kwargs)
