"""Measure one OpenAI-compatible endpoint under a workload and a load: the function every
part of the Lab calls (benchmarks, tunings, the routing bench).

``measure`` knows nothing of organizations or deployments: it takes a base URL, a bearer
key and a model name, so it measures the gateway, one replica or any server alike. The
workload, load and SLO are the dicts ``lab.specs`` parses (defaults filled in).

Each point streams its requests (``stream_options.include_usage``) and takes, per request:
TTFT (send → first content token), ITL (mean gap between later tokens), E2E, and output
tokens from the engine's ``usage`` (chunks counted where the engine sends none).
"""

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field

from lab.loadgen import RequestResult, Session, prompts_for_point

PERCENTILES = (50, 95, 99)


@dataclass
class Point:
    concurrency: int | None
    rate: float | None
    requests: int
    errors: int
    duration_s: float
    requests_per_s: float
    output_tokens: int
    output_tokens_per_s: float
    output_tokens_per_s_per_user: float
    ttft_ms: dict[str, float]
    itl_ms: dict[str, float]
    e2e_ms: dict[str, float]
    error_rate: float
    goodput: float  # requests/s that met every SLO bound
    meets_slo: bool
    seed: int
    cost_per_1m_output_tokens: float | None = None  # filled by the caller that knows prices
    error_samples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


ProgressFn = Callable[[float, str], None]
StopFn = Callable[[], bool]
AsyncStop = Callable[[], Awaitable[bool]]


def _pct(values: list[float]) -> dict[str, float]:
    if not values:
        return {f"p{p}": 0.0 for p in PERCENTILES}
    s = sorted(values)
    out = {}
    for p in PERCENTILES:
        # Nearest-rank percentile: an observed value, never an interpolation.
        k = max(0, math.ceil(p / 100 * len(s)) - 1)
        out[f"p{p}"] = round(s[k], 3)
    return out


def _meets(r: RequestResult, slo: dict) -> bool:
    if not r.ok:
        return False
    bounds = (("ttft_p95_ms", r.ttft_ms), ("itl_p95_ms", r.itl_ms), ("e2e_p95_ms", r.e2e_ms))
    return all(slo.get(k) is None or v <= slo[k] for k, v in bounds)


def summarize(
    results: list[RequestResult],
    *,
    duration_s: float,
    slo: dict,
    seed: int,
    concurrency: int | None = None,
    rate: float | None = None,
) -> Point:
    ok = [r for r in results if r.ok]
    n, errors = len(results), len(results) - len(ok)
    out_tokens = sum(r.output_tokens for r in ok)
    dur = max(duration_s, 1e-9)
    ttft = _pct([r.ttft_ms for r in ok])
    itl = _pct([r.itl_ms for r in ok if r.output_tokens > 1])
    e2e = _pct([r.e2e_ms for r in ok])
    error_rate = errors / n if n else 0.0
    per_user = [r.output_tokens / (r.e2e_ms / 1000) for r in ok if r.e2e_ms > 0]
    meets = error_rate <= slo.get("error_rate", 1.0) and all(
        slo.get(k) is None or d["p95"] <= slo[k]
        for k, d in (("ttft_p95_ms", ttft), ("itl_p95_ms", itl), ("e2e_p95_ms", e2e))
    )
    return Point(
        concurrency=concurrency,
        rate=rate,
        requests=n,
        errors=errors,
        duration_s=round(dur, 3),
        requests_per_s=round(len(ok) / dur, 4),
        output_tokens=out_tokens,
        output_tokens_per_s=round(out_tokens / dur, 3),
        output_tokens_per_s_per_user=round(sum(per_user) / len(per_user), 3) if per_user else 0.0,
        ttft_ms=ttft,
        itl_ms=itl,
        e2e_ms=e2e,
        error_rate=round(error_rate, 4),
        goodput=round(sum(1 for r in results if _meets(r, slo)) / dur, 4),
        meets_slo=meets,
        seed=seed,
        error_samples=sorted({r.error for r in results if r.error})[:5],
    )


async def _run_point(
    session: Session,
    *,
    workload: dict,
    seed: int,
    concurrency: int | None,
    rate: float | None,
    timeout_s: float,
    should_stop: AsyncStop,
) -> tuple[list[RequestResult], float]:
    jobs = prompts_for_point(workload, seed=seed)
    results: list[RequestResult] = []
    queue: asyncio.Queue = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)

    async def closed_loop() -> None:
        # The stop check awaits (a thread): another user may take the last job meanwhile.
        while not await should_stop():
            try:
                job = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            results.extend(await session.run_job(job, timeout_s=timeout_s))

    start = time.perf_counter()
    if rate is None:
        await asyncio.gather(*(closed_loop() for _ in range(concurrency or 1)))
    else:
        # Poisson arrivals: exponential gaps drawn from the point's own seed.
        rng = random.Random(seed ^ 0x5EED)  # noqa: S311 - replayable arrivals, not secrets
        tasks = []
        for job in jobs:
            if await should_stop():
                break
            tasks.append(asyncio.create_task(session.run_job(job, timeout_s=timeout_s)))
            await asyncio.sleep(rng.expovariate(rate))
        for chunk in await asyncio.gather(*tasks):
            results.extend(chunk)
    return results, time.perf_counter() - start


def point_seed(seed: int, index: int) -> int:
    return (seed * 1_000_003 + index) % (2**63)


async def measure_async(
    *,
    base_url: str,
    api_key: str,
    model: str,
    workload: dict,
    load: dict,
    slo: dict,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    before_point: Callable[[], None] | None = None,
    on_point: Callable[[Point], None] | None = None,
) -> list[Point]:
    # Callers' callbacks may touch the database (Django refuses that inside an event
    # loop), so each runs in a worker thread.
    async def progress(fraction: float, message: str) -> None:
        if on_progress:
            await asyncio.to_thread(on_progress, fraction, message)

    async def stop() -> bool:
        return bool(should_stop) and await asyncio.to_thread(should_stop)  # type: ignore[arg-type]

    seed = workload.get("seed")
    seed = 0 if seed is None else seed
    points: list[Point] = []
    async with Session(base_url=base_url, api_key=api_key, model=model) as session:
        if workload.get("warmup_requests"):
            await progress(0.0, f"warm-up: {workload['warmup_requests']} requests (not counted)")
            warm = dict(workload, requests_per_point=workload["warmup_requests"])
            await _run_point(
                session,
                workload=warm,
                seed=point_seed(seed, 999_999),
                concurrency=1,
                rate=None,
                timeout_s=load["timeout_s"],
                should_stop=stop,
            )

        async def one(i: int, concurrency: int | None, rate: float | None) -> Point:
            if before_point:
                await asyncio.to_thread(before_point)
            ps = point_seed(seed, i)
            results, dur = await _run_point(
                session,
                workload=workload,
                seed=ps,
                concurrency=concurrency,
                rate=rate,
                timeout_s=load["timeout_s"],
                should_stop=stop,
            )
            p = summarize(
                results, duration_s=dur, slo=slo, seed=ps, concurrency=concurrency, rate=rate
            )
            if on_point:
                await asyncio.to_thread(on_point, p)
            return p

        if load["kind"] == "slo_search":
            points = await _slo_search(one, load=load, progress=progress, stop=stop)
        else:
            plan = [(c, None) for c in load["concurrency"]] + [(None, r) for r in load["rates"]]
            for i, (c, r) in enumerate(plan):
                if await stop():
                    break
                label = f"concurrency {c}" if c is not None else f"rate {r:g}/s"
                await progress(i / len(plan), f"point {i + 1}/{len(plan)}: {label}")
                p = await one(i, c, r)
                points.append(p)
                await progress((i + 1) / len(plan), _point_line(p))
    return points


async def _slo_search(one, *, load: dict, progress, stop: AsyncStop) -> list[Point]:
    """The highest concurrency that meets the SLO: double until it fails (or the cap), then
    bisect between the last pass and the first failure."""
    points: list[Point] = []
    tried: dict[int, Point] = {}
    cap = load["max_concurrency"]
    steps_max = 2 * max(1, math.ceil(math.log2(cap))) + 1

    async def at(c: int) -> Point:
        if c not in tried:
            frac = min(len(points) / steps_max, 0.99)
            await progress(frac, f"point {len(points) + 1}: concurrency {c}")
            tried[c] = await one(len(points), c, None)
            points.append(tried[c])
            await progress(min(len(points) / steps_max, 0.99), _point_line(tried[c]))
        return tried[c]

    good, bad, c = 0, None, 1
    while c <= cap and not await stop():
        if (await at(c)).meets_slo:
            good, c = c, c * 2
        else:
            bad = c
            break
    if bad is None and good < cap and not await stop() and (await at(cap)).meets_slo:
        good = cap
    elif bad is None and good < cap:
        bad = cap
    while bad is not None and bad - good > 1 and not await stop():
        mid = (good + bad) // 2
        if (await at(mid)).meets_slo:
            good = mid
        else:
            bad = mid
    return sorted(points, key=lambda p: p.concurrency or 0)


def _point_line(p: Point) -> str:
    where = f"c={p.concurrency}" if p.concurrency is not None else f"rate={p.rate:g}/s"
    return (
        f"{where}: {p.requests_per_s:.2f} req/s, {p.output_tokens_per_s:.1f} tok/s, "
        f"TTFT p95 {p.ttft_ms['p95']:.0f} ms, ITL p95 {p.itl_ms['p95']:.1f} ms, "
        f"errors {p.errors}/{p.requests}" + (" — meets SLO" if p.meets_slo else "")
    )


def measure(
    *,
    base_url: str,
    api_key: str,
    model: str,
    workload: dict,
    load: dict,
    slo: dict,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    before_point: Callable[[], None] | None = None,
    on_point: Callable[[Point], None] | None = None,
) -> list[Point]:
    """Measure ``base_url`` (the part before ``/v1/...``) and return one Point per load
    point. Blocking; runs its own event loop. ``on_progress(fraction, message)`` is called
    as points start and finish; ``should_stop()`` is polled between requests (a cancelled
    run returns the points finished so far); ``before_point()`` runs before each point
    (e.g. reset the engine's prefix cache); ``on_point(point)`` gets each point as it is
    measured."""
    return asyncio.run(
        measure_async(
            base_url=base_url,
            api_key=api_key,
            model=model,
            workload=workload,
            load=load,
            slo=slo,
            on_progress=on_progress,
            should_stop=should_stop,
            before_point=before_point,
            on_point=on_point,
        )
    )
