"""The catalog's model files an organization may deploy (read by deployments through
``GANTRY_ARTIFACT_SOURCES``): those the public catalog's profiles and the organization's
own private entries name."""

from django.db.models import Q

from marketplace.models import ServingProfile


def organization_artifacts(organization):
    from deployments.artifacts import Artifacts

    found = Artifacts()
    refs = (
        ServingProfile.objects.filter(
            Q(model__organization__isnull=True) | Q(model__organization=organization)
        )
        .exclude(model_ref="")
        .values_list("model_ref", flat=True)
        .distinct()
    )
    for ref in refs:
        found.models[ref] = ref
    # The hub weights each profile deploys (fetched into the weights cache on deploy).
    profiles = ServingProfile.objects.filter(
        Q(model__organization__isnull=True) | Q(model__organization=organization)
    ).select_related("model")
    for profile in profiles:
        ref = profile_weights_ref(profile)
        if ref:
            found.models[ref] = ref
    return found


def profile_weights(profile: ServingProfile) -> tuple[str, str, str] | None:
    """(repo, revision, file) of the hub weights a deploy of this profile fetches: the GGUF
    file for llama.cpp (from ``weights_repo``), the safetensors snapshot for vLLM/SGLang;
    None when nothing is fetched (the demo model, a file an operator placed)."""
    revision = profile.weights_revision or "main"
    if profile.engine == "llama.cpp":
        name = profile.model_ref
        if not profile.weights_repo or not name.endswith(".gguf") or "/" in name:
            return None
        return profile.weights_repo, revision, name
    repo = profile.weights_repo or profile.model_ref or profile.model.hf_repo
    if not repo or repo.startswith(("demo:", "hub:", "/")) or repo.count("/") != 1:
        return None
    return repo, revision, ""


def profile_weights_ref(profile: ServingProfile) -> str:
    from deployments.services.weights import hub_ref

    found = profile_weights(profile)
    return hub_ref(*found) if found else ""
