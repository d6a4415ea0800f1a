"""Passing a request on to an engine and its answer back to the client, streaming too.

One aiohttp client session per app, made on first use inside the running loop: on this
path (many small proxied requests) aiohttp spends far less CPU per request than httpx,
which is what the gateway's throughput comes down to. Compressed answers pass through as
they are (no decompression), so the client gets exactly the engine's bytes.

Answers are read with a bound (GATEWAY_MAX_ANSWER_BYTES): a whole answer, or one event of
a stream, over it is cut off, so a broken or hostile engine cannot make the gateway hold
unbounded memory.
"""

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from django.conf import settings

from gateway.counting import read_event
from gateway.routes import Target

log = logging.getLogger("gateway.relay")

# Failures before the first byte: the request never reached an engine, so another replica
# may be tried without running it twice.
UNREACHABLE = (TimeoutError, aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError)


class AnswerTooLarge(Exception):
    pass


def max_answer_bytes() -> int:
    return int(getattr(settings, "GATEWAY_MAX_ANSWER_BYTES", 64 * 1024 * 1024))


def upstream_headers(target: Target) -> dict[str, str]:
    """The headers an engine gets: never the client's (its API key stays here), plus the
    replica's own credential when the route table has one for it."""
    headers = {"content-type": "application/json"}
    if target.secret:
        headers["authorization"] = f"Bearer {target.secret}"
    return headers


class Relay:
    def __init__(self):
        self._session: aiohttp.ClientSession | None = None
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

    async def send(self, target: Target, path: str, payload: bytes) -> aiohttp.ClientResponse:
        """The engine's answer, headers read, body not yet; raises one of UNREACHABLE."""
        return await self.session().post(
            f"{target.url}{path}", data=payload, headers=upstream_headers(target)
        )

    @staticmethod
    async def read(upstream: aiohttp.ClientResponse) -> bytes:
        """The whole answer; AnswerTooLarge past the bound (read no further)."""
        limit = max_answer_bytes()
        try:
            if (upstream.content_length or 0) > limit:
                raise AnswerTooLarge
            chunks, size = [], 0
            async for chunk in upstream.content.iter_any():
                size += len(chunk)
                if size > limit:
                    raise AnswerTooLarge
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            upstream.release()

    def stream(
        self,
        upstream: aiohttp.ClientResponse,
        done: Callable[[dict | None, int, tuple[float, float] | None], Awaitable[None]],
    ) -> AsyncIterator[bytes]:
        """The engine's answer, chunk by chunk as it comes. The engine is read by a task of
        its own, to the end, whatever the client does: if the client walks away half-way,
        the rest is still read — the engine's final usage event, or the tokens counted —
        and `done(usage, tokens, (first, last))` still runs, with the clock
        (`time.perf_counter`) when the first and the last token arrived (None without
        any). That is what makes an aborted stream metered. The task starts now, not when
        the client starts reading, so it runs even if the client is gone before the first
        byte."""
        queue: asyncio.Queue = asyncio.Queue()
        limit = max_answer_bytes()

        async def pump() -> None:
            buffer, usage, tokens = b"", None, 0
            first = last = 0.0
            try:
                async for chunk in upstream.content.iter_any():
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
                    queue.put_nowait(chunk)
            finally:
                queue.put_nowait(None)
                upstream.release()
                await done(usage, tokens, (first, last) if first else None)

        task = asyncio.get_running_loop().create_task(pump())
        self.pumps.add(task)
        task.add_done_callback(self.pumps.discard)

        async def chunks() -> AsyncIterator[bytes]:
            while (chunk := await queue.get()) is not None:
                yield chunk

        return chunks()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
