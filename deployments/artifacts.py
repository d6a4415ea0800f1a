"""What an organization may run: which model files and which images.

Models are resolved through what the organization may use — the catalog, its own builds
and uploads, and folders staff share with everyone — never through a raw path a tenant
types. A refusal reads the same whether the file is missing or belongs to someone else,
so the answer tells nothing about what exists.

Images are the operators' choice: each pool lists the images it may run (the engine
images unless staff say otherwise); besides those, an organization may run the images its
own builds produced.

The apps above this one (the catalog, the builder) say what each organization owns
through the functions named in ``GANTRY_ARTIFACT_SOURCES`` — the composition root names
them, so this layer imports none of them.
"""

import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils.module_loading import import_string

from deployments.engines import (
    BENCH_MODEL_REF,
    DEMO_MODEL_REF,
    DEMO_MODEL_REFS,
    model_dirs,
    weights_progress,
)

IMAGE_RE = re.compile(r"^[a-z0-9]+([._/:@-][a-zA-Z0-9_.-]+)*$")
# owner/name, each starting with a letter or digit: never ".", ".." or a path an engine
# would read from its working folder instead of fetching from the hub.
HF_REPO_RE = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
SHARED_PREFIX = "shared:"
MODEL_REFUSED = (
    "Not a model this organization may use. Choose the demo model "
    f"({DEMO_MODEL_REF}) or the bench model ({BENCH_MODEL_REF}), a catalog model, one of "
    "your own builds (build:<id>) or uploads (upload:<id>), a file in a shared model "
    "folder (shared:<path>), or a Hugging Face repo id for vLLM/SGLang."
)


@dataclass
class Artifacts:
    """What one organization owns. ``models`` maps what a tenant may write as
    ``model_ref`` to what the engine loads (a path, a bare catalog file name or a repo
    id); ``images`` holds the image references its builds produced."""

    models: dict[str, str] = field(default_factory=dict)
    images: set[str] = field(default_factory=set)


def organization_artifacts(organization) -> Artifacts:
    merged = Artifacts()
    for dotted in settings.GANTRY_ARTIFACT_SOURCES:
        part = import_string(dotted)(organization)
        merged.models.update(part.models)
        merged.images |= part.images
    return merged


def shared_model_dirs() -> list[Path]:
    return [Path(p).resolve() for p in settings.GANTRY_SHARED_MODEL_DIRS if p]


def _model_roots() -> list[Path]:
    uploads = (Path(settings.MEDIA_ROOT) / "uploads").resolve()
    return [*model_dirs(), *shared_model_dirs(), uploads]


def _inside(path: Path, roots: list[Path]) -> Path | None:
    """``path`` with every symlink followed, if it is still inside one of ``roots``."""
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):
        return None
    return resolved if any(resolved.is_relative_to(r) for r in roots) else None


def _shared(relative: str) -> Path | None:
    rel = PurePosixPath(relative)
    if not relative or rel.is_absolute() or ".." in rel.parts or "\\" in relative:
        return None
    for root in shared_model_dirs():
        found = _inside(root / rel, [root])
        if found is not None and found.exists():
            return found
    return None


def _refused() -> ValidationError:
    return ValidationError({"model_ref": MODEL_REFUSED})


def resolve_model_ref(*, organization, engine: str, model_ref) -> str:
    """What the replica will load, given what the tenant wrote; or the same refusal for
    anything missing, malformed or not the organization's."""
    ref = model_ref.strip() if isinstance(model_ref, str) else ""
    if not ref:
        raise ValidationError(
            {"model_ref": "Name the model: the demo model, a catalog model or a build."}
        )
    if ref in DEMO_MODEL_REFS:
        return ref
    if len(ref) > 255:
        raise _refused()
    target: str | Path | None = None
    if ref.startswith(SHARED_PREFIX):
        target = _shared(ref.removeprefix(SHARED_PREFIX))
    else:
        target = organization_artifacts(organization).models.get(ref)
    if isinstance(target, str) and target.startswith("hub:"):
        # Hub weights the catalog names: fetched into the weights cache on deploy.
        return target
    if target is None:
        if engine != "llama.cpp" and HF_REPO_RE.match(ref) and ".." not in ref:
            return ref  # the engine fetches it from the hub itself
        raise _refused()
    if isinstance(target, str) and HF_REPO_RE.match(target) and engine != "llama.cpp":
        return target
    path = Path(target)
    catalog_file = not path.is_absolute()
    if catalog_file:
        # A catalog file is named bare: it lives at the top of the first model folder.
        if path.name != str(target) or not path.name:
            raise _refused()
        path = model_dirs()[0] / path.name
    found = _inside(path, _model_roots())
    if found is None:
        raise _refused()
    if engine == "llama.cpp":
        if found.suffix != ".gguf":
            raise _refused()
        if not found.is_file() and weights_progress(found) is None:
            if catalog_file:
                # The catalog is public: saying its file is not here yet reveals nothing.
                raise ValidationError(
                    {
                        "model_ref": f"{path.name} is not in the model folder yet; an "
                        "operator puts it there (or prefetches it), then deploy again."
                    }
                )
            raise _refused()
    elif not found.exists() and weights_progress(found / "config.json") is None:
        raise _refused()
    return str(found)


def validate_image_reference(image: str, *, field_name: str = "image") -> str:
    image = (image or "").strip()
    if image and (len(image) > 255 or not IMAGE_RE.match(image)):
        raise ValidationError(
            {field_name: "Use an image reference like registry.example.com/team/engine:1.2."}
        )
    return image


def pool_runs_image(pool, image: str, own_images: set[str]) -> bool:
    """May ``pool`` run ``image`` ("" is the engine's default image, resolved by the
    caller) for an organization whose builds produced ``own_images``?"""
    return image in pool.effective_images() or (pool.runs_org_builds and image in own_images)


def resolve_image(*, organization, engine: str, image, pools) -> str:
    """The image a deployment asks for, if operators allow it on one of ``pools`` or the
    organization's own builds made it. Empty means the engine's own image."""
    if image is not None and not isinstance(image, str):
        raise ValidationError({"image": "Give an image reference as text."})
    image = validate_image_reference(image or "")
    if not image:
        return ""
    pools = list(pools)
    listed = sorted({i for p in pools for i in p.effective_images()})
    if image in listed:
        return image
    own = organization_artifacts(organization).images
    if image in own and any(p.runs_org_builds for p in pools):
        return image
    raise ValidationError(
        {
            "image": f"{image!r} is not an image these regions run. Choose one of: "
            + (", ".join(listed) or "none")
            + ", an image one of your organization's builds produced, or leave it empty "
            f"for the {engine} image."
        }
    )
