"""The data plane: an ASGI app (Starlette) in its own process, off Django's request stack.

`create_app` wires the parts together — who is calling (`auth`), where a request goes
(`routing`), how it gets there and back (`relay`), what it costs (`metering`, `limits`) and
what the control plane learns (`control`) — and runs their background tasks for the app's
lifetime. The endpoints are in `handlers`.
"""

import asyncio
import contextlib
import logging
import time

from django.conf import settings
from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Route as Path

from gateway import handlers
from gateway.affinity import Affinity
from gateway.auth import Auth, Caller
from gateway.control import Load
from gateway.counting import answer_text, count_completion, count_prompt
from gateway.limits import Limiter
from gateway.metering import COUNTED, ENGINE, Meter, usage_counts
from gateway.metrics import Metrics
from gateway.relay import Relay
from gateway.routes import Route, Target
from gateway.routing import Router

log = logging.getLogger("gateway")

SHUTDOWN_DRAIN_S = 30.0


class Gateway:
    """The state of one gateway app, and the bookkeeping every proxied request does."""

    def __init__(self):
        self.metrics = Metrics()
        self.auth = Auth()
        self.limiter = Limiter()
        # Prefix homes shared through the limiter's Redis, when there is one.
        self.router = Router(self.metrics, Affinity(self.limiter.redis))
        self.relay = Relay()
        self.meter = Meter()
        self.load = Load(self.metrics)
        self.tasks: set[asyncio.Task] = set()  # bookkeeping still under way (see `spawn`)

    def begin(self, route: Route, target: Target) -> None:
        self.router.in_flight[target.replica_id] += 1
        self.load.in_flight[route.deployment_id] += 1
        self.load.replicas[target.replica_id] += 1
        self.load.organizations.add(route.organization_id)
        self.metrics.in_flight.labels(str(target.replica_id)).inc()

    def end(self, route: Route, target: Target) -> None:
        self.router.in_flight[target.replica_id] -= 1
        self.load.in_flight[route.deployment_id] -= 1
        self.load.replicas[target.replica_id] -= 1
        self.metrics.in_flight.labels(str(target.replica_id)).dec()

    def observe_latency(
        self, route: Route, target: Target, ttft: float | None, itl: float | None
    ) -> None:
        labels = (str(route.deployment_id), route.name, str(target.replica_id))
        if ttft is not None:
            self.metrics.ttft.labels(*labels).observe(ttft)
        if itl is not None:
            self.metrics.itl.labels(*labels).observe(itl)

    def spawn(self, work) -> None:
        """Run `work` off the request path; shutdown waits for it like for a stream."""
        task = asyncio.get_running_loop().create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def settle(
        self,
        caller: Caller,
        route: Route,
        target: Target,
        *,
        status: int,
        usage: dict | None,
        started: float,
        body: dict,
        streamed_tokens: int | None = None,
        answer: dict | None = None,
        ttft: float | None = None,
        itl: float | None = None,
    ) -> tuple[int, int]:
        """Account for a finished (or aborted) answer: the engine's usage when it reported
        a sane one, else the tokens counted (`counting`). An answer the engine refused
        (not 200) and reported nothing for generated nothing to bill. Returns the
        (prompt, completion) tokens metered."""
        counts, source = usage_counts(usage), ENGINE
        if counts is None:
            counts, source = (0, 0), COUNTED
            if status == 200:
                session = self.relay.session()
                prompt = await count_prompt(session, target, body)
                if streamed_tokens is None:
                    completion = await count_completion(session, target, answer_text(answer or {}))
                else:
                    completion = streamed_tokens
                counts = (prompt, completion)
        prompt, completion = counts
        # The meter comes first: it only queues, so nothing after it (a limiter whose Redis
        # is down) can keep the usage from the ledger.
        self.meter.record(route, prompt, completion, source=source)
        self.metrics.tokens.labels(route.name, "input").inc(prompt)
        self.metrics.tokens.labels(route.name, "output").inc(completion)
        seconds = time.perf_counter() - started
        self.load.observe(
            route.deployment_id,
            status,
            prompt + completion,
            seconds,
            replica_id=target.replica_id,
            ttft=ttft,
            itl=itl,
        )
        self.metrics.requests.labels(route.name, str(status)).inc()
        self.metrics.latency.labels(route.name).observe(seconds)
        try:
            await self.limiter.spend_tokens(caller.key_id, prompt + completion)
        except Exception as exc:
            log.warning(
                "could not count tokens against the key's limit (%s: %s)", type(exc).__name__, exc
            )
        return prompt, completion

    @contextlib.asynccontextmanager
    async def running(self):
        self.meter.start()
        reporter = asyncio.get_running_loop().create_task(self.load.run())
        try:
            yield
        finally:
            # Order matters: answers under way finish first, so their usage is queued
            # before the meter writes out what it holds; the session closes last.
            if under_way := self.relay.pumps | self.tasks:
                await asyncio.wait(under_way, timeout=SHUTDOWN_DRAIN_S)
            reporter.cancel()
            await asyncio.gather(reporter, return_exceptions=True)
            await self.meter.stop()
            await self.relay.close()


class BrowserCors:
    """CORS for browsers on GATEWAY_CORS_ORIGINS (the portal, whose playground calls the
    gateway) with a bearer token; no cookies are involved, so none are allowed. Preflights
    are answered here, before any key is looked at.

    Only requests that carry an Origin header (what browsers send) go through Starlette's
    CORS middleware: API clients send none and go straight to the app, without a
    middleware layer and a header parse per request on the gateway's hot path."""

    def __init__(self, app: Starlette, origins: list[str]):
        self.app = app
        self.cors = CORSMiddleware(
            app,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type", "x-scale-up-timeout"],
            expose_headers=["x-gantry-region", "retry-after"],
            allow_credentials=False,
            max_age=600,
        )

    @property
    def state(self):
        return self.app.state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and any(name == b"origin" for name, _ in scope["headers"]):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def create_app() -> Starlette | BrowserCors:
    gateway = Gateway()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        async with gateway.running():
            yield

    app = Starlette(
        routes=[
            Path("/v1/chat/completions", handlers.chat, methods=["POST"]),
            Path("/v1/completions", handlers.completions, methods=["POST"]),
            Path("/v1/models", handlers.models, methods=["GET"]),
            Path("/metrics", handlers.metrics, methods=["GET"]),
            Path("/healthz", handlers.health, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    origins = [o.rstrip("/") for o in getattr(settings, "GATEWAY_CORS_ORIGINS", []) if o]
    return BrowserCors(app, origins) if origins else app
