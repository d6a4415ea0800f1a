"""Routing policies side by side, and an autoscaling trace, on real llama.cpp replicas.

Two replicas of one model run on this machine through the real path: a deployment row,
the reconciler starting llama.cpp servers with the local driver (prompt cache on:
`--cache true`), the real gateway in its own process. The model is the demo's random
llama in a larger shape (BENCH_EMBD × BENCH_LAYERS, 4k context), so that reading a
~1k-token system prompt takes a CPU a measurable time — its answers are noise, the timings
are not.

Workload: shared-prefix multi-turn chat — 8 system prompts of ~1k tokens, BENCH_USERS
users, each with one system prompt and a conversation that grows turn by turn; closed loop
at BENCH_CONCURRENCY. The same workload (same seed, cold engines each time) runs under
least_busy, then prefix_affinity. Printed: TTFT p50/p95, output tokens/s, requests per
replica and the max/mean load ratio.

Then the autoscaling trace: a deployment autoscaled on requests in flight (target 2 per
replica, 1..2 replicas, scale-down window 20 s); load steps low → high → low; every few
seconds the replicas and TTFT p95 of the last window; the scale-up reaction time (from the
load step to the second replica serving). The autoscaler and reconciler run in this
process every few seconds, as beat and the worker would.

Each replica's prompt cache (llama.cpp `--cache_size`) holds BENCH_CACHE_STATES (12)
system-prompt states, measured on the model first: like a GPU's KV memory, room for some
of the 8 prefixes in play, not all — one replica cannot keep them all, two together can,
which is the case prefix affinity is for. (llama-cpp-python's cache keeps one state per
answered request — the whole conversation — so a prompt in steady use holds about two:
12 states are room for about 6 of the 8 prompts.) Before each policy's run every replica answers
one unrelated request as long (a fresh llama.cpp process reads its first long prompts
several times slower than later ones), and after it the engines' own logs say how many requests
had to read their whole prompt (a prompt-cache miss) — the why behind the TTFT figures.

Env: BENCH_DATABASE_URL (default …/gantry_bench_routing), BENCH_USERS (32), BENCH_TURNS
(2), BENCH_CONCURRENCY (4), BENCH_EMBD (128), BENCH_LAYERS (4), BENCH_CACHE_STATES (12),
BENCH_TRACE_SCALE (1: phase lengths).
"""

import asyncio
import json
import os
import random
import re
import shutil
import signal
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VAR = ROOT / "var" / "bench-routing"
os.environ.setdefault(
    "BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/gantry_bench_routing"
)
os.environ["GANTRY_MODEL_DIRS"] = str(VAR / "models")
os.environ["RUNTIME_DIR"] = str(VAR / "replicas")
os.environ.setdefault("GANTRY_INSTANCE", "bench-routing")
os.environ["REPLICA_DRAIN_GRACE_S"] = "3"
os.environ["GATEWAY_ROUTE_TTL_S"] = "1"
os.environ["GATEWAY_LOAD_REPORT_S"] = "1"
os.environ["GATEWAY_METRICS_TOKEN"] = "bench-routing-metrics"

from _setup import django_on_postgres, local_cpu_pool, percentile, start_gateway  # noqa: E402

USERS = int(os.environ.get("BENCH_USERS", "32"))
TURNS = int(os.environ.get("BENCH_TURNS", "2"))
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "4"))
EMBD = int(os.environ.get("BENCH_EMBD", "128"))
TRACE_SCALE = float(os.environ.get("BENCH_TRACE_SCALE", "1"))  # shorter phases for a try
LAYERS = int(os.environ.get("BENCH_LAYERS", "4"))
# Prompt-cache room per replica, in system-prompt states: like a GPU's KV memory, it holds
# some of the prefixes in play, not all (8 here; a prompt in use takes about two states).
CACHE_STATES = float(os.environ.get("BENCH_CACHE_STATES", "12"))
MAX_TOKENS = 16
SYSTEM_PROMPTS = 8
WORDS = [
    "account",
    "balance",
    "billing",
    "cluster",
    "deploy",
    "engine",
    "failover",
    "gateway",
    "health",
    "invoice",
    "latency",
    "model",
    "network",
    "operator",
    "policy",
    "quota",
    "region",
    "replica",
    "routing",
    "scale",
    "token",
    "usage",
    "volume",
    "weights",
    "window",
]


def system_prompts(rng: random.Random) -> list[str]:
    # The demo vocabulary is bytes: ~1 token per character.
    out = []
    for i in range(SYSTEM_PROMPTS):
        words = [rng.choice(WORDS) for _ in range(150)]
        out.append(f"You are support agent {i}. Policy: " + " ".join(words)[:1000])
    return out


class Conversation:
    def __init__(self, system: str, user: int):
        self.messages = [{"role": "system", "content": system}]
        self.user = user
        self.turn = 0

    def ask(self) -> list[dict]:
        self.turn += 1
        self.messages.append(
            {"role": "user", "content": f"user {self.user} question {self.turn}: status?"}
        )
        return list(self.messages)

    def answered(self, text: str) -> None:
        self.messages.append({"role": "assistant", "content": text[:40]})


async def one_request(session, base, key, model, messages) -> dict:
    started = time.perf_counter()
    first = None
    tokens = 0
    text = ""
    async with session.post(
        f"{base}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={
            "model": model,
            "stream": True,
            "max_tokens": MAX_TOKENS,
            "logit_bias": {"2": -100},  # random weights: keep it off the end token
            "messages": messages,
        },
    ) as answer:
        status = answer.status
        async for raw in answer.content:
            line = raw.decode().strip()
            if not line.startswith("data: {"):
                continue
            for choice in json.loads(line[6:]).get("choices", []):
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    first = first or time.perf_counter()
                    tokens += 1
                    text += piece
    end = time.perf_counter()
    return {
        "status": status,
        "ttft": (first or end) - started,
        "e2e": end - started,
        "tokens": tokens,
        "text": text,
        "at": end,
    }


async def closed_loop(base, key, model, conversations, total, concurrency) -> list[dict]:
    import aiohttp

    queue = [c for _ in range(TURNS) for c in conversations][:total]
    results: list[dict] = []
    busy: set[int] = set()

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:

        async def worker():
            while queue:
                # The next conversation not already waiting for an answer (turns in order).
                pick = next((i for i, c in enumerate(queue) if id(c) not in busy), None)
                if pick is None:
                    await asyncio.sleep(0.05)
                    continue
                c = queue.pop(pick)
                busy.add(id(c))
                try:
                    r = await one_request(session, base, key, model, c.ask())
                    c.answered(r["text"])
                except Exception as exc:
                    r = {"status": repr(exc), "ttft": 0, "e2e": 0, "tokens": 0, "at": 0}
                busy.discard(id(c))
                results.append(r)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


def gateway_metrics(base: str) -> str:
    import urllib.request

    request = urllib.request.Request(
        f"{base}/metrics", headers={"Authorization": "Bearer bench-routing-metrics"}
    )
    return urllib.request.urlopen(request, timeout=10).read().decode()


def spills(base: str) -> dict[str, float]:
    """Prefix-affinity requests so far by outcome: affinity, new, spill, moved."""
    found = dict.fromkeys(("affinity", "new", "spill", "moved"), 0.0)
    for m in re.finditer(
        r'^gantry_gateway_prefix_routed_total\{[^}]*outcome="(\w+)"[^}]*\} (\S+)$',
        gateway_metrics(base),
        re.M,
    ):
        found[m.group(1)] = found.get(m.group(1), 0) + float(m.group(2))
    return found


def replica_counts(base: str) -> dict[str, float]:
    text = gateway_metrics(base)
    counts: dict[str, float] = {}
    for m in re.finditer(
        r'^gantry_gateway_time_to_first_token_seconds_count\{[^}]*replica="(\d+)"[^}]*\} (\S+)$',
        text,
        re.M,
    ):
        counts[m.group(1)] = counts.get(m.group(1), 0) + float(m.group(2))
    return counts


def reconcile_until(d, predicate, timeout=300) -> None:
    from deployments.services import deployment_reconcile

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        deployment_reconcile(deployment_id=d.pk)
        d.refresh_from_db()
        if predicate(d):
            return
        time.sleep(0.5)
    raise SystemExit(f"timed out: {d.status} {d.status_reason}")


def running(d) -> int:
    return d.replicas.filter(status="running").count()


def restart_cold(d, replicas: int) -> None:
    """Fresh engines (empty prompt caches), `replicas` of them."""
    from deployments.models import Deployment

    Deployment.objects.filter(pk=d.pk).update(desired_replicas=0)
    reconcile_until(d, lambda d: not d.replicas.filter(status__in=["running", "draining"]))
    Deployment.objects.filter(pk=d.pk).update(desired_replicas=replicas)
    reconcile_until(d, lambda d: running(d) == replicas)


def summary(results: list[dict], seconds: float) -> dict:
    ok = [r for r in results if r["status"] == 200]
    return {
        "requests": len(results),
        "errors": len(results) - len(ok),
        "ttft_p50_ms": percentile([r["ttft"] * 1000 for r in ok], 50),
        "ttft_p95_ms": percentile([r["ttft"] * 1000 for r in ok], 95),
        "tokens_per_s": sum(r["tokens"] for r in ok) / seconds,
    }


def warm_up(d, base, key) -> None:
    """One request per replica (two at once under least_busy: one each), on a prompt unlike
    the workload's, so the measured run starts on warmed processes with nothing of its
    prompts in their caches."""
    from deployments.models import Deployment

    Deployment.objects.filter(pk=d.pk).update(routing_policy="least_busy")
    time.sleep(2.5)  # past the gateway's route TTL
    # As long as the workload's prompts (a fresh engine's first long reads are the slow
    # ones), and unlike any of them from the first character.
    rng = random.Random(99)
    conversations = [
        Conversation(
            f"Warm-up {i}: " + " ".join(rng.choice(WORDS) for _ in range(150))[:1000], -1 - i
        )
        for i in range(2)
    ]
    results = asyncio.run(closed_loop(base, key, d.name, conversations, 2, 2))
    if any(r["status"] != 200 for r in results):
        raise SystemExit(f"warm-up failed: {results}")


def engine_logs() -> dict[Path, int]:
    """Each replica's engine log and its size now."""
    return {p: p.stat().st_size for p in (VAR / "replicas").glob("*/*/log")}


def full_prefills(since: dict[Path, int]) -> tuple[int, int]:
    """(requests that read their whole ~1k-token prompt, requests) in the engines' logs
    after `since`: llama.cpp prints the tokens it evaluated for each prompt."""
    full = total = 0
    for path in engine_logs():
        with open(path, "rb") as f:
            f.seek(since.get(path, 0))
            text = f.read().decode("utf-8", "replace")
        for m in re.finditer(r"prompt eval time =\s*[\d.]+ ms /\s*(\d+) tokens", text):
            total += 1
            full += int(m.group(1)) > 500
    return full, total


def run_policy(d, policy, base, key, seed) -> dict:
    from deployments.models import Deployment

    restart_cold(d, 2)
    warm_up(d, base, key)
    Deployment.objects.filter(pk=d.pk).update(routing_policy=policy)
    time.sleep(2.5)  # past the gateway's route TTL
    rng = random.Random(seed)
    prompts = system_prompts(rng)
    conversations = [Conversation(prompts[u % SYSTEM_PROMPTS], u) for u in range(USERS)]
    before, outcomes = replica_counts(base), spills(base)
    logs = engine_logs()
    started = time.perf_counter()
    results = asyncio.run(closed_loop(base, key, d.name, conversations, USERS * TURNS, CONCURRENCY))
    seconds = time.perf_counter() - started
    after = replica_counts(base)
    per = sorted(after.get(k, 0) - before.get(k, 0) for k in after)
    per = [n for n in per if n] or [0]
    out = summary(results, seconds)
    out["per_replica"] = per
    out["max_load_ratio"] = max(per) / (sum(per) / len(per)) if sum(per) else float("nan")
    out["full_prefills"] = full_prefills(logs)
    out["spilled"] = spills(base)["spill"] - outcomes["spill"]
    return out


def autoscale_trace(d, base, key) -> tuple[list, float]:
    """Load low → high → low; autoscaler every 3 s, reconciler every second."""
    from deployments.models import Deployment, DeploymentLoad
    from deployments.services import autoscale, deployment_reconcile

    restart_cold(d, 1)
    # What the gateway reported during the policy runs is over: start the trace at rest.
    DeploymentLoad.objects.filter(deployment=d).update(in_flight=0, recommendations=[])
    Deployment.objects.filter(pk=d.pk).update(
        autoscale_target=2,
        autoscale_metric="in_flight",
        min_replicas=1,
        max_replicas=2,
        scale_up_window_s=0,
        scale_down_window_s=20,
        routing_policy="prefix_affinity",
    )
    stop = threading.Event()
    samples: list[tuple] = []
    results: list[dict] = []
    t0 = time.perf_counter()
    step_up_at = {"t": None}

    def control():
        from django.db import close_old_connections

        last_scale = 0.0
        while not stop.is_set():
            close_old_connections()
            now = time.perf_counter()
            if now - last_scale >= 3:
                autoscale()
                last_scale = now
                d.refresh_from_db()
                window = [r for r in results if r["at"] >= now - 10 and r["status"] == 200]
                samples.append(
                    (
                        now - t0,
                        d.desired_replicas,
                        running(d),
                        percentile([r["ttft"] * 1000 for r in window], 95) if window else None,
                    )
                )
            deployment_reconcile(deployment_id=d.pk)
            stop.wait(1.0)

    thread = threading.Thread(target=control, daemon=True)
    thread.start()
    rng = random.Random(7)
    prompts = system_prompts(rng)

    def phase(concurrency: int, seconds: float, user_base: int):
        deadline = time.perf_counter() + seconds

        async def run():
            import aiohttp

            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as s:

                async def worker(w):
                    c = Conversation(prompts[w % SYSTEM_PROMPTS], user_base + w)
                    while time.perf_counter() < deadline:
                        try:
                            r = await one_request(s, base, key, d.name, c.ask())
                            c.answered(r["text"])
                        except Exception as exc:
                            r = {"status": repr(exc), "ttft": 0, "e2e": 0, "tokens": 0}
                            r["at"] = time.perf_counter()
                        results.append(r)
                        if c.turn >= 4:
                            c = Conversation(prompts[(w + c.turn) % SYSTEM_PROMPTS], user_base + w)

                await asyncio.gather(*(worker(w) for w in range(concurrency)))

        asyncio.run(run())

    try:
        phase(1, 30 * TRACE_SCALE, 100)
        step_up_at["t"] = time.perf_counter() - t0
        phase(6, 75 * TRACE_SCALE, 200)
        phase(1, 60 * TRACE_SCALE, 300)
    finally:
        # Also on Ctrl-C: the autoscaler must stop before the clean-up scales to zero,
        # or the two fight over the replica count until the clean-up gives up.
        stop.set()
        thread.join(timeout=60)
    up = next((t for t, _, run, _ in samples if t >= step_up_at["t"] and run >= 2), None)
    reaction = (up - step_up_at["t"]) if up is not None else float("nan")
    errors = sum(1 for r in results if r["status"] != 200)
    return samples, reaction, errors


def state_bytes(model: Path, prompt: str) -> int:
    """How much room one system prompt's state takes in llama.cpp's prompt cache."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(model), n_ctx=4096, n_threads=1, verbose=False)
    llm.eval(llm.tokenize(prompt.encode()))
    size = llm.save_state().llama_state_size
    llm.close()
    return size


def main() -> None:
    # A SIGTERM stops the bench as Ctrl-C does: through the clean-up below, engines too.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    django_on_postgres()
    from django.contrib.auth import get_user_model

    from deployments.demo_model import write_demo_gguf
    from deployments.models import Deployment, GpuType
    from deployments.services import deployment_reconcile
    from portal.services import api_key_create, organization_create

    shutil.rmtree(VAR / "replicas", ignore_errors=True)
    model = write_demo_gguf(
        VAR / "models" / f"bench-{EMBD}x{LAYERS}.gguf",
        embd=EMBD,
        layers=LAYERS,
        ff=3 * EMBD,
        ctx=4096,
    )
    per_state = state_bytes(model, system_prompts(random.Random(0))[0] + " user 0 question 1")
    cache_bytes = int(CACHE_STATES * per_state)
    Deployment.objects.all().delete()
    local_cpu_pool("local", "This machine")
    user, _ = get_user_model().objects.get_or_create(username="bench-routing")
    from portal.models import Organization

    org = Organization.objects.filter(slug="bench-routing").first() or organization_create(
        name="Bench routing", slug="bench-routing", owner=user
    )
    _key, raw = api_key_create(organization=org, user=user, name="bench")
    d = Deployment.objects.create(
        organization=org,
        name="routing",
        engine="llama.cpp",
        model_ref=str(model),
        engine_args=[
            "--n_ctx",
            "4096",
            "--cache",
            "true",
            "--cache_size",
            str(cache_bytes),
            "--n_threads",
            "1",
        ],
        gpu_type=GpuType.objects.get(code="cpu"),
        min_replicas=1,
        max_replicas=2,
        desired_replicas=2,
        regions=["local"],
    )
    port = 18000 + os.getpid() % 1000
    gateway = start_gateway(port)
    base = f"http://127.0.0.1:{port}"
    try:
        print(
            f"model: random llama {EMBD}×{LAYERS} ({model.stat().st_size >> 20} MiB), "
            f"{USERS} users × {TURNS} turns, 8 system prompts of ~1k tokens, "
            f"concurrency {CONCURRENCY}, 2 replicas, 1 thread each"
        )
        print(
            f"prompt cache per replica: {cache_bytes >> 10} KiB = {CACHE_STATES:g} "
            f"system-prompt states of {per_state >> 10} KiB (of 8 prompts in play)"
        )
        print(f"machine: {os.cpu_count()} cores, shared by the engines, the gateway and this load")
        figures = {}
        for policy in ("least_busy", "prefix_affinity"):
            figures[policy] = run_policy(d, policy, base, raw, seed=1)
        print(
            f"\n{'policy':<16}{'TTFT p50':>10}{'TTFT p95':>10}{'out tok/s':>11}"
            f"{'errors':>8}{'whole prompt read':>19}{'spilled':>9}  requests per replica (max/mean)"
        )
        for policy, f in figures.items():
            full, total = f["full_prefills"]
            print(
                f"{policy:<16}{f['ttft_p50_ms']:>8.0f}ms{f['ttft_p95_ms']:>8.0f}ms"
                f"{f['tokens_per_s']:>11.1f}{f['errors']:>8}{f'{full}/{total}':>19}"
                f"{f['spilled']:>9.0f}  "
                f"{f['per_replica']} ({f['max_load_ratio']:.2f})"
            )
        lb, pa = figures["least_busy"], figures["prefix_affinity"]
        gain = lb["ttft_p50_ms"] / pa["ttft_p50_ms"] if pa["ttft_p50_ms"] else float("nan")
        print(f"prefix affinity TTFT p50 gain: {gain:.2f}×")

        routed = spills(base)
        samples, reaction, errors = autoscale_trace(d, base, raw)
        routed = {k: v - routed.get(k, 0) for k, v in spills(base).items()}
        print("\nautoscaling trace (load: 1 user 0-30 s, 6 users 30-105 s, 1 user after)")
        print(f"{'t (s)':>6}{'desired':>9}{'running':>9}{'TTFT p95 (10 s)':>17}")
        for t, desired, run, p95 in samples:
            print(f"{t:>6.0f}{desired:>9}{run:>9}{(f'{p95:.0f} ms' if p95 else '—'):>17}")
        print(
            f"scale-up reaction (load step → 2nd replica serving): {reaction:.1f} s; "
            f"errors during the trace: {errors}"
        )
        print(
            "prefix routing during the trace: "
            + ", ".join(f"{k} {v:.0f}" for k, v in sorted(routed.items()))
        )
        print(
            f"RESULT ttft_p50_least_busy_ms={lb['ttft_p50_ms']:.0f} "
            f"ttft_p50_prefix_ms={pa['ttft_p50_ms']:.0f} prefix_ttft_gain={gain:.2f} "
            f"max_load_ratio={pa['max_load_ratio']:.2f} scale_up_reaction_s={reaction:.1f}"
        )
    finally:
        Deployment.objects.filter(pk=d.pk).update(desired_replicas=0)
        deadline = time.monotonic() + 120
        while (
            time.monotonic() < deadline
            and d.replicas.filter(
                status__in=["pending", "starting", "running", "draining", "stopping"]
            ).exists()
        ):
            deployment_reconcile(deployment_id=d.pk)
            time.sleep(0.5)
        gateway.terminate()
        gateway.wait(timeout=30)


if __name__ == "__main__":
    main()
