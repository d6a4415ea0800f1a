"""The gateway's endpoints. Each reads the app's `Gateway` from `request.app.state`.

A proxied request goes: key (or playground token) → body (bounded, fields checked) → spend
limit → rate limit → route (a playground token's own deployment only) → replicas (waking a
deployment scaled to zero) → the first replica that answers → bookkeeping when the answer
is complete, or broken off. Refusals happen before anything is
sent to an engine, so a refused request costs nothing and is never metered.
"""

import asyncio
import hmac
import logging
import time

import orjson
from django.conf import settings
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway import errors
from gateway.auth import Caller, bearer
from gateway.control import wake
from gateway.db import db
from gateway.metrics import CONTENT_TYPE
from gateway.relay import UNREACHABLE, AnswerTooLarge, EventStream
from gateway.routes import Route, Target
from gateway.routing import prefix_of
from gateway.upstream import Broken
from gateway.validation import Invalid, parse, read_body

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
    if caller.deployment_id is not None:  # a playground token sees its one deployment
        table = {n: r for n, r in table.items() if r.deployment_id == caller.deployment_id}
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
    """Prometheus metrics name every organization's deployments, so they are for the
    operators' scraper only: with GATEWAY_METRICS_TOKEN as its bearer token, or not at all
    (404: there is nothing here for anyone else to find)."""
    token = getattr(settings, "GATEWAY_METRICS_TOKEN", "")
    if not token:
        return errors.error(404, "Not found.", "invalid_request_error", "not_found")
    if not hmac.compare_digest(bearer(request).encode(), token.encode()):
        return errors.error(
            401, "A metrics token is needed.", "invalid_request_error", "invalid_api_key"
        )
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
        body = parse(await read_body(request))
    except Invalid as e:
        return errors.error(e.status, e.message, "invalid_request_error", e.code, param=e.param)
    if blocked := await gw.auth.spend_block(caller.organization_id):
        return errors.spend_limit(blocked)
    wait = await gw.limiter.admit(
        caller.key_id, caller.requests_per_minute, caller.tokens_per_minute
    )
    if wait is not None:
        return errors.rate_limited(wait, playground=caller.deployment_id is not None)
    name = body["model"]
    route = (await gw.router.table(caller.organization_id)).get(name)
    if route is None:
        return errors.model_not_found(name)
    if caller.deployment_id is not None and route.deployment_id != caller.deployment_id:
        return errors.wrong_deployment(name)
    prefix = prefix_of(body) if route.policy == "prefix_affinity" else ""
    found = await targets_or_wait(request, caller, route, prefix)
    if isinstance(found, Response):
        return found
    route, targets = found
    gw.metrics.queue.labels(str(route.deployment_id), name).observe(time.perf_counter() - started)
    stream = body.get("stream") is True
    # Whether the client asked for a usage event: if the engine sends none, the gateway
    # adds one with the counts it meters (see `Relay.stream`).
    wants_usage = stream and (body.get("stream_options") or {}).get("include_usage") is True
    if stream:
        # Ask the engine for a final usage event; engines that ignore this (llama.cpp's
        # server) send none, and the gateway counts instead.
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    payload = orjson.dumps(body)
    gw.load.requests[route.deployment_id] += 1
    for target in targets:
        gw.begin(route, target)
        try:
            upstream = await gw.relay.send(target, path, payload)
        except UNREACHABLE as exc:
            log.warning("replica %s unreachable, trying another: %s", target.url, exc)
            gw.metrics.unreachable.labels(str(target.replica_id)).inc()
            gw.end(route, target)
            # The reconciler will replace it; read the routes afresh to see that sooner.
            gw.router.forget(caller.organization_id)
            continue
        except Broken as exc:
            # It began an answer that is not HTTP: the request reached it, not to be re-sent.
            log.warning("replica %s answered garbled: %s", target.url, exc)
            gw.end(route, target)
            return errors.answer_broken()
        headers = {"x-gantry-region": target.region}
        status = upstream.status
        if stream:
            return EventStream(
                gw.relay.stream(
                    upstream,
                    stream_done(gw, caller, route, target, status, started, body),
                    usage_for=(route.name, path) if wants_usage and status == 200 else None,
                ),
                status_code=status,
                headers=headers,
            )
        try:
            data = await gw.relay.read(upstream)
        except AnswerTooLarge:
            log.warning("replica %s answered more than the gateway reads", target.url)
            # The engine did the work: its prompt, at least, is counted and metered.
            gw.spawn(
                gw.settle(
                    caller,
                    route,
                    target,
                    status=status,
                    usage=None,
                    started=started,
                    body=body,
                    answer={},
                )
            )
            return errors.answer_too_large()
        except Broken as exc:
            # Cut off before its end: nothing whole reached the client, nothing is billed.
            log.warning("replica %s broke off its answer: %s", target.url, exc)
            return errors.answer_broken()
        finally:
            gw.end(route, target)
        # A non-streamed answer reaches the client whole: its first token comes with it.
        ttft = time.perf_counter() - started if status == 200 else None
        gw.observe_latency(route, target, ttft, None)
        answer = answer_of(data)
        settle = gw.settle(
            caller,
            route,
            target,
            status=status,
            usage=answer.get("usage"),
            started=started,
            body=body,
            answer=answer,
            ttft=ttft,
        )
        # Bookkeeping is off the request path: it may ask the engine's tokenizer, and it
        # counts the tokens against the key's limit in Redis — a round trip the client
        # need not wait for (the next request of the key sees it, as after a stream).
        gw.spawn(settle)
        return Response(data, status_code=status, media_type="application/json", headers=headers)
    return errors.model_unreachable(name)


def stream_done(
    gw, caller: Caller, route: Route, target: Target, status: int, started: float, body: dict
):
    """What the relay calls once a stream has been read to its end (or broke off), with
    the engine's usage if it sent any and the tokens it streamed."""

    async def done(
        usage: dict | None, tokens: int, times: tuple[float, float] | None
    ) -> tuple[int, int]:
        gw.end(route, target)
        ttft = itl = None
        if times is not None:
            first, last = times
            ttft = first - started
            itl = (last - first) / (tokens - 1) if tokens > 1 else None
        gw.observe_latency(route, target, ttft, itl)
        return await gw.settle(
            caller,
            route,
            target,
            status=status,
            usage=usage,
            started=started,
            body=body,
            streamed_tokens=tokens,
            ttft=ttft,
            itl=itl,
        )

    return done


def answer_of(data: bytes) -> dict:
    try:
        answer = orjson.loads(data)
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}


async def targets_or_wait(
    request: Request, caller: Caller, route: Route, prefix: str = ""
) -> tuple[Route, list[Target]] | Response:
    """The route's replicas in order of preference; when it has none running, wake it if
    the autoscaler put it to sleep (never one a person stopped: any key may wake, so it
    must not restart what an admin turned off) and hold the client for as long as its
    `X-Scale-Up-Timeout` says (none: answer 503 at once)."""
    gw = request.app.state.gateway
    targets = await gw.router.ordered(request, route, prefix)
    if targets:
        return route, targets
    if route.desired == 0 and not route.asleep:
        return errors.model_stopped(route.name)
    waking = route.asleep
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
        targets = await gw.router.ordered(request, route, prefix)
    if targets:
        return route, targets
    if waking:
        return errors.model_waking(route.name)
    return errors.model_not_ready(route.name, route.status)
