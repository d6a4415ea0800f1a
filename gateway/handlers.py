"""The gateway's endpoints. Each reads the app's `Gateway` from `request.app.state`.

A proxied request goes: key → spend limit → rate limit → route → replicas (waking a
deployment scaled to zero) → the first replica that answers → bookkeeping when the answer
is complete. Refusals happen before anything is sent to an engine, so a refused request
costs nothing and is never metered.
"""

import asyncio
import json
import logging
import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from gateway import errors
from gateway.auth import Caller
from gateway.control import wake
from gateway.db import db
from gateway.metrics import CONTENT_TYPE
from gateway.relay import UNREACHABLE
from gateway.routes import Route, Target

log = logging.getLogger("gateway")

MAX_SCALE_UP_WAIT_S = 600.0
WAKE_POLL_S = 0.5


async def chat(request: Request) -> Response:
    return await proxy(request, "/v1/chat/completions")


async def completions(request: Request) -> Response:
    return await proxy(request, "/v1/completions")


async def models(request: Request) -> Response:
    gw = request.app.state.gateway
    caller = await gw.auth.caller(request)
    if caller is None:
        return errors.invalid_key()
    table = await gw.router.table(caller.organization_id)
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
    return Response(request.app.state.gateway.metrics.render(), media_type=CONTENT_TYPE)


async def health(request: Request) -> Response:
    return JSONResponse({"ok": True})


async def proxy(request: Request, path: str) -> Response:
    gw = request.app.state.gateway
    started = time.perf_counter()
    caller = await gw.auth.caller(request)
    if caller is None:
        return errors.invalid_key()
    try:
        body = json.loads(await request.body())
    except ValueError:
        return errors.invalid_json()
    if blocked := await gw.auth.spend_block(caller.organization_id):
        return errors.spend_limit(blocked)
    wait = await gw.limiter.admit(
        caller.key_id, caller.requests_per_minute, caller.tokens_per_minute
    )
    if wait is not None:
        return errors.rate_limited(wait)
    name = str(body.get("model", ""))
    route = (await gw.router.table(caller.organization_id)).get(name)
    if route is None:
        return errors.model_not_found(name)
    found = await targets_or_wait(request, caller, route)
    if isinstance(found, Response):
        return found
    route, targets = found
    stream = bool(body.get("stream"))
    if stream:
        # Ask the engine for a final usage event; engines that ignore this (llama.cpp's
        # server) send none.
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    payload = json.dumps(body).encode()
    gw.load.requests[route.deployment_id] += 1
    for target in targets:
        gw.begin(route, target)
        try:
            upstream = await gw.relay.send(target, path, payload)
        except UNREACHABLE as exc:
            log.warning("replica %s unreachable, trying another: %s", target.url, exc)
            gw.end(route, target)
            # The reconciler will replace it; read the routes afresh to see that sooner.
            gw.router.forget(caller.organization_id)
            continue
        gw.metrics.ttft.labels(name).observe(time.perf_counter() - started)
        headers = {"x-gantry-region": target.region}
        if stream:
            return StreamingResponse(
                gw.relay.stream(
                    upstream, done=finished(gw, caller, route, target, upstream.status, started)
                ),
                status_code=upstream.status,
                media_type="text/event-stream",
                headers=headers,
            )
        try:
            data = await gw.relay.read(upstream)
        finally:
            gw.end(route, target)
        await gw.settle(caller, route, upstream.status, usage_of(data), started)
        return Response(
            data, status_code=upstream.status, media_type="application/json", headers=headers
        )
    return errors.model_unreachable(name)


def finished(gw, caller: Caller, route: Route, target: Target, status: int, started: float):
    """What the relay calls when a stream has been read to its end (or broke off)."""

    async def done(usage: dict) -> None:
        gw.end(route, target)
        await gw.settle(caller, route, status, usage, started)

    return done


def usage_of(data: bytes) -> dict | None:
    try:
        answer = json.loads(data)
    except ValueError:
        return None
    return answer.get("usage") if isinstance(answer, dict) else None


async def targets_or_wait(
    request: Request, caller: Caller, route: Route
) -> tuple[Route, list[Target]] | Response:
    """The route's replicas in order of preference; when it has none running, wake it if it
    sleeps at zero replicas and hold the client for as long as its `X-Scale-Up-Timeout`
    says (none: answer 503 at once)."""
    gw = request.app.state.gateway
    targets = await gw.router.ordered(request, route)
    if targets:
        return route, targets
    waking = route.desired == 0
    if waking:
        await db(wake)(route.deployment_id)
    try:
        wait_s = min(float(request.headers.get("x-scale-up-timeout", "0")), MAX_SCALE_UP_WAIT_S)
    except ValueError:
        wait_s = 0.0
    deadline = time.monotonic() + wait_s
    while not targets and time.monotonic() < deadline:
        await asyncio.sleep(WAKE_POLL_S)
        gw.router.forget(caller.organization_id)
        route = (await gw.router.table(caller.organization_id)).get(route.name) or route
        targets = await gw.router.ordered(request, route)
    if targets:
        return route, targets
    if waking:
        return errors.model_waking(route.name)
    return errors.model_not_ready(route.name, route.status)
