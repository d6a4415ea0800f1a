"""What an organization's builds and uploads let it deploy (read by deployments through
``GANTRY_ARTIFACT_SOURCES``): the weights each build or upload holds, and the images its
builds produced — by tag and, once pushed, by digest."""

from pathlib import Path

from builder.models import Build, BuildStatus, Upload


def organization_artifacts(organization):
    from deployments.artifacts import Artifacts

    found = Artifacts()
    builds = Build.objects.filter(organization=organization).exclude(engine="")
    for build in builds.select_related("catalog_model"):
        if build.status == BuildStatus.SUCCEEDED and build.image:
            found.images.add(build.image)
            repo, _, _tag = build.image.rpartition(":")
            if build.digest.startswith("sha256:") and repo and "/" in repo:
                found.images.add(f"{repo}@{build.digest}")
        if build.catalog_model_id is None:
            continue
        # The build registered its weights as its private catalog entry's model.
        for ref in build.catalog_model.profiles.values_list("model_ref", flat=True):
            if ref:
                found.models[f"build:{build.pk}"] = ref
                found.models[ref] = ref
    for upload in Upload.objects.filter(organization=organization).exclude(path=""):
        if upload.kind == Upload.Kind.FOLDER:
            found.models[f"upload:{upload.pk}"] = upload.path
            continue
        files = sorted(Path(upload.path).glob("*.gguf"))
        if files:
            found.models[f"upload:{upload.pk}"] = str(files[0])
    return found
