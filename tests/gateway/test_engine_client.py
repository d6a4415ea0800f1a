"""The gateway's HTTP/1.1 client to the engines (`gateway.upstream`), against servers that
answer as engines do — and as broken or hostile ones might: keep-alive and closing,
chunked and length-delimited, cut off, garbled, silent, and flooded with requests.

The whole path through the real engine (llama.cpp's server) is tested in the gateway's
tests; these pin the client's behaviour at the edges an engine rarely shows."""

import asyncio
import socket

import httptools
import pytest

from gateway import upstream
from gateway.upstream import Broken, Pool, Unreachable


class Engine:
    """An HTTP server on a free port whose answers a test writes as raw bytes."""

    def __init__(self, answer):
        self.answer = answer  # async (request: dict, writer) -> keep connection open?
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self.requests: list[dict] = []

    async def __aenter__(self):
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        await self.server.wait_closed()

    async def serve(self, reader, writer):
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            while True:
                request = await read_request(reader)
                if request is None:
                    break
                self.requests.append(request)
                if not await self.answer(request, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            writer.close()


async def read_request(reader) -> dict | None:
    done = asyncio.Event()
    request: dict = {"headers": {}, "body": b""}

    class Listener:
        def on_url(self, url):
            request["path"] = url.decode()

        def on_header(self, name, value):
            request["headers"][name.decode().lower()] = value.decode()

        def on_body(self, body):
            request["body"] += body

        def on_message_complete(self):
            done.set()

    parser = httptools.HttpRequestParser(Listener())
    while not done.is_set():
        data = await reader.read(65536)
        if not data:
            return None
        parser.feed_data(data)
    request["method"] = parser.get_method().decode()
    return request


def json_answer(body: bytes = b'{"ok": true}', extra: bytes = b""):
    async def answer(request, writer):
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            + extra
            + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()
        return b"close" not in extra

    return answer


async def whole(answer) -> bytes:
    try:
        return b"".join([chunk async for chunk in answer.chunks()])
    finally:
        answer.release()


def test_answers_come_back_whole_and_one_connection_carries_them_all():
    async def run():
        async with Engine(json_answer(b'{"choices": []}')) as engine:
            pool = Pool()
            for _ in range(5):
                answer = await pool.post(engine.url, "/v1/completions", b'{"x": 1}', "Bearer k")
                assert answer.status == 200
                assert answer.content_length == len(b'{"choices": []}')
                assert await whole(answer) == b'{"choices": []}'
            await pool.close()
            return engine

    engine = asyncio.run(run())
    assert engine.connections == 1
    request = engine.requests[0]
    assert request["method"] == "POST" and request["path"] == "/v1/completions"
    assert request["body"] == b'{"x": 1}'
    assert request["headers"]["authorization"] == "Bearer k"
    assert request["headers"]["content-type"] == "application/json"
    assert request["headers"]["host"] == engine.url.removeprefix("http://")


def test_no_credential_is_sent_when_the_replica_has_none():
    async def run():
        async with Engine(json_answer()) as engine:
            pool = Pool()
            await whole(await pool.post(engine.url, "/v1/completions", b"{}"))
            await pool.close()
            return engine

    assert "authorization" not in asyncio.run(run()).requests[0]["headers"]


def test_a_chunked_stream_is_passed_on_as_it_comes():
    release = asyncio.Event()
    seen: list[bytes] = []

    async def stream(request, writer):
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        writer.write(b"d\r\ndata: first\n\n\r\n")
        await writer.drain()
        await release.wait()  # the second event only once the first reached the reader
        writer.write(b"e\r\ndata: second\n\n\r\n0\r\n\r\n")
        await writer.drain()
        return True

    async def run():
        async with Engine(stream) as engine:
            pool = Pool()
            answer = await pool.post(engine.url, "/v1/chat/completions", b"{}")
            assert answer.content_length is None
            async for chunk in answer.chunks():
                seen.append(chunk)
                release.set()
            answer.release()
            # The stream ended as HTTP says: the connection is kept for the next request.
            await whole(await pool.post(engine.url, "/v1/chat/completions", b"{}"))
            await pool.close()
            return engine

    engine = asyncio.run(run())
    assert b"".join(seen) == b"data: first\n\ndata: second\n\n"
    assert seen[0] == b"data: first\n\n"
    assert engine.connections == 1


def test_a_refused_connection_is_unreachable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused

        async def run():
            pool = Pool()
            with pytest.raises(Unreachable):
                await pool.post(f"http://127.0.0.1:{port}", "/v1/completions", b"{}")
            assert pool._engines == {}  # nothing kept for an engine that is not there
            await pool.close()

        asyncio.run(run())


def test_an_engine_closing_before_it_answers_is_unreachable():
    async def hang_up(request, writer):
        return False

    async def run():
        async with Engine(hang_up) as engine:
            pool = Pool()
            with pytest.raises(Unreachable):
                await pool.post(engine.url, "/v1/completions", b"{}")
            await pool.close()

    asyncio.run(run())


def test_a_kept_connection_the_engine_closed_while_idle_is_replaced():
    async def answer_once(request, writer):
        await json_answer()(request, writer)
        return False  # closes after answering, without saying `Connection: close`

    async def run():
        async with Engine(answer_once) as engine:
            pool = Pool()
            for _ in range(3):
                assert await whole(await pool.post(engine.url, "/v1/completions", b"{}"))
            await pool.close()
            return engine

    engine = asyncio.run(run())
    assert len(engine.requests) == 3 and engine.connections == 3


def test_connection_close_is_honoured():
    async def run():
        async with Engine(json_answer(extra=b"Connection: close\r\n")) as engine:
            pool = Pool()
            for _ in range(2):
                assert await whole(await pool.post(engine.url, "/v1/completions", b"{}"))
            await pool.close()
            return engine

    assert asyncio.run(run()).connections == 2


def test_an_answer_cut_off_mid_body_is_broken_and_its_connection_dropped():
    async def cut(request, writer):
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"partial":')
        await writer.drain()
        return False

    async def run():
        async with Engine(cut) as engine:
            pool = Pool()
            answer = await pool.post(engine.url, "/v1/completions", b"{}")
            with pytest.raises(Broken):
                await whole(answer)
            await pool.close()

    asyncio.run(run())


def test_an_answer_delimited_by_the_connections_end_is_whole():
    async def until_close(request, writer):
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{"a": 1}')
        await writer.drain()
        return False

    async def run():
        async with Engine(until_close) as engine:
            pool = Pool()
            assert await whole(await pool.post(engine.url, "/v1/completions", b"{}")) == b'{"a": 1}'
            await pool.close()

    asyncio.run(run())


@pytest.mark.parametrize(
    "garbage",
    [b"NOT HTTP AT ALL\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n"],
)
def test_garbage_from_an_engine_is_broken_not_a_crash(garbage):
    async def garbled(request, writer):
        writer.write(garbage)
        await writer.drain()
        await asyncio.sleep(0.2)
        return False

    async def run():
        async with Engine(garbled) as engine:
            pool = Pool()
            with pytest.raises(Broken):
                await whole(await pool.post(engine.url, "/v1/completions", b"{}"))
            await pool.close()

    asyncio.run(run())


def test_an_answer_left_unread_closes_its_connection():
    async def run():
        async with Engine(json_answer(b"x" * 100_000)) as engine:
            pool = Pool()
            answer = await pool.post(engine.url, "/v1/completions", b"{}")
            answer.release()  # walked away: the rest may still be on its way
            await whole(await pool.post(engine.url, "/v1/completions", b"{}"))
            await pool.close()
            return engine

    assert asyncio.run(run()).connections == 2


def test_a_silent_engine_times_out(monkeypatch):
    monkeypatch.setattr(upstream, "ANSWER_TIMEOUT_S", 0.3)

    async def silent(request, writer):
        await asyncio.sleep(5)
        return False

    async def run():
        async with Engine(silent) as engine:
            pool = Pool()
            with pytest.raises(TimeoutError):
                await pool.post(engine.url, "/v1/completions", b"{}")
            await pool.close()

    asyncio.run(run())


def test_requests_past_the_connection_limit_wait_for_a_free_one(monkeypatch):
    monkeypatch.setattr(upstream, "LIMIT_PER_ENGINE", 2)

    async def slow(request, writer):
        await asyncio.sleep(0.05)
        return await json_answer(request["body"])(request, writer)

    async def run():
        async with Engine(slow) as engine:
            pool = Pool()

            async def one(i):
                body = b'{"i": %d}' % i
                return await whole(await pool.post(engine.url, "/v1/completions", body))

            answers = await asyncio.gather(*(one(i) for i in range(12)))
            await pool.close()
            return engine, answers

    engine, answers = asyncio.run(run())
    assert answers == [b'{"i": %d}' % i for i in range(12)]
    assert engine.most_open <= 2


def test_a_large_stream_is_read_whole_through_the_pause_and_resume(monkeypatch):
    monkeypatch.setattr(upstream, "HIGH_WATER", 4096)
    body = b"y" * 2_000_000

    async def run():
        async with Engine(json_answer(body)) as engine:
            pool = Pool()
            answer = await pool.post(engine.url, "/v1/completions", b"{}")
            got = b""
            async for chunk in answer.chunks():
                got += chunk
                await asyncio.sleep(0)  # a reader slower than the socket
            answer.release()
            await pool.close()
            return got

    assert asyncio.run(run()) == body


def test_connections_an_engine_closed_while_idle_are_let_go_with_the_engines_entry():
    async def answer_once(request, writer):
        await json_answer()(request, writer)
        await asyncio.sleep(0.05)
        return False  # the engine closes the kept connection soon after answering

    async def run():
        async with Engine(answer_once) as engine:
            pool = Pool()
            for _ in range(3):
                assert await whole(await pool.post(engine.url, "/v1/completions", b"{}"))
            for _ in range(50):
                if not pool._engines:
                    break
                await asyncio.sleep(0.02)
            assert pool._engines == {} and pool._owner == {}
            # The next request opens a connection afresh.
            assert await whole(await pool.post(engine.url, "/v1/completions", b"{}"))
            await pool.close()

    asyncio.run(run())
