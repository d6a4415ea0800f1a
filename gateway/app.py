"""The data plane: an ASGI app (Starlette) in its own process, off Django's request stack.

It authenticates the API key, finds the deployment by `model`, picks a running replica —
nearest region first, then the one with the fewest requests in flight — and passes the
request through (streaming too), retrying another replica on a connection failure before
the first byte. Token usage reported by the engine is queued and written to the billing
ledger in batches, off the request path, and flushed on shutdown.
"""

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import defaultdict

import aiohttp
from asgiref.sync import sync_to_async
from django.conf import settings
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route as Path

from deployments.models import LATENCY_BUCKETS_MS
from gateway import routes
from gateway.limits import Limiter

log = logging.getLogger("gateway")


def db(fn):
    """Run a database read or write in a worker thread, then close that thread's
    connection: reads are rare (cached) and threads come and go, so nothing lingers."""
    from django.db import connection

    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        finally:
            connection.close()

    return sync_to_async(call, thread_sensitive=False)


def error(status: int, message: str, type_: str, code: str, headers=None) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": type_, "param": None, "code": code}},
        status_code=status,
        headers=headers,
    )


class Meter:
    """Token usage on its way to the ledger: queued by requests, written in batches."""

    def __init__(self):
        self.queue: asyncio.Queue = asyncio.Queue()
        self.task = None

    def record(self, route: routes.Route, usage: dict | None) -> None:
        if not usage:
            return
        self.queue.put_nowait((route, usage, time.time()))

    async def run(self) -> None:
        while True:
            item = await self.queue.get()
            await asyncio.sleep(0.2)  # gather a batch: one ledger write, not one a request
            batch = [item]
            while not self.queue.empty() and len(batch) < 5000:
                batch.append(self.queue.get_nowait())
            await db(_write_usage)(batch)

    async def flush(self) -> None:
        batch = []
        while not self.queue.empty():
            batch.append(self.queue.get_nowait())
        if batch:
            await db(_write_usage)(batch)


def _wake(deployment_id: int) -> None:
    from django.core.exceptions import ValidationError

    from deployments.services import deployment_wake

    with contextlib.suppress(ValidationError):  # over quota: it stays asleep, 503 says so
        deployment_wake(deployment_id=deployment_id)


def _report(deployment_id: int, in_flight: int, requests: int) -> None:
    from deployments.services import load_report

    load_report(deployment_id=deployment_id, in_flight=float(in_flight), requests=requests)


def _traffic(deployment_id: int, minute: int, row: dict) -> None:
    from datetime import UTC, datetime

    from deployments.services import traffic_record

    traffic_record(
        deployment_id=deployment_id,
        minute=datetime.fromtimestamp(minute, UTC),
        requests=row["requests"],
        errors=row["errors"],
        tokens=row["tokens"],
        latency_buckets=row["buckets"],
    )


def _total(usage: dict | None) -> int:
    return int((usage or {}).get("total_tokens") or 0)


def _write_usage(batch) -> None:
    """One ledger write for a batch of requests."""
    from datetime import UTC, datetime

    from billing.services import meter_tokens_many

    meter_tokens_many(
        [
            {
                "organization_id": route.organization_id,
                "request_id": uuid.uuid4().hex,
                "deployment_id": route.deployment_id,
                "deployment_name": route.name,
                "model": route.name,
                "input_tokens": int(usage.get("prompt_tokens") or 0),
                "output_tokens": int(usage.get("completion_tokens") or 0),
                "at": datetime.fromtimestamp(at, UTC),
            }
            for route, usage, at in batch
        ]
    )


def _wake(deployment_id: int) -> None:
    from django.core.exceptions import ValidationError

    from deployments.services import deployment_wake

    with contextlib.suppress(ValidationError):  # over quota: it stays asleep, 503 says so
        deployment_wake(deployment_id=deployment_id)


def _report(deployment_id: int, in_flight: int, requests: int) -> None:
    from deployments.services import load_report

    load_report(deployment_id=deployment_id, in_flight=float(in_flight), requests=requests)


def _traffic(deployment_id: int, minute: int, row: dict) -> None:
    from datetime import UTC, datetime

    from deployments.services import traffic_record

    traffic_record(
        deployment_id=deployment_id,
        minute=datetime.fromtimestamp(minute, UTC),
        requests=row["requests"],
        errors=row["errors"],
        tokens=row["tokens"],
        latency_buckets=row["buckets"],
    )


def _total(usage: dict | None) -> int:
    return int((usage or {}).get("total_tokens") or 0)


def _write_usage(batch) -> None:
    """One ledger write for a batch of requests (rates looked up once per model)."""
    from datetime import UTC, datetime

    from billing.models import UsageKind, UsageRecord
    from billing.services import MICROS_PER_CENT, token_rates_cents, usage_ingest

    rates: dict = {}
    records = []
    for route, usage, at in batch:
        when = datetime.fromtimestamp(at, UTC)
        if route.name not in rates:
            rates[route.name] = token_rates_cents(route.name, when)
        rate_in, rate_out = rates[route.name]
        request_id = uuid.uuid4().hex
        for kind, qty, rate in (
            (UsageKind.INPUT_TOKENS, int(usage.get("prompt_tokens") or 0), rate_in),
            (UsageKind.OUTPUT_TOKENS, int(usage.get("completion_tokens") or 0), rate_out),
        ):
            if qty:
                records.append(
                    UsageRecord(
                        organization_id=route.organization_id,
                        kind=kind,
                        quantity=qty,
                        amount_micros=round(qty * rate * MICROS_PER_CENT / 1_000_000),
                        window_start=when,
                        window_end=when,
                        deployment_id=route.deployment_id,
                        deployment_name=route.name,
                        model=route.name,
                        idempotency_key=f"tok:{request_id}:{kind}",
                    )
                )
    usage_ingest(records)


def create_app() -> Starlette:
    registry = CollectorRegistry()
    m_requests = Counter(
        "gantry_gateway_requests_total", "Requests", ["model", "status"], registry=registry
    )
    m_latency = Histogram(
        "gantry_gateway_request_seconds", "Request latency", ["model"], registry=registry
    )
    m_ttft = Histogram(
        "gantry_gateway_time_to_first_token_seconds",
        "Time to first byte",
        ["model"],
        registry=registry,
    )
    m_tokens = Counter(
        "gantry_gateway_tokens_total", "Tokens", ["model", "kind"], registry=registry
    )
    m_inflight = Gauge(
        "gantry_gateway_in_flight", "Requests in flight per replica", ["replica"], registry=registry
    )

    keys = routes.Cache(ttl=10.0)
    spend = routes.Cache(ttl=10.0)
    limiter = Limiter()
    org_routes = routes.Cache(ttl=routes.route_ttl())
    locations = routes.Cache(ttl=60.0)
    cidrs = routes.CidrTable(getattr(settings, "GATEWAY_REGION_CIDRS", ""))
    in_flight: dict[int, int] = defaultdict(int)
    pumps: set = set()  # engine reads still under way (kept referenced until done)
    dep_in_flight: dict[int, int] = defaultdict(int)  # per deployment, for the autoscaler
    dep_requests: dict[int, int] = defaultdict(int)
    traffic: dict = {}  # (deployment id, minute) -> counts, for the deployment page

    def observe(route, status: int, usage: dict | None, seconds: float) -> None:
        minute = int(time.time() // 60) * 60
        row = traffic.setdefault(
            (route.deployment_id, minute),
            {
                "requests": 0,
                "errors": 0,
                "tokens": 0,
                "buckets": [0] * (len(LATENCY_BUCKETS_MS) + 1),
            },
        )
        row["requests"] += 1
        row["errors"] += status >= 500
        row["tokens"] += _total(usage)
        ms = seconds * 1000
        row["buckets"][
            next((i for i, b in enumerate(LATENCY_BUCKETS_MS) if ms <= b), len(LATENCY_BUCKETS_MS))
        ] += 1

    meter = Meter()
    # aiohttp's client: on this path (many small proxied requests) it spends far less CPU
    # per request than httpx, which is what the gateway's throughput comes down to.
    sessions: dict = {}

    def client() -> aiohttp.ClientSession:
        if "s" not in sessions:
            sessions["s"] = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=1000, ttl_dns_cache=300),
                timeout=aiohttp.ClientTimeout(total=600, sock_connect=3),
                auto_decompress=False,
            )
        return sessions["s"]

    async def authenticate(request: Request):
        header = request.headers.get("authorization", "")
        raw = header[7:].strip() if header.lower().startswith("bearer ") else ""
        hit, value = keys.get(raw)
        if not hit:
            value = await db(routes.key_lookup)(raw)
            keys.put(raw, value)
        return value

    async def org_table(org_id: int) -> dict[str, routes.Route]:
        hit, value = org_routes.get(org_id)
        if not hit:
            value = await db(routes.routes_for)(org_id)
            org_routes.put(org_id, value)
        return value

    async def region_table():
        hit, value = locations.get("all")
        if not hit:
            value = await db(routes.region_locations)()
            locations.put("all", value)
        return value

    async def ordered_targets(request: Request, route: routes.Route) -> list[routes.Target]:
        client_region = request.headers.get("x-gantry-region") or cidrs.region_of(
            request.client.host if request.client else ""
        )
        where = await region_table()
        here = where.get(client_region)

        def key(t: routes.Target):
            far = routes.distance_km(here, where[t.region]) if here and t.region in where else 0.0
            return (round(far), in_flight[t.replica_id], t.replica_id)

        return sorted(route.targets, key=key)

    async def proxy(request: Request, path: str) -> Response:
        started = time.perf_counter()
        auth = await authenticate(request)
        if auth is None:
            return error(
                401, "Invalid or revoked API key.", "invalid_request_error", "invalid_api_key"
            )
        try:
            body = json.loads(await request.body())
        except ValueError:
            return error(400, "The body must be JSON.", "invalid_request_error", "invalid_json")
        key_id, org_id, rpm, tpm = auth
        hit, blocked = spend.get(org_id)
        if not hit:
            blocked = await db(routes.spend_blocked)(org_id)
            spend.put(org_id, blocked)
        if blocked:
            return error(
                429, blocked, "insufficient_quota", "spend_limit", headers={"Retry-After": "3600"}
            )
        wait = await limiter.admit(key_id, rpm, tpm)
        if wait is not None:
            return error(
                429,
                "Rate limit reached for this API key.",
                "rate_limit_exceeded",
                "rate_limit_exceeded",
                headers={"Retry-After": str(wait)},
            )
        name = str(body.get("model", ""))
        route = (await org_table(org_id)).get(name)
        if route is None:
            return error(
                404,
                f"The model `{name}` does not exist.",
                "invalid_request_error",
                "model_not_found",
            )
        targets = await ordered_targets(request, route)
        if not targets:
            # Scaled to zero: wake it. A client that says how long it will wait (like
            # X-Scale-Up-Timeout elsewhere) is held until a replica runs.
            waking = route.desired == 0
            if waking:
                await db(_wake)(route.deployment_id)
            try:
                wait_s = min(float(request.headers.get("x-scale-up-timeout", "0")), 600.0)
            except ValueError:
                wait_s = 0.0
            deadline = time.monotonic() + wait_s
            while not targets and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                org_routes.items.pop(org_id, None)
                route = (await org_table(org_id)).get(name) or route
                targets = await ordered_targets(request, route)
            if not targets and waking:
                return error(
                    503,
                    f"`{name}` is waking up from zero replicas; retry shortly.",
                    "server_error",
                    "model_waking",
                    headers={"Retry-After": "10"},
                )
            if not targets:
                return error(
                    503,
                    f"`{name}` has no running replica yet ({route.status}).",
                    "server_error",
                    "model_not_ready",
                    headers={"Retry-After": "5"},
                )
        stream = bool(body.get("stream"))
        if stream:
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        payload = json.dumps(body).encode()
        dep_requests[route.deployment_id] += 1
        for target in targets:
            in_flight[target.replica_id] += 1
            dep_in_flight[route.deployment_id] += 1
            m_inflight.labels(str(target.replica_id)).inc()
            try:
                upstream = await client().post(
                    f"{target.url}{path}",
                    data=payload,
                    headers={"content-type": "application/json"},
                )
            except (
                TimeoutError,
                aiohttp.ClientConnectorError,
                aiohttp.ServerDisconnectedError,
            ) as exc:
                log.warning("replica %s unreachable, trying another: %s", target.url, exc)
                in_flight[target.replica_id] -= 1
                dep_in_flight[route.deployment_id] -= 1
                m_inflight.labels(str(target.replica_id)).dec()
                org_routes.items.pop(auth[1], None)  # see the reconciler's view sooner
                continue
            m_ttft.labels(name).observe(time.perf_counter() - started)
            if not stream:
                try:
                    data = await upstream.read()
                finally:
                    upstream.release()
                    in_flight[target.replica_id] -= 1
                    dep_in_flight[route.deployment_id] -= 1
                    m_inflight.labels(str(target.replica_id)).dec()
                usage = None
                with contextlib.suppress(ValueError, AttributeError):
                    usage = json.loads(data).get("usage")
                record(route, usage)
                await limiter.spend_tokens(key_id, _total(usage))
                observe(route, upstream.status, usage, time.perf_counter() - started)
                m_requests.labels(name, str(upstream.status)).inc()
                m_latency.labels(name).observe(time.perf_counter() - started)
                return Response(
                    data,
                    status_code=upstream.status,
                    media_type="application/json",
                    headers={"x-gantry-region": target.region},
                )
            return StreamingResponse(
                relay(upstream, target, route, started, key_id),
                status_code=upstream.status,
                media_type="text/event-stream",
                headers={"x-gantry-region": target.region},
            )
        return error(
            503,
            f"No replica of `{name}` could be reached.",
            "server_error",
            "model_unreachable",
            headers={"Retry-After": "2"},
        )

    async def report_load():
        """Tell the autoscaler what this process sees, every few seconds."""
        while True:
            await asyncio.sleep(getattr(settings, "GATEWAY_LOAD_REPORT_S", 5.0))
            pending, traffic_rows = dict(traffic), list(traffic)
            for k in traffic_rows:
                traffic.pop(k, None)
            for (deployment_id, minute), row in pending.items():
                with contextlib.suppress(Exception):
                    await db(_traffic)(deployment_id, minute, row)
            for deployment_id in set(dep_requests) | {k for k, v in dep_in_flight.items() if v}:
                requests_seen = dep_requests.pop(deployment_id, 0)
                with contextlib.suppress(Exception):
                    await db(_report)(deployment_id, dep_in_flight[deployment_id], requests_seen)

    def record(route, usage):
        meter.record(route, usage)
        if usage:
            m_tokens.labels(route.name, "input").inc(usage.get("prompt_tokens") or 0)
            m_tokens.labels(route.name, "output").inc(usage.get("completion_tokens") or 0)

    async def relay(upstream, target, route, started, key_id):
        """Stream the engine's answer to the client. The engine is read by a task of its
        own, to the end, whatever the client does: if the client walks away half-way,
        the engine's final usage is still read and metered."""
        queue: asyncio.Queue = asyncio.Queue()
        usage: dict = {}

        async def pump():
            buffer = b""
            try:
                async for chunk in upstream.content.iter_any():
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        if line.startswith(b"data:") and b'"usage"' in line:
                            with contextlib.suppress(ValueError, AttributeError):
                                found = json.loads(line[5:].strip()).get("usage")
                                if found:
                                    usage.update(found)
                    queue.put_nowait(chunk)
            finally:
                queue.put_nowait(None)
                upstream.release()
                record(route, usage)
                await limiter.spend_tokens(key_id, _total(usage))
                observe(route, upstream.status, usage, time.perf_counter() - started)
                in_flight[target.replica_id] -= 1
                dep_in_flight[route.deployment_id] -= 1
                m_inflight.labels(str(target.replica_id)).dec()
                m_requests.labels(route.name, str(upstream.status)).inc()
                m_latency.labels(route.name).observe(time.perf_counter() - started)

        task = asyncio.get_running_loop().create_task(pump())
        pumps.add(task)
        task.add_done_callback(pumps.discard)
        while (chunk := await queue.get()) is not None:
            yield chunk

    async def chat(request: Request) -> Response:
        return await proxy(request, "/v1/chat/completions")

    async def completions(request: Request) -> Response:
        return await proxy(request, "/v1/completions")

    async def models(request: Request) -> Response:
        auth = await authenticate(request)
        if auth is None:
            return error(
                401, "Invalid or revoked API key.", "invalid_request_error", "invalid_api_key"
            )
        table = await org_table(auth[1])
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {"id": r.name, "object": "model", "created": 0, "owned_by": "gantry"}
                    for r in sorted(table.values(), key=lambda r: r.name)
                ],
            }
        )

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True})

    @contextlib.asynccontextmanager
    async def lifespan(app):
        meter.task = asyncio.create_task(meter.run())
        reporter = asyncio.create_task(report_load())
        try:
            yield
        finally:
            if pumps:  # let answers under way finish, so their usage is metered
                await asyncio.wait(pumps, timeout=30)
            meter.task.cancel()
            reporter.cancel()
            await meter.flush()  # nothing metered is lost on a clean shutdown
            if "s" in sessions:
                await sessions["s"].close()

    app = Starlette(
        routes=[
            Path("/v1/chat/completions", chat, methods=["POST"]),
            Path("/v1/completions", completions, methods=["POST"]),
            Path("/v1/models", models, methods=["GET"]),
            Path("/metrics", metrics, methods=["GET"]),
            Path("/healthz", health, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.meter = meter
    return app
