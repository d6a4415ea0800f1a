"""An OpenAI-shaped upstream on loopback that reports usage in streams (as vLLM and SGLang
do when asked with stream_options.include_usage) — llama.cpp's Python server does not."""

import asyncio
import json
import socket
import threading
import time

import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

WORDS = ["Gantry", " routes", " this", " stream", "."]


async def chat(request):
    body = await request.json()
    request.app.state.received.append(body)
    prompt_tokens = sum(len(m.get("content", "").split()) for m in body.get("messages", []))
    if body["messages"][0].get("content") == "report negative usage":
        # A broken (or hostile) engine: usage that would be a credit if believed.
        return JSONResponse(
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": body.get("model"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(WORDS)},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": -50, "completion_tokens": -7, "total_tokens": -57},
            }
        )
    if not body.get("stream"):
        return JSONResponse(
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": body.get("model"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(WORDS)},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": len(WORDS),
                    "total_tokens": prompt_tokens + len(WORDS),
                },
            }
        )
    include = (body.get("stream_options") or {}).get("include_usage")

    async def events():
        for word in WORDS:
            chunk = {
                "id": "x",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": body.get("model"),
                "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}],
            }
            yield f"data: {json.dumps(chunk)}\n\n"
            await asyncio.sleep(0.05)
        if include:
            final = {
                "id": "x",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": body.get("model"),
                "choices": [],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": len(WORDS),
                    "total_tokens": prompt_tokens + len(WORDS),
                },
            }
            yield f"data: {json.dumps(final)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def start_upstream():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    app.state.received = []  # every body that reached this engine
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    server.url = f"http://127.0.0.1:{port}"
    server.received = app.state.received
    return server, thread
