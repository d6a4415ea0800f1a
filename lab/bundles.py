"""The results bundle: leaderboard results as versioned JSON, so installs can share what
they measured without a central server.

Shape (version 1)::

    {"format": "gantry-lab-results", "version": 1, "exported_at": "2026-12-06T04:00:00Z",
     "results": [{"model": "bench-random-llama", "family": "llama", "engine": "llama.cpp",
                  "engine_version": "0.3.36", "gpu_type": "cpu", "gpu_count": 1,
                  "objective": "max_throughput_under_slo", "launch": ["--n_threads", "2"],
                  "output_tokens_per_s": 41.5, "ttft_p95_ms": 210.0, "itl_p95_ms": 40.1,
                  "cost_per_1m_output_tokens": 3.2, "slo": {"ttft_p95_ms": 2000},
                  "workload": {...}, "measured_at": "2026-12-06T03:58:00Z",
                  "provenance": {"tuning": 7, "benchmark": 12, "image": "…"}}]}

An imported bundle is foreign input: it is parsed, never trusted. Sizes are bounded
before parsing, every field is typed and ranged, launch arguments go through the engine's
flag schema, and a bad bundle is refused whole with the first broken field named.
"""

import json
import math
import re
from datetime import datetime

from django.core.exceptions import ValidationError

from deployments.flags import SCHEMAS, validate_engine_args
from lab.search import SLO_KEYS, Objective

FORMAT = "gantry-lab-results"
VERSION = 1
MAX_BYTES = 1 << 20
MAX_RESULTS = 500
MAX_JSON_CHARS = 4000
_SLUG = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
_FIGURES = ("output_tokens_per_s", "ttft_p95_ms", "itl_p95_ms", "cost_per_1m_output_tokens")
FIGURE_MAX = 1e9


def _fail(where: str, message: str) -> ValidationError:
    return ValidationError({"bundle": f"{where}: {message}"})


def _text(row: dict, key: str, where: str, *, pattern=_SLUG) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not pattern.match(value):
        raise _fail(f"{where}.{key}", "give a short lowercase name (letters, digits, . _ -).")
    return value


def _number(row: dict, key: str, where: str, *, required: bool) -> float | None:
    value = row.get(key)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(f"{where}.{key}", "give a number.")
    if not math.isfinite(value) or not 0 <= value <= FIGURE_MAX:
        raise _fail(f"{where}.{key}", f"give a number from 0 to {FIGURE_MAX:g}.")
    return float(value)


def _small_json(row: dict, key: str, where: str) -> dict:
    value = row.get(key, {})
    if not isinstance(value, dict):
        raise _fail(f"{where}.{key}", "give an object.")
    if len(json.dumps(value)) > MAX_JSON_CHARS:
        raise _fail(f"{where}.{key}", f"at most {MAX_JSON_CHARS} characters of JSON.")
    return value


def _when(row: dict, key: str, where: str) -> str:
    value = row.get(key)
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise _fail(f"{where}.{key}", "give an ISO 8601 date and time.") from None
    if parsed.tzinfo is None:
        raise _fail(f"{where}.{key}", "give a time zone (e.g. Z).")
    return parsed.isoformat()


def _result(row, where: str) -> dict:
    if not isinstance(row, dict):
        raise _fail(where, "each result is an object.")
    engine = row.get("engine")
    if engine not in SCHEMAS:
        raise _fail(f"{where}.engine", f"choose one of: {', '.join(SCHEMAS)}.")
    version = row.get("engine_version")
    if version not in SCHEMAS[engine]:
        raise _fail(f"{where}.engine_version", f"{engine}: {', '.join(SCHEMAS[engine])}.")
    objective = row.get("objective")
    if objective not in Objective.ALL:
        raise _fail(f"{where}.objective", f"choose one of: {', '.join(Objective.ALL)}.")
    gpu_count = row.get("gpu_count")
    if isinstance(gpu_count, bool) or not isinstance(gpu_count, int) or not 1 <= gpu_count <= 64:
        raise _fail(f"{where}.gpu_count", "give a whole number from 1 to 64.")
    try:
        launch = validate_engine_args(engine, row.get("launch"), version=version)
    except ValidationError as exc:
        message = "; ".join(m for msgs in exc.message_dict.values() for m in msgs)
        raise _fail(f"{where}.launch", message) from None
    slo = _small_json(row, "slo", where)
    for key in slo:
        if key not in SLO_KEYS:
            raise _fail(f"{where}.slo", f"{str(key)[:40]!r} is not one of {', '.join(SLO_KEYS)}.")
        _number(slo, key, f"{where}.slo", required=False)  # null: no bound
    clean = {
        "model": _text(row, "model", where),
        "family": _text(row, "family", where),
        "engine": engine,
        "engine_version": version,
        "gpu_type": _text(row, "gpu_type", where),
        "gpu_count": gpu_count,
        "objective": objective,
        "launch": launch,
        "slo": slo,
        "workload": _small_json(row, "workload", where),
        "provenance": _small_json(row, "provenance", where),
        "measured_at": _when(row, "measured_at", where),
    }
    for key in _FIGURES:
        clean[key] = _number(row, key, where, required=key == "output_tokens_per_s")
    return clean


def parse_bundle(raw: bytes | str) -> list[dict]:
    """The results of a bundle, each validated, or a ValidationError on ``bundle``."""
    if isinstance(raw, str):
        raw = raw.encode()
    if not raw:
        raise _fail("bundle", "the file is empty.")
    if len(raw) > MAX_BYTES:
        raise _fail("bundle", f"at most {MAX_BYTES // 1024} KiB.")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        raise _fail("bundle", "not JSON.") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise _fail("format", f"expected {FORMAT!r}.")
    version = doc.get("version")
    if isinstance(version, bool) or version != VERSION:
        raise _fail("version", f"this install reads version {VERSION}; got {str(version)[:20]}.")
    results = doc.get("results")
    if not isinstance(results, list):
        raise _fail("results", "give a list.")
    if len(results) > MAX_RESULTS:
        raise _fail("results", f"at most {MAX_RESULTS} results.")
    return [_result(row, f"results[{i}]") for i, row in enumerate(results)]


def render_bundle(results: list[dict], *, exported_at: datetime) -> dict:
    return {
        "format": FORMAT,
        "version": VERSION,
        "exported_at": exported_at.isoformat(),
        "results": results,
    }
