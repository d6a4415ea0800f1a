"""An outside observer of a benchmark run: a recording HTTP proxy put between the runner
and the engine. It times each streamed answer where it passes (arrival of the request,
first content event, end) and counts its content events, knowing nothing of the runner;
its figures for the same run are what the runner's are checked against (tests/lab,
bench/lab_loadgen.py).
"""

import asyncio
import json
import socket
import threading
import time
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web


@dataclass
class Seen:
    arrived: float
    first: float | None = None
    ended: float | None = None
    events: int = 0


@dataclass
class Recorder:
    upstream: str
    seen: list[Seen] = field(default_factory=list)
    url: str = ""

    def ttft_ms(self) -> list[float]:
        return sorted((s.first - s.arrived) * 1000 for s in self.seen if s.first)

    def output_tokens_per_s(self) -> float:
        done = [s for s in self.seen if s.ended]
        if not done:
            return 0.0
        span = max(s.ended for s in done) - min(s.arrived for s in done)  # type: ignore[type-var]
        return sum(s.events for s in done) / span

    def ttft_p50_ms(self) -> float:
        values = self.ttft_ms()
        return values[(len(values) - 1) // 2] if values else 0.0


def _content(line: bytes) -> bool:
    text = line.decode("utf-8", "replace").strip()
    if not text.startswith("data:") or text[5:].strip() == "[DONE]":
        return False
    try:
        event = json.loads(text[5:])
    except ValueError:
        return False
    for choice in event.get("choices") or []:
        if choice.get("text") or (choice.get("delta") or {}).get("content"):
            return True
    return False


RECORDER = web.AppKey("recorder", Recorder)
SESSION = web.AppKey("session", aiohttp.ClientSession)


async def _handle(request: web.Request) -> web.StreamResponse:
    rec = request.app[RECORDER]
    seen = Seen(arrived=time.perf_counter())
    rec.seen.append(seen)
    body = await request.read()
    headers = {
        k: v for k, v in request.headers.items() if k.lower() in {"authorization", "content-type"}
    }
    session = request.app[SESSION]
    async with session.post(rec.upstream + request.path, data=body, headers=headers) as up:
        resp = web.StreamResponse(status=up.status, headers={"Content-Type": up.content_type})
        await resp.prepare(request)
        try:
            async for line in up.content:
                if _content(line):
                    seen.events += 1
                    if seen.first is None:
                        seen.first = time.perf_counter()
                elif line.strip() == b"data: [DONE]":
                    seen.ended = time.perf_counter()
                await resp.write(line)
            seen.ended = seen.ended or time.perf_counter()
            await resp.write_eof()
        except ConnectionError:
            # The client may hang up as soon as it has read [DONE].
            seen.ended = seen.ended or time.perf_counter()
        return resp


class RecordingProxy:
    """``with RecordingProxy(upstream) as rec:`` — send the run to ``rec.url``."""

    def __init__(self, upstream: str):
        self.recorder = Recorder(upstream=upstream.rstrip("/"))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> Recorder:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(port), self.loop).result(timeout=10)
        self.recorder.url = f"http://127.0.0.1:{port}"
        return self.recorder

    async def _start(self, port: int) -> None:
        app = web.Application()
        app[RECORDER] = self.recorder
        app[SESSION] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        app.router.add_post("/{tail:.*}", _handle)
        # On exit, answers still streaming (a client that gave up) are cut after a second.
        self.runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()

    async def _stop(self) -> None:
        await self.runner.app[SESSION].close()
        await self.runner.cleanup()

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()
