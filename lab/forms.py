"""The browser's benchmark form: text fields parsed into the same shapes the API takes
(lab.specs checks them, for both doors alike)."""

from django.core.exceptions import ValidationError

WORKLOAD_INTS = (
    "input_tokens",
    "output_tokens",
    "prefix_tokens",
    "prefixes",
    "turns",
    "requests_per_point",
    "warmup_requests",
    "seed",
)
WORKLOAD_FLOATS = ("input_spread", "output_spread")
SLO_FLOATS = ("ttft_p95_ms", "itl_p95_ms", "e2e_p95_ms", "error_rate")
MAX_UPLOAD_BYTES = 4 * 1024 * 1024


def _number(text: str, field: str, kind):
    try:
        return kind(text)
    except ValueError:
        raise ValidationError({field: f"Give a number, not {text[:20]!r}."}) from None


def _list(text: str, field: str, kind) -> list:
    parts = [p for p in text.replace(";", ",").replace(" ", ",").split(",") if p]
    return [_number(p, field, kind) for p in parts]


def benchmark_form_parse(data, files) -> dict:
    """{"deployment", "target", "workload", "load", "slo"} from the form; blank fields are
    left out (the defaults apply)."""
    workload: dict = {"kind": data.get("workload_kind", "synthetic")}
    for name in WORKLOAD_INTS:
        if (v := data.get(name, "").strip()) != "":
            workload[name] = _number(v, f"workload.{name}", int)
    for name in WORKLOAD_FLOATS:
        if (v := data.get(name, "").strip()) != "":
            workload[name] = _number(v, f"workload.{name}", float)
    upload = files.get("prompts")
    if upload is not None:
        if upload.size > MAX_UPLOAD_BYTES:
            raise ValidationError({"workload.prompts": "Keep the JSONL under 4 MB."})
        try:
            workload["prompts"] = upload.read().decode("utf-8")
        except UnicodeDecodeError:
            raise ValidationError({"workload.prompts": "Upload UTF-8 text (JSONL)."}) from None
    load: dict = {"kind": data.get("load_kind", "concurrency")}
    if (v := data.get("concurrency", "").strip()) != "":
        load["concurrency"] = _list(v, "load.concurrency", int)
    if (v := data.get("rates", "").strip()) != "":
        load["rates"] = _list(v, "load.rates", float)
    if (v := data.get("max_concurrency", "").strip()) != "":
        load["max_concurrency"] = _number(v, "load.max_concurrency", int)
    slo: dict = {}
    for name in SLO_FLOATS:
        if (v := data.get(name, "").strip()) != "":
            slo[name] = _number(v, f"slo.{name}", float)
    deployment = data.get("deployment", "").strip()
    if not deployment.isdigit():
        raise ValidationError({"deployment": "Choose a deployment."})
    return {
        "deployment": int(deployment),
        "target": data.get("target", "gateway"),
        "workload": workload,
        "load": load,
        "slo": slo,
    }
