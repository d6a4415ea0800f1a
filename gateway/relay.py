"""Passing a request on to an engine and its answer back to the client, streaming too.

Requests to engines go through `upstream.Pool` (keep-alive HTTP/1.1 on httptools' parser):
on this path — many small proxied requests — a general client's per-request machinery is
what the gateway's throughput comes down to, and the pool has none of it. The engine's
bytes pass through as they are. An aiohttp session, made on first use inside the running
loop, serves the gateway's other calls to engines (their tokenizers, off the request
path).

Answers are read with a bound (GATEWAY_MAX_ANSWER_BYTES): a whole answer, or one event of
a stream, over it is cut off, so a broken or hostile engine cannot make the gateway hold
unbounded memory.
"""

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import orjson
from django.conf import settings
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.counting import read_event
from gateway.routes import Target
from gateway.upstream import Answer, Broken, Pool, Unreachable

log = logging.getLogger("gateway.relay")

# Failures before the first byte: the request never reached an engine, so another replica
# may be tried without running it twice.
UNREACHABLE = (TimeoutError, Unreachable)


class AnswerTooLarge(Exception):
    pass


def usage_event(model: str, path: str, counts: tuple[int, int]) -> bytes:
    """The closing usage event of a stream, as OpenAI's API sends it: no choices."""
    prompt, completion = counts
    event = {
        "id": f"usage-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion.chunk" if "chat" in path else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }
    return b"data: " + orjson.dumps(event) + b"\n\n"


def max_answer_bytes() -> int:
    return int(getattr(settings, "GATEWAY_MAX_ANSWER_BYTES", 64 * 1024 * 1024))


def engine_authorization(target: Target) -> str:
    """The one credential an engine gets: never the client's (its API key stays here), the
    replica's own when the route table has one for it."""
    return f"Bearer {target.secret}" if target.secret else ""


class EventStream(Response):
    """An engine's stream passed on to the client as it comes.

    Starlette's StreamingResponse also runs a task group per response to watch for the
    client leaving; here that costs more CPU than the rest of a short stream's relay, and
    buys nothing: the engine is read to its end by the relay's own task whatever the client
    does (that is what meters an aborted stream), and the server drops what is sent to a
    client that has gone."""

    media_type = "text/event-stream"

    def __init__(self, chunks: AsyncIterator[bytes], status_code: int, headers: dict) -> None:
        self.chunks = chunks
        self.status_code = status_code
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        async for chunk in self.chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class Relay:
    def __init__(self):
        self._session: aiohttp.ClientSession | None = None
        self.pool = Pool()
        # Engine reads still under way, referenced until done (the loop keeps only weak
        # references to tasks) and awaited on shutdown so their usage is metered.
        self.pumps: set[asyncio.Task] = set()

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=1000, ttl_dns_cache=300),
                timeout=aiohttp.ClientTimeout(total=600, sock_connect=3),
                auto_decompress=False,
            )
        return self._session

    async def send(self, target: Target, path: str, payload: bytes) -> Answer:
        """The engine's answer, head read, body not yet; raises one of UNREACHABLE."""
        return await self.pool.post(target.url, path, payload, engine_authorization(target))

    @staticmethod
    async def read(upstream: Answer) -> bytes:
        """The whole answer; AnswerTooLarge past the bound (read no further), `Broken` if
        the engine broke it off."""
        limit = max_answer_bytes()
        try:
            if (upstream.content_length or 0) > limit:
                raise AnswerTooLarge
            chunks, size = [], 0
            async for chunk in upstream.chunks():
                size += len(chunk)
                if size > limit:
                    raise AnswerTooLarge
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            upstream.release()

    def stream(
        self,
        upstream: Answer,
        done: Callable[
            [dict | None, int, tuple[float, float] | None], Awaitable[tuple[int, int] | None]
        ],
        usage_for: tuple[str, str] | None = None,
    ) -> AsyncIterator[bytes]:
        """The engine's answer, chunk by chunk as it comes. The engine is read by a task of
        its own, to the end, whatever the client does: if the client walks away half-way,
        the rest is still read — the engine's final usage event, or the tokens counted —
        and `done(usage, tokens, (first, last))` still runs, with the clock
        (`time.perf_counter`) when the first and the last token arrived (None without
        any). That is what makes an aborted stream metered. The task starts now, not when
        the client starts reading, so it runs even if the client is gone before the first
        byte.

        With `usage_for` (the model's name and the path: the client asked for
        `stream_options.include_usage`) the stream is passed on line by line, the engine's
        closing `data: [DONE]` is held back, and when the engine sent no usage event (as
        llama.cpp never does) one is added before it with the counts `done` metered, in
        the shape OpenAI's API sends."""
        queue: asyncio.Queue = asyncio.Queue()
        limit = max_answer_bytes()

        async def pump() -> None:
            buffer, usage, tokens, finished = b"", None, 0, False
            first = last = 0.0
            try:
                async for chunk in upstream.chunks():
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    if len(buffer) > limit or any(len(line) > limit for line in lines):
                        log.warning("an engine event is over %d bytes; stream cut off", limit)
                        break
                    for line in lines:
                        found, n = read_event(line)
                        usage, tokens = found or usage, tokens + n
                        if n:
                            last = time.perf_counter()
                            first = first or last
                    if usage_for is None:
                        queue.put_nowait(chunk)
                        continue
                    kept = [line for line in lines if not line.startswith(b"data: [DONE]")]
                    finished = finished or len(kept) < len(lines)
                    if kept:
                        queue.put_nowait(b"\n".join(kept) + b"\n")
            except Broken as exc:
                log.warning("an engine broke off its stream: %s", exc)
            finally:
                upstream.release()
                times = (first, last) if first else None
                if usage_for is None:
                    queue.put_nowait(None)
                    await done(usage, tokens, times)
                else:
                    try:
                        counts = await done(usage, tokens, times)
                        if finished and usage is None and counts is not None:
                            queue.put_nowait(usage_event(*usage_for, counts))
                    finally:
                        if finished:
                            queue.put_nowait(b"data: [DONE]\n\n")
                        queue.put_nowait(None)

        task = asyncio.get_running_loop().create_task(pump())
        self.pumps.add(task)
        task.add_done_callback(self.pumps.discard)

        async def chunks() -> AsyncIterator[bytes]:
            while (chunk := await queue.get()) is not None:
                yield chunk

        return chunks()

    async def close(self) -> None:
        await self.pool.close()
        if self._session is not None:
            await self._session.close()
            self._session = None
