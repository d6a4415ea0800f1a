"""Tuning efficiency and measurement fidelity, in one run on this machine.

Side by side, on the bench model (a ~120M-parameter llama with random weights, served by
the real llama.cpp engine) in a local pool, objective max_throughput_under_slo:

* grid   — every valid configuration of a llama.cpp flag space (threads, batch, micro-batch,
           flash attention, KV-cache type), each one a trial of Gantry's own machinery: a
           temporary deployment, measured by the Lab, torn down.
* search — the Lab's Optuna search (TPE, pruning) over the same space, with a budget of
           30% of the grid's trials, through the same machinery.

search_vs_grid is the search's best objective over the grid's best (each as measured in
its own run). The fidelity figures compare the Lab's TTFT p50 and output tokens/s with
what an independent observer saw of the very same requests: a pass-through proxy between
the load generator and the engine that timestamps the bytes (first content chunk, last
byte) and reads the token usage from the stream, sharing no code with the Lab's runner.

Needs PostgreSQL (BENCH_DATABASE_URL) and Redis-free settings; the engine runs as child
processes of this script and is stopped at the end. BENCH_REQUESTS sets requests per load
point (default 6).
"""

import asyncio
import contextlib
import json
import math
import os
import sys
import threading
import time

from _setup import django_on_postgres, local_cpu_pool

REQUESTS = int(os.environ.get("BENCH_REQUESTS", "6"))
SHARE = 0.30
SPACE = {
    "--n_threads": [1, 2],
    "--n_batch": [32, 512],
    "--n_ubatch": [32, 512],
    "--flash_attn": [False, True],
    "--type_k": [1, 8],
    "--type_v": [1],
    "--cache": [False],
    "--n_threads_batch": [2],
}
WORKLOAD = {
    "input_tokens": 96,
    "output_tokens": 24,
    "requests_per_point": REQUESTS,
    "warmup_requests": 1,
}
LOAD = {"kind": "concurrency", "concurrency": [1, 2]}
SLO = {"ttft_p95_ms": 20_000, "error_rate": 0.0}


def setup():
    os.environ.setdefault("CELERY_BROKER_URL", "memory://")
    os.environ.setdefault("GANTRY_INSTANCE", "bench-tuning")
    django_on_postgres()
    from django.contrib.auth import get_user_model

    from billing.gpu_rates import ensure_default_rates
    from billing.plans import ensure_default_plan
    from deployments.gpu_types import ensure_gpu_types
    from deployments.models import Deployment, GpuPool, Node
    from lab.models import Tuning
    from marketplace.services import catalog_load
    from portal.models import Membership, Organization, Role

    ensure_gpu_types()
    ensure_default_rates()
    ensure_default_plan()
    catalog_load()
    Tuning.objects.all().delete()
    Deployment.objects.filter(name__startswith="tune-").delete()
    _region, pool = local_cpu_pool("bench-local", "bench")
    Node.objects.filter(pool=pool).update(gpus_allocated=0)
    GpuPool.objects.exclude(pk=pool.pk).update(enabled=False)
    user, _ = get_user_model().objects.get_or_create(username="bench-tuner")
    org, _ = Organization.objects.get_or_create(slug="bench-tuning", defaults={"name": "bench"})
    Membership.objects.get_or_create(organization=org, user=user, defaults={"role": Role.OWNER})
    return org, user


def make_tuning(org, user, *, trials: int, warm: list[dict]):
    from lab.models import Tuning
    from lab.tunings import tuning_create

    t = tuning_create(
        organization=org,
        user=user,
        model="gantry-bench-random-llama",
        gpu_types=["cpu"],
        objective="max_throughput_under_slo",
        slo=SLO,
        budget={"trials": trials},
        workload=WORKLOAD,
        load=LOAD,
        space=SPACE,
    )
    # Fixed seed for the search; the grid is the space's every valid configuration, queued
    # in order (the same queue a warm start uses), so both run through the same trial code.
    Tuning.objects.filter(pk=t.pk).update(warm_start=warm, seed=20261206)
    return t


def run(t):
    from lab.models import TrialState, Tuning
    from lab.tuning_run import tuning_run

    started = time.monotonic()
    tuning_run(tuning_id=t.pk)
    t = Tuning.objects.get(pk=t.pk)
    trials = list(t.trials.order_by("number"))
    values = [x.value for x in trials if x.state == TrialState.COMPLETE and x.value]
    return t, trials, (max(values) if values else float("nan")), time.monotonic() - started


class Observer:
    """A pass-through HTTP proxy that times what crosses it (independent of the runner)."""

    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self.records: list[dict] = []
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()

    def start(self) -> str:
        threading.Thread(target=self._serve, daemon=True).start()
        self.ready.wait(10)
        return f"http://127.0.0.1:{self.port}"

    def _serve(self):
        from aiohttp import ClientSession, ClientTimeout, web

        async def handle(request: web.Request):
            body = await request.read()
            headers = {
                k: v
                for k, v in request.headers.items()
                if k.lower() in ("authorization", "content-type")
            }
            t0 = time.perf_counter()
            first, chunks, usage, pending = None, 0, 0, b""
            async with (
                ClientSession(timeout=ClientTimeout(total=600)) as s,
                s.request(
                    request.method, self.upstream + request.path_qs, data=body, headers=headers
                ) as up,
            ):
                ctype = up.headers.get("Content-Type", "")
                resp = web.StreamResponse(status=up.status, headers={"Content-Type": ctype})
                await resp.prepare(request)
                async for chunk in up.content.iter_any():
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        if not line.startswith(b"data: {"):
                            continue
                        event = json.loads(line[6:])
                        choice = (event.get("choices") or [{}])[0]
                        text = (choice.get("delta") or {}).get("content") or choice.get("text")
                        if text:
                            first = first or time.perf_counter()
                            chunks += 1
                        if event.get("usage"):
                            usage = event["usage"].get("completion_tokens") or usage
                    # The client may hang up once it has the usage event: what it saw is
                    # recorded all the same.
                    with contextlib.suppress(ConnectionError):
                        await resp.write(chunk)
                with contextlib.suppress(ConnectionError):
                    await resp.write_eof()
            end = time.perf_counter()
            if request.path.endswith("/completions") and up.status == 200:
                # The engine's usage when it sends one; else one token per content chunk
                # (llama.cpp streams a token per chunk).
                tokens = usage or chunks
                self.records.append({"start": t0, "first": first, "end": end, "tokens": tokens})
            return resp

        async def main():
            app = web.Application(client_max_size=8 << 20)
            app.router.add_route("*", "/{tail:.*}", handle)
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]
            self.ready.set()
            while True:
                await asyncio.sleep(3600)

        self.loop.run_until_complete(main())


def fidelity(org, user, best_trial, tuning) -> tuple[float, float]:
    """Deploy the winner, measure it with the Lab through the observer, compare."""
    from deployments.engine_auth import engine_api_key
    from deployments.services import deployment_delete
    from lab import specs
    from lab.runner import measure
    from lab.tuning_run import _wait_ready
    from lab.tunings import tuning_deploy

    d = tuning_deploy(tuning=tuning, user=user, name="bench-fidelity")
    replica = _wait_ready(d.pk, lambda: False)
    try:
        obs = Observer(replica.url)
        url = obs.start()
        workload = specs.workload_parse(dict(WORKLOAD, requests_per_point=max(REQUESTS, 8), seed=7))
        load = specs.load_parse({"kind": "concurrency", "concurrency": [2]})
        [point] = measure(
            base_url=url,
            api_key=engine_api_key(replica.pk),
            model=d.name,
            workload=workload,
            load=load,
            slo=specs.slo_parse({}),
        )
        recs = sorted((r for r in obs.records if r["first"] is not None), key=lambda r: r["start"])
        # The warm-up request (sent alone, first) is not counted by the Lab: nor here.
        recs = recs[1:]
        ttfts = sorted((r["first"] - r["start"]) * 1000 for r in recs)
        ttft_obs = ttfts[max(0, math.ceil(len(ttfts) / 2) - 1)]  # nearest-rank p50, as the Lab
        span = max(r["end"] for r in recs) - min(r["start"] for r in recs)
        tps_obs = sum(r["tokens"] for r in recs) / span
        print(
            f"fidelity: Lab TTFT p50 {point.ttft_ms['p50']:.1f} ms vs observer {ttft_obs:.1f} ms; "
            f"Lab {point.output_tokens_per_s:.2f} tok/s vs observer {tps_obs:.2f} tok/s "
            f"({len(recs)} requests)"
        )
        return point.ttft_ms["p50"] / ttft_obs, point.output_tokens_per_s / tps_obs
    finally:
        from deployments.services import local_pools_shutdown

        deployment_delete(deployment=d)
        local_pools_shutdown(why="bench finished")  # nothing outlives the bench


def main():
    if os.environ.get("BENCH_REUSE"):
        return main_reused()
    org, user = setup()
    from lab import search
    from lab.tunings import tuning_cancel  # noqa: F401 - the same services a person uses

    space = search.search_space("llama.cpp", narrow=SPACE)
    valid = [p for p in search.grid(space) if not search.invalid_reason("llama.cpp", p)]
    budget = max(1, math.floor(len(valid) * SHARE))
    print(
        f"space: {len(search.grid(space))} configurations, {len(valid)} valid; "
        f"search budget {budget} trials ({SHARE:.0%})",
        flush=True,
    )
    grid_t = make_tuning(org, user, trials=len(valid), warm=valid)
    grid_t, grid_trials, grid_best, grid_s = run(grid_t)
    print(
        f"grid:   {len(grid_trials)} trials in {grid_s:.0f} s, best {grid_best:.2f} tok/s per GPU",
        flush=True,
    )
    search_t = make_tuning(org, user, trials=budget, warm=[])
    search_t, search_trials, search_best, search_s = run(search_t)
    pruned = sum(1 for t in search_trials if t.state == "pruned")
    print(
        f"search: {len(search_trials)} trials ({pruned} pruned) in {search_s:.0f} s, "
        f"best {search_best:.2f} tok/s per GPU ({search_t.stop_reason})",
        flush=True,
    )
    for label, trials in (("grid", grid_trials), ("search", search_trials)):
        for t in trials:
            print(f"  {label} #{t.number:>2} {t.state:9} {t.value or 0:8.2f}  {t.params}")
    gb = grid_t.best_trial
    sb = search_t.best_trial
    print(f"grid best config:   {gb.params if gb else None}")
    print(f"search best config: {sb.params if sb else None}")
    ttft_ratio, tps_ratio = fidelity(org, user, sb, search_t)
    from deployments.services import local_pools_shutdown

    local_pools_shutdown()
    print(
        f"RESULT grid_trials={len(grid_trials)} search_trials={len(search_trials)} "
        f"grid_best={grid_best:.3f} search_best={search_best:.3f} "
        f"search_vs_grid={search_best / grid_best:.3f} "
        f"ttft_vs_independent={ttft_ratio:.3f} tps_vs_independent={tps_ratio:.3f}"
    )


def main_reused():
    """BENCH_REUSE=1: the grid and search of the last full run (kept in the bench
    database), and a fresh fidelity measurement of the search's winner."""
    django_on_postgres()
    from django.contrib.auth import get_user_model

    from lab.models import TrialState, Tuning

    grid_t, search_t = Tuning.objects.order_by("-pk")[1], Tuning.objects.order_by("-pk")[0]

    def best(t):
        values = [x.value for x in t.trials.filter(state=TrialState.COMPLETE) if x.value]
        return max(values), t.trials.count()

    grid_best, grid_n = best(grid_t)
    search_best, search_n = best(search_t)
    print(
        f"reused run: grid tuning {grid_t.pk} ({grid_n} trials, best {grid_best:.2f}), "
        f"search tuning {search_t.pk} ({search_n} trials, best {search_best:.2f})"
    )
    user = get_user_model().objects.get(username="bench-tuner")
    ttft_ratio, tps_ratio = fidelity(search_t.organization, user, search_t.best_trial, search_t)
    print(
        f"RESULT grid_trials={grid_n} search_trials={search_n} "
        f"grid_best={grid_best:.3f} search_best={search_best:.3f} "
        f"search_vs_grid={search_best / grid_best:.3f} "
        f"ttft_vs_independent={ttft_ratio:.3f} tps_vs_independent={tps_ratio:.3f}"
    )


if __name__ == "__main__":
    sys.exit(main())
