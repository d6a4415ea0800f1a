"""Passing a request on to an engine and its answer back to the client, streaming too.

One aiohttp client session per app, made on first use inside the running loop: on this
path (many small proxied requests) aiohttp spends far less CPU per request than httpx,
which is what the gateway's throughput comes down to. Compressed answers pass through as
they are (no decompression), so the client gets exactly the engine's bytes.
"""

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp

from gateway.routes import Target

# Failures before the first byte: the request never reached an engine, so another replica
# may be tried without running it twice.
UNREACHABLE = (TimeoutError, aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError)


def upstream_headers(target: Target) -> dict[str, str]:
    """The headers an engine gets: never the client's (its API key stays here), plus the
    replica's own credential when the route table has one for it."""
    headers = {"content-type": "application/json"}
    if target.secret:
        headers["authorization"] = f"Bearer {target.secret}"
    return headers


def usage_in_event(line: bytes) -> dict | None:
    """The `usage` object of one server-sent event line, if it carries one."""
    if not (line.startswith(b"data:") and b'"usage"' in line):
        return None
    with contextlib.suppress(ValueError, AttributeError):
        found = json.loads(line[5:].strip()).get("usage")
        if isinstance(found, dict) and found:
            return found
    return None


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
        try:
            return await upstream.read()
        finally:
            upstream.release()

    def stream(
        self,
        upstream: aiohttp.ClientResponse,
        done: Callable[[dict], Awaitable[None]],
    ) -> AsyncIterator[bytes]:
        """The engine's answer, chunk by chunk as it comes. The engine is read by a task of
        its own, to the end, whatever the client does: if the client walks away half-way,
        the engine's final usage event is still read and `done(usage)` still runs — that
        is what makes an aborted stream metered."""
        queue: asyncio.Queue = asyncio.Queue()
        usage: dict = {}

        async def pump() -> None:
            buffer = b""
            try:
                async for chunk in upstream.content.iter_any():
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        if found := usage_in_event(line):
                            usage.update(found)
                    queue.put_nowait(chunk)
            finally:
                queue.put_nowait(None)
                upstream.release()
                await done(usage)

        task = asyncio.get_running_loop().create_task(pump())
        self.pumps.add(task)
        task.add_done_callback(self.pumps.discard)

        async def chunks() -> AsyncIterator[bytes]:
            while (chunk := await queue.get()) is not None:
                yield chunk

        return chunks()

    async def drain(self, timeout: float) -> None:
        """Let the answers under way finish (their usage is metered when they do)."""
        if self.pumps:
            await asyncio.wait(self.pumps, timeout=timeout)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
