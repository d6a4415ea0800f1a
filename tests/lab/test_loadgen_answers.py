"""How the load generator counts answers an engine really sends: an answer whose first token
ends it (llama.cpp streams a closing event with `finish_reason` and no text — the random-
weight demo models do this often) is a complete answer of zero tokens, not an error; a
stream that breaks off before any answer is an error."""

import asyncio
import json

from aiohttp import web

from lab.loadgen import Session


def _event(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


async def _answer(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    if body["prompt"] == "eos":
        await response.write(_event({"choices": [{"index": 0, "text": "", "finish_reason": None}]}))
        await response.write(
            _event({"choices": [{"index": 0, "text": "", "finish_reason": "stop"}]})
        )
        await response.write(b"data: [DONE]\n\n")
    else:  # breaks off: no answer, no end
        await response.write(_event({"choices": [{"index": 0, "text": "", "finish_reason": None}]}))
    return response


async def _ask(prompt: str):
    app = web.Application()
    app.router.add_post("/v1/completions", _answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        async with Session(base_url=f"http://127.0.0.1:{port}", api_key="", model="m") as s:
            return await s.stream(prompt=prompt, max_tokens=8, timeout_s=10)
    finally:
        await runner.cleanup()


def test_an_answer_ended_by_its_first_token_is_complete_with_zero_tokens():
    r = asyncio.run(_ask("eos"))
    assert r.ok and r.output_tokens == 0 and not r.error
    assert 0 < r.ttft_ms <= r.e2e_ms


def test_a_stream_that_breaks_off_without_an_answer_is_an_error():
    r = asyncio.run(_ask("cut"))
    assert not r.ok and r.error == "the stream ended without an answer"
