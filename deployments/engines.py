"""How each engine is launched: the command line for a model, a port and extra args.

Engine args are validated values, never shell text: each must look like an option or
a plain value, and the command is passed as a list (no shell ever parses it).
"""

import re
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError

from deployments.demo_model import write_demo_gguf

DEMO_MODEL_REF = "demo:tiny-random-llama"

_ARG_RE = re.compile(r"^[A-Za-z0-9_.,:=/@+-]{1,200}$")
# Options Gantry sets itself; a user may not override where the server listens.
_RESERVED = {"--host", "--port", "--model", "--model-path"}


def validate_engine_args(args) -> list[str]:
    if not isinstance(args, list | tuple) or not all(isinstance(a, str) for a in args):
        raise ValidationError({"engine_args": 'Give a list of strings, e.g. ["--n_ctx", "2048"].'})
    if len(args) > 40:
        raise ValidationError({"engine_args": "At most 40 arguments."})
    for arg in args:
        if not _ARG_RE.match(arg):
            raise ValidationError(
                {"engine_args": f"{arg!r} is not allowed: use letters, digits and _.,:=/@+- only."}
            )
        if arg.split("=", 1)[0] in _RESERVED:
            raise ValidationError({"engine_args": f"{arg.split('=', 1)[0]} is set by Gantry."})
    return list(args)


def model_dirs() -> list[Path]:
    return [Path(p).resolve() for p in settings.GANTRY_MODEL_DIRS]


def validate_model_ref(engine: str, model_ref: str) -> str:
    model_ref = (model_ref or "").strip()
    if not model_ref:
        raise ValidationError(
            {"model_ref": "Name the model: the demo model, a GGUF file or a repo."}
        )
    if model_ref == DEMO_MODEL_REF:
        return model_ref
    if engine == "llama.cpp":
        path = Path(model_ref)
        if not path.is_absolute() and "/" not in model_ref and model_ref.endswith(".gguf"):
            # A bare file name: the model folder (the weights cache) is where it lives.
            path = model_dirs()[0] / model_ref
            if not path.is_file():
                raise ValidationError(
                    {
                        "model_ref": f"{model_ref} is not in the model folder {model_dirs()[0]} "
                        "yet; put the file there (or prefetch it) and deploy again."
                    }
                )
        if not path.is_absolute():
            raise ValidationError(
                {"model_ref": f"Use {DEMO_MODEL_REF} or an absolute path to a .gguf file."}
            )
        resolved = path.resolve()
        if resolved.suffix != ".gguf":
            raise ValidationError({"model_ref": "llama.cpp serves .gguf files."})
        if not any(resolved.is_relative_to(d) for d in model_dirs()):
            allowed = ", ".join(str(d) for d in model_dirs())
            raise ValidationError({"model_ref": f"Model files must be under: {allowed}."})
        if not resolved.is_file() and weights_progress(resolved) is None:
            raise ValidationError({"model_ref": f"No file at {resolved}."})
        return str(resolved)
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", model_ref):
        raise ValidationError(
            {"model_ref": "Use a Hugging Face repo id, e.g. Qwen/Qwen2.5-7B-Instruct."}
        )
    return model_ref


PROGRESS_FILE = ".gantry-progress.json"


def weights_progress(path: Path) -> dict | None:
    """Progress of model files still being fetched into ``path``'s folder, as written by
    whoever fills the weights cache ({"bytes_done", "bytes_total", "status"}); None when
    nothing is on its way."""
    import json

    marker = Path(path).parent / PROGRESS_FILE
    try:
        data = json.loads(marker.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return data if data.get("status") in {"pending", "fetching", "failed"} else None


def model_file(model_ref: str) -> Path:
    """The local file a llama.cpp replica serves (the demo model is written on demand)."""
    if model_ref == DEMO_MODEL_REF:
        folder = Path(settings.GANTRY_MODEL_DIRS[0])
        return write_demo_gguf(folder / "demo-tiny-random-llama.gguf")
    return Path(model_ref)


def default_image(engine: str) -> str:
    return settings.GANTRY_ENGINE_IMAGES.get(engine, "")


def engine_command(
    engine: str, *, model_path: str, port: int, host: str, args, python: str = "python3"
) -> list[str]:
    if engine == "llama.cpp":
        return [
            python,
            "-m",
            "llama_cpp.server",
            "--model",
            model_path,
            "--host",
            host,
            "--port",
            str(port),
            *args,
        ]
    if engine == "vllm":
        return [
            python,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            model_path,
            "--host",
            host,
            "--port",
            str(port),
            *args,
        ]
    if engine == "sglang":
        return [
            python,
            "-m",
            "sglang.launch_server",
            "--model-path",
            model_path,
            "--host",
            host,
            "--port",
            str(port),
            *args,
        ]
    raise ValidationError({"engine": f"Unknown engine {engine!r}."})
