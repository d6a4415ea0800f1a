"""The shapes a benchmark is asked for — workload, load, SLO — parsed into plain dicts with
every default filled in. Names are exact (no prefixes, no unknown keys), values typed and
ranged; a bad value raises ValidationError naming the field (e.g. ``slo.ttft_p95_ms``).

These dicts are what ``lab.runner.measure`` takes and what a Benchmark row stores.
"""

import json
import math
from typing import Any

from django.core.exceptions import ValidationError

WORKLOAD_KINDS = ("synthetic", "shared_prefix", "multi_turn", "jsonl")
LOAD_KINDS = ("concurrency", "rate", "slo_search")

MAX_TOKENS_IN = 131_072
MAX_TOKENS_OUT = 16_384
MAX_REQUESTS_PER_POINT = 5_000
MAX_POINTS = 12
MAX_CONCURRENCY = 512
MAX_RATE = 1_000.0
MAX_PROMPTS = 5_000
MAX_PROMPT_CHARS = 200_000
MAX_MS = 3_600_000.0

WORKLOAD_DEFAULTS: dict[str, Any] = {
    "kind": "synthetic",
    "input_tokens": 128,
    "input_spread": 0.0,
    "output_tokens": 32,
    "output_spread": 0.0,
    "prefix_tokens": 0,
    "prefixes": 1,
    "turns": 1,
    "prompts": [],
    "requests_per_point": 16,
    "warmup_requests": 2,
    "seed": None,
}
LOAD_DEFAULTS: dict[str, Any] = {
    "kind": "concurrency",
    "concurrency": [1, 2, 4],
    "rates": [],
    "max_concurrency": 32,
    "timeout_s": 120.0,
}
SLO_DEFAULTS: dict[str, Any] = {
    "ttft_p95_ms": None,
    "itl_p95_ms": None,
    "e2e_p95_ms": None,
    "error_rate": 0.01,
}


def _fail(field: str, message: str) -> ValidationError:
    return ValidationError({field: message})


def _object(value, field: str, defaults: dict) -> dict:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise _fail(field, "Give an object, e.g. {}.")
    unknown = sorted(set(value) - set(defaults))
    if unknown:
        raise _fail(
            f"{field}.{unknown[0]}",
            f"Unknown field; allowed: {', '.join(sorted(defaults))}.",
        )
    return {**defaults, **value}


def _int(value, field: str, lo: int, hi: int) -> int:
    # bool is an int in Python; "true" as a count is a client bug, not a 1.
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise _fail(field, f"Give a whole number from {lo:,} to {hi:,}.")
    if not lo <= value <= hi:
        raise _fail(field, f"Give a whole number from {lo:,} to {hi:,}.")
    return value


def _num(value, field: str, lo: float, hi: float, *, unit: str = "") -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _fail(field, f"Give a number{unit} from {lo:g} to {hi:g} (not a string).")
    if not lo <= value <= hi:
        raise _fail(field, f"Give a number{unit} from {lo:g} to {hi:g}.")
    return float(value)


def _int_list(value, field: str, lo: int, hi: int) -> list[int]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_POINTS:
        raise _fail(field, f"Give a list of 1 to {MAX_POINTS} whole numbers.")
    out = [_int(v, f"{field}[{i}]", lo, hi) for i, v in enumerate(value)]
    return sorted(set(out))


def parse_prompts_jsonl(text: str) -> list[dict]:
    """An uploaded JSONL of prompts: one object a line, ``{"prompt": "…"}`` or
    ``{"messages": [...]}``, optionally ``"max_tokens"``."""
    prompts = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            prompts.append(json.loads(line))
        except ValueError:
            raise _fail("workload.prompts", f"Line {n} is not JSON.") from None
    return prompts


def _prompts(value) -> list[dict]:
    field = "workload.prompts"
    if isinstance(value, str):
        value = parse_prompts_jsonl(value)
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_PROMPTS:
        raise _fail(field, f"Give 1 to {MAX_PROMPTS:,} prompts (a JSONL upload or a list).")
    out = []
    for i, p in enumerate(value):
        f = f"{field}[{i}]"
        if not isinstance(p, dict) or set(p) - {"prompt", "messages", "max_tokens"}:
            raise _fail(f, 'Give {"prompt": "…"} or {"messages": [...]}, and "max_tokens".')
        item: dict[str, Any] = {}
        if isinstance(p.get("prompt"), str) and p["prompt"]:
            item["prompt"] = p["prompt"][:MAX_PROMPT_CHARS]
        elif isinstance(p.get("messages"), list) and p["messages"]:
            msgs = p["messages"]
            if not all(
                isinstance(m, dict)
                and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), str)
                for m in msgs
            ):
                raise _fail(f, 'Each message needs a "role" and a "content" string.')
            if sum(len(m["content"]) for m in msgs) > MAX_PROMPT_CHARS:
                raise _fail(f, f"Keep a prompt under {MAX_PROMPT_CHARS:,} characters.")
            item["messages"] = [{"role": m["role"], "content": m["content"]} for m in msgs]
        else:
            raise _fail(f, 'Give a non-empty "prompt" string or "messages" list.')
        if "max_tokens" in p:
            item["max_tokens"] = _int(p["max_tokens"], f"{f}.max_tokens", 1, MAX_TOKENS_OUT)
        out.append(item)
    return out


def workload_parse(value) -> dict:
    w = _object(value, "workload", WORKLOAD_DEFAULTS)
    if w["kind"] not in WORKLOAD_KINDS:
        raise _fail("workload.kind", f"Choose one of: {', '.join(WORKLOAD_KINDS)}.")
    w["input_tokens"] = _int(w["input_tokens"], "workload.input_tokens", 1, MAX_TOKENS_IN)
    w["output_tokens"] = _int(w["output_tokens"], "workload.output_tokens", 1, MAX_TOKENS_OUT)
    w["input_spread"] = _num(w["input_spread"], "workload.input_spread", 0, 0.9)
    w["output_spread"] = _num(w["output_spread"], "workload.output_spread", 0, 0.9)
    w["prefix_tokens"] = _int(w["prefix_tokens"], "workload.prefix_tokens", 0, MAX_TOKENS_IN)
    w["prefixes"] = _int(w["prefixes"], "workload.prefixes", 1, 64)
    w["turns"] = _int(w["turns"], "workload.turns", 1, 16)
    w["requests_per_point"] = _int(
        w["requests_per_point"], "workload.requests_per_point", 1, MAX_REQUESTS_PER_POINT
    )
    w["warmup_requests"] = _int(w["warmup_requests"], "workload.warmup_requests", 0, 100)
    if w["seed"] is not None:
        w["seed"] = _int(w["seed"], "workload.seed", 0, 2**63 - 1)
    if w["kind"] == "jsonl":
        w["prompts"] = _prompts(w["prompts"])
    elif w["prompts"]:
        raise _fail("workload.prompts", 'Prompts go with "kind": "jsonl" only.')
    if w["kind"] == "shared_prefix" and w["prefix_tokens"] == 0:
        raise _fail("workload.prefix_tokens", "A shared-prefix workload needs prefix_tokens > 0.")
    if w["kind"] != "shared_prefix" and w["prefix_tokens"]:
        raise _fail("workload.prefix_tokens", 'Goes with "kind": "shared_prefix" only.')
    if w["kind"] != "multi_turn" and w["turns"] != 1:
        raise _fail("workload.turns", 'Goes with "kind": "multi_turn" only.')
    return w


def load_parse(value) -> dict:
    ld = _object(value, "load", LOAD_DEFAULTS)
    if ld["kind"] not in LOAD_KINDS:
        raise _fail("load.kind", f"Choose one of: {', '.join(LOAD_KINDS)}.")
    ld["timeout_s"] = _num(ld["timeout_s"], "load.timeout_s", 1, 3600, unit=" of seconds")
    ld["max_concurrency"] = _int(ld["max_concurrency"], "load.max_concurrency", 1, MAX_CONCURRENCY)
    if ld["kind"] == "concurrency":
        ld["concurrency"] = _int_list(ld["concurrency"], "load.concurrency", 1, MAX_CONCURRENCY)
        ld["rates"] = []
    elif ld["kind"] == "rate":
        rates = ld["rates"]
        if not isinstance(rates, list) or not 1 <= len(rates) <= MAX_POINTS:
            raise _fail("load.rates", f"Give a list of 1 to {MAX_POINTS} rates (requests/s).")
        ld["rates"] = sorted(
            {
                _num(r, f"load.rates[{i}]", 0.01, MAX_RATE, unit=" of requests/s")
                for i, r in enumerate(rates)
            }
        )
        ld["concurrency"] = []
    else:
        ld["concurrency"], ld["rates"] = [], []
    return ld


def slo_parse(value, *, load_kind: str = "") -> dict:
    s = _object(value, "slo", SLO_DEFAULTS)
    for key in ("ttft_p95_ms", "itl_p95_ms", "e2e_p95_ms"):
        if s[key] is not None:
            s[key] = _num(s[key], f"slo.{key}", 0.1, MAX_MS, unit=" of milliseconds")
    s["error_rate"] = _num(s["error_rate"], "slo.error_rate", 0, 1, unit=" (a fraction, 0.01 = 1%)")
    if load_kind == "slo_search" and all(
        s[k] is None for k in ("ttft_p95_ms", "itl_p95_ms", "e2e_p95_ms")
    ):
        raise _fail(
            "slo", "An SLO search needs at least one of ttft_p95_ms, itl_p95_ms, e2e_p95_ms."
        )
    return s


def workload_context_need(w: dict) -> int:
    """The most context one request of this workload can take (prompt + answer), in tokens,
    counting the spread's upper end and every earlier turn of a conversation."""
    out_max = math.ceil(w["output_tokens"] * (1 + w["output_spread"]))
    if w["kind"] == "jsonl":
        # Characters over-count tokens for most tokenizers; a prompt is never fewer tokens
        # than a quarter of its characters, so that is what is checked up front.
        longest = max(
            len(p.get("prompt") or "".join(m["content"] for m in p.get("messages", [])))
            for p in w["prompts"]
        )
        most_out = max([p.get("max_tokens", w["output_tokens"]) for p in w["prompts"]])
        return longest // 4 + most_out
    in_max = math.ceil(w["input_tokens"] * (1 + w["input_spread"]))
    return w["prefix_tokens"] + w["turns"] * (in_max + out_max)
