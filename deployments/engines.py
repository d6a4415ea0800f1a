"""How each engine is launched: the command line for a model, a port and extra args.

Engine args are values from the engine's flag schema (deployments.flags), checked when
the deployment is written; the command is passed as a list (no shell ever parses it).
"""

from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError

from deployments.bench_model import BENCH_MODEL_FILE, write_bench_gguf
from deployments.demo_model import write_demo_gguf

DEMO_MODEL_REF = "demo:tiny-random-llama"
# Random weights of a real llama shape (~120M parameters), for load tests (lab benchmarks).
BENCH_MODEL_REF = "demo:bench-random-llama"
DEMO_MODEL_REFS = (DEMO_MODEL_REF, BENCH_MODEL_REF)


def model_dirs() -> list[Path]:
    return [Path(p).resolve() for p in settings.GANTRY_MODEL_DIRS]


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
    if model_ref == BENCH_MODEL_REF:
        return write_bench_gguf(Path(settings.GANTRY_MODEL_DIRS[0]) / BENCH_MODEL_FILE)
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
