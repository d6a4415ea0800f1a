"""HTTP/1.1 to the engines, for the gateway's hot path: keep-alive connections, one request
at a time on each, answers parsed by httptools (the C parser uvicorn uses on the gateway's
client side).

The relay's job is narrow — POST a JSON body to an engine, pass its answer back, whole or
as it streams — and a general client spends most of its time per request on what this job
never needs: URL and header objects, cookie jars, redirects, trace hooks, decompression.
Here a request is one `write` of bytes prepared once per engine, and an answer is the
status, the length when given, and the body's bytes as they come (chunked encoding
undone by the parser).

What the relay relies on:
- `Unreachable` (or TimeoutError) from `post` means no answer began: the engine refused
  the connection, did not accept it within CONNECT_TIMEOUT_S, or closed it before a byte
  of answer came. Another replica may be tried.
- An `Answer` is read with `chunks()` and always `release()`d: a connection whose answer
  was read to its end goes back to the idle pool, any other is closed.
- ANSWER_TIMEOUT_S bounds a request from send to its answer's end; past it the
  connection is cut (TimeoutError before the head, `Broken` after).
"""

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable
from functools import lru_cache
from urllib.parse import urlsplit

import httptools

CONNECT_TIMEOUT_S = 3.0
ANSWER_TIMEOUT_S = 600.0
# Connections per engine at once (more requests wait for one to come free), and idle ones
# kept for the next requests.
LIMIT_PER_ENGINE = 1000
IDLE_PER_ENGINE = 256
# Body bytes held unread before the engine's socket is paused (a slow reader).
HIGH_WATER = 1 << 20


class Unreachable(ConnectionError):
    """No answer began: the request may be sent to another replica."""


class Broken(ConnectionError):
    """The answer began, and did not end as HTTP says it must."""


@lru_cache(maxsize=4096)
def _engine(url: str) -> tuple[str, str, int, bool]:
    parts = urlsplit(url)
    tls = parts.scheme == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if tls else 80)
    return host, f"{host}:{port}" if parts.port else host, port, tls


@lru_cache(maxsize=4096)
def _head(url: str, path: str, authorization: str) -> bytes:
    _, authority, _, _ = _engine(url)
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {authority}",
        "Content-Type: application/json",
        "Accept: */*",
        "User-Agent: gantry-gateway",
    ]
    if authorization:
        lines.append(f"Authorization: {authorization}")
    return ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")


class Answer:
    """One engine answer: `status` and `content_length` once `post` returns; its body by
    `chunks()`."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_connection",
        "_done",
        "_error",
        "_head",
        "_pool",
        "_released",
        "_timer",
        "_waiter",
        "content_length",
        "keep_alive",
        "status",
    )

    def __init__(self, connection: "Connection", pool: "Pool") -> None:
        self._connection = connection
        self._pool = pool
        self._head: asyncio.Future = connection.loop.create_future()
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._waiter: asyncio.Future | None = None
        self._done = False
        self._error: BaseException | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._released = False
        self.status = 0
        self.content_length: int | None = None
        self.keep_alive = False

    # The connection's parser calls these.
    def begun(self, status: int) -> None:
        self.status = status
        if not self._head.done():
            self._head.set_result(None)

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER:
            self._connection.pause()
        self._wake()

    def ended(self, keep_alive: bool) -> None:
        self._done, self.keep_alive = True, keep_alive
        self._cancel_timer()
        self._wake()

    def fail(self, error: BaseException) -> None:
        if self._done:
            return
        self._done, self._error = True, error
        self._cancel_timer()
        if not self._head.done():
            self._head.set_exception(error)
        self._wake()

    def expire(self) -> None:
        self._timer = None
        if not self._head.done():
            self.fail(TimeoutError(f"no answer within {ANSWER_TIMEOUT_S:.0f} s"))
        else:
            self.fail(Broken(f"answer not complete within {ANSWER_TIMEOUT_S:.0f} s"))
        self._connection.close()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # What the relay calls.
    async def chunks(self) -> AsyncIterator[bytes]:
        """The body's bytes as they come, to its end; `Broken` if it never comes."""
        while True:
            while self._chunks:
                data = self._chunks.popleft()
                self._buffered -= len(data)
                if self._buffered <= HIGH_WATER:
                    self._connection.resume()
                yield data
            if self._done:
                if self._error is not None:
                    raise self._error
                return
            self._waiter = self._connection.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def release(self) -> None:
        """Done with this answer: its connection is kept for the next request if the answer
        was read to its end and the engine keeps it alive, else closed."""
        if self._released:
            return
        self._released = True
        self._cancel_timer()
        reusable = self._done and self._error is None and self.keep_alive and not self._chunks
        self._pool.give_back(self._connection, reusable)


class Connection(asyncio.Protocol):
    """A connection to one engine, carrying one answer at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.answer: Answer | None = None
        self.closed = False
        self.used = False  # has carried an answer (a reused connection may be stale)
        self.on_lost: Callable[[Connection], None] | None = None  # the pool's, once kept
        self._length_known = False
        self._paused = False

    # asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.answer is None:  # nothing asked: an engine speaking out of turn
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.answer.fail(Broken(f"the engine's answer is not HTTP/1.1: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.on_lost is not None:
            self.on_lost(self)
        answer, self.answer = self.answer, None
        if answer is None:
            return
        if answer._head.done() and not self._length_known and answer.status:
            answer.ended(keep_alive=False)  # an answer delimited by the connection's end
        elif not answer._head.done():
            answer.fail(Unreachable("the engine closed the connection before answering"))
        else:
            answer.fail(Broken("the engine closed the connection mid-answer"))

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._length_known = False

    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered == b"content-length":
            self._length_known = True
            if self.answer is not None:
                try:
                    self.answer.content_length = int(value)
                except ValueError:
                    self.answer.content_length = None
        elif lowered == b"transfer-encoding":
            self._length_known = True

    def on_headers_complete(self) -> None:
        if self.answer is not None:
            self.answer.begun(self.parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        if self.answer is not None:
            self.answer.feed(body)

    def on_message_complete(self) -> None:
        if self.answer is not None:
            answer, self.answer = self.answer, None
            answer.ended(keep_alive=self.parser.should_keep_alive())

    # the pool and the answer
    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def pause(self) -> None:
        if not self._paused and self.transport is not None and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()


class _Engine:
    __slots__ = ("active", "idle", "key", "waiters")

    def __init__(self, key: tuple[str, int, bool]) -> None:
        self.key = key
        self.idle: deque[Connection] = deque()
        self.active = 0
        self.waiters: deque[asyncio.Future] = deque()


class Pool:
    """Keep-alive connections to the engines, by URL (scheme, host and port)."""

    def __init__(self) -> None:
        self._engines: dict[tuple[str, int, bool], _Engine] = {}
        self._owner: dict[Connection, _Engine] = {}
        self._tls: ssl.SSLContext | None = None

    async def post(self, url: str, path: str, payload: bytes, authorization: str = "") -> Answer:
        """Send `payload` to `url` + `path`; the answer once its head has come. A kept-alive
        connection the engine closed while idle is replaced once by a new one."""
        host, _, port, tls = _engine(url)
        engine = self._engines.get((host, port, tls))
        if engine is None:
            engine = self._engines[(host, port, tls)] = _Engine((host, port, tls))
        head = _head(url, path, authorization)
        request = b"%s%d\r\n\r\n%s" % (head, len(payload), payload)
        for attempt in range(2):
            connection = await self._connection(engine, host, port, tls)
            reused, connection.used = connection.used, True
            answer = Answer(connection, self)
            connection.answer = answer
            connection.write(request)
            answer._timer = connection.loop.call_later(ANSWER_TIMEOUT_S, answer.expire)
            try:
                await answer._head
            except Unreachable:
                answer.release()
                if reused and attempt == 0:
                    continue
                raise
            except BaseException:
                answer.release()
                raise
            return answer
        raise Unreachable("no connection could be kept")  # pragma: no cover

    async def _connection(self, engine: _Engine, host: str, port: int, tls: bool) -> Connection:
        while True:
            while engine.idle:
                connection = engine.idle.pop()  # the most recently used: least likely stale
                if not connection.closed:
                    engine.active += 1
                    return connection
                self._owner.pop(connection, None)
            if engine.active < LIMIT_PER_ENGINE:
                break
            waiter = asyncio.get_running_loop().create_future()
            engine.waiters.append(waiter)
            try:
                handed = await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled() and waiter.result() is not None:
                    self.give_back(waiter.result(), reusable=True)
                raise
            if handed is not None:
                return handed  # a connection passed on by `give_back`, still counted active
        engine.active += 1
        try:
            connection = await self._connect(host, port, tls)
        except BaseException:
            engine.active -= 1
            if not self._free_place(engine):
                self._prune(engine)
            raise
        self._owner[connection] = engine
        connection.on_lost = self._lost
        return connection

    async def _connect(self, host: str, port: int, tls: bool) -> Connection:
        loop = asyncio.get_running_loop()
        context = None
        if tls:
            if self._tls is None:
                self._tls = ssl.create_default_context()
            context = self._tls
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                _, connection = await loop.create_connection(
                    lambda: Connection(loop), host, port, ssl=context
                )
        except TimeoutError as exc:
            raise Unreachable(
                f"no connection to {host}:{port} within {CONNECT_TIMEOUT_S} s"
            ) from exc
        except OSError as exc:
            raise Unreachable(f"cannot connect to {host}:{port}: {exc}") from exc
        return connection

    def give_back(self, connection: Connection, reusable: bool) -> None:
        engine = self._owner.get(connection)
        if engine is None:
            connection.close()
            return
        if reusable and not connection.closed:
            connection.answer = None
            while engine.waiters:  # straight to a request waiting for a connection
                waiter = engine.waiters.popleft()
                if not waiter.done():
                    waiter.set_result(connection)
                    return
            engine.active -= 1
            if len(engine.idle) < IDLE_PER_ENGINE:
                engine.idle.append(connection)
                return
        else:
            engine.active -= 1
        self._owner.pop(connection, None)
        connection.close()
        if not self._free_place(engine):
            self._prune(engine)

    def _lost(self, connection: Connection) -> None:
        """An idle connection the engine closed (or a replica that went away) is let go,
        and with the last of an engine's connections, the engine's entry."""
        engine = self._owner.get(connection)
        if engine is None or connection not in engine.idle:
            return  # a connection in use is let go when its answer is released
        engine.idle.remove(connection)
        del self._owner[connection]
        self._prune(engine)

    def _prune(self, engine: _Engine) -> None:
        idle = not engine.idle and not engine.active and not engine.waiters
        if idle and self._engines.get(engine.key) is engine:
            del self._engines[engine.key]

    @staticmethod
    def _free_place(engine: _Engine) -> bool:
        """A connection's place came free: the first request waiting opens its own (True)."""
        while engine.waiters:
            waiter = engine.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return True
        return False

    async def close(self) -> None:
        for connection in list(self._owner):
            connection.close()
        self._owner.clear()
        self._engines.clear()
