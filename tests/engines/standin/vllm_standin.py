#!/usr/bin/env python3
"""`vllm serve` as far as Gantry sees it, without a GPU or vLLM.

Written from vLLM's documented server behaviour: the model is the first positional
argument of `vllm serve`; `--host`, `--port`, `--served-model-name`; `--api-key` or the
VLLM_API_KEY variable makes every /v1 route demand `Authorization: Bearer <key>` (401
`{"error": "Unauthorized"}` otherwise) while /health stays open; a request for another
model name is a 404 in vLLM's error shape; answers carry `usage`, and a stream reports
usage only when asked (`stream_options.include_usage`), in a last chunk with no choices.
Unknown flags are accepted, as they are engine tuning Gantry passes through.

It prints its argv (one JSON line, "STANDIN argv=…") so a test can assert the command
line Gantry gave it. A local model path must exist (so a test proves the mount), and a
folder's config.json gives max_model_len.
"""

import argparse
import json
import os
import sys
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def parse(argv: list[str]):
    parser = argparse.ArgumentParser(prog="vllm", allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", allow_abbrev=False)
    serve.add_argument("model_tag", nargs="?")
    serve.add_argument("--model")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--api-key", default=None)
    serve.add_argument("--served-model-name", nargs="+", default=None)
    serve.add_argument("--max-model-len", type=int, default=None)
    return parser.parse_known_args(argv)


def main() -> None:
    args, _unknown = parse(sys.argv[1:])
    print("STANDIN argv=" + json.dumps(sys.argv[1:]), flush=True)
    model = args.model_tag or args.model or "facebook/opt-125m"
    max_len = args.max_model_len or 2048
    if model.startswith("/"):
        path = Path(model)
        if not path.exists():
            sys.exit(f"ValueError: model path {model} does not exist")
        config = path / "config.json"
        if config.is_file():
            max_len = args.max_model_len or json.loads(config.read_text()).get(
                "max_position_embeddings", max_len
            )
    names = args.served_model_name or [model]
    key = args.api_key or os.environ.get("VLLM_API_KEY")
    created = int(time.time())

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *a):  # uvicorn-like access line, without the body
            print(f"INFO: {self.address_string()} - {fmt % a}", flush=True)

        def _json(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _authorized(self) -> bool:
            if not key or not self.path.startswith("/v1"):
                return True
            if self.headers.get("authorization", "") == f"Bearer {key}":
                return True
            self._json(401, {"error": "Unauthorized"})
            return False

        def do_GET(self):
            if self.path == "/health":
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()
                return
            if not self._authorized():
                return
            if self.path == "/v1/models":
                data = [
                    {
                        "id": name,
                        "object": "model",
                        "created": created,
                        "owned_by": "vllm",
                        "root": model,
                        "max_model_len": max_len,
                    }
                    for name in names
                ]
                return self._json(200, {"object": "list", "data": data})
            self._json(404, {"detail": "Not Found"})

        def do_POST(self):
            if not self._authorized():
                return
            length = int(self.headers.get("content-length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                return self._json(400, _error("Invalid JSON body", "BadRequestError", 400))
            if self.path not in {"/v1/chat/completions", "/v1/completions"}:
                return self._json(404, {"detail": "Not Found"})
            if body.get("model") not in names:
                message = f"The model `{body.get('model')}` does not exist."
                return self._json(404, _error(message, "NotFoundError", 404))
            chat = self.path == "/v1/chat/completions"
            prompt = json.dumps(body.get("messages") if chat else body.get("prompt"))
            prompt_tokens = max(1, len(prompt.split()))
            n = max(1, min(int(body.get("max_tokens") or 16), 64))
            words = [f"w{i}" for i in range(n)]
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": n,
                "total_tokens": prompt_tokens + n,
            }
            rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
            kind = "chat.completion" if chat else "text_completion"
            if body.get("stream") is True:
                return self._stream(body, rid, kind, chat, words, usage)
            choice = {"index": 0, "finish_reason": "length"}
            if chat:
                choice["message"] = {"role": "assistant", "content": " ".join(words)}
            else:
                choice["text"] = " ".join(words)
            self._json(
                200,
                {
                    "id": rid,
                    "object": kind,
                    "created": int(time.time()),
                    "model": body["model"],
                    "choices": [choice],
                    "usage": usage,
                },
            )

        def _stream(self, body, rid, kind, chat, words, usage):
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            base = {
                "id": rid,
                "object": kind + ".chunk" if chat else kind,
                "created": int(time.time()),
                "model": body["model"],
            }

            def send(obj) -> None:
                data = f"data: {json.dumps(obj) if isinstance(obj, dict) else obj}\n\n".encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

            if chat:  # vLLM opens a chat stream with the role, no content yet
                role = {"index": 0, "delta": {"role": "assistant", "content": ""}}
                send({**base, "choices": [{**role, "finish_reason": None}]})
            for i, word in enumerate(words):
                last = i == len(words) - 1
                choice = {"index": 0, "finish_reason": "length" if last else None}
                if chat:
                    choice["delta"] = {"content": (" " if i else "") + word}
                else:
                    choice["text"] = (" " if i else "") + word
                send({**base, "choices": [choice]})
            if (body.get("stream_options") or {}).get("include_usage"):
                send({**base, "choices": [], "usage": usage})
            send("[DONE]")
            self.wfile.write(b"0\r\n\r\n")

    server = ThreadingHTTPServer((args.host or "0.0.0.0", args.port), Handler)
    print(f"INFO: Uvicorn running on http://{args.host or '0.0.0.0'}:{args.port}", flush=True)
    server.serve_forever()


def _error(message: str, type_: str, code: int) -> dict:
    return {"object": "error", "message": message, "type": type_, "param": None, "code": code}


if __name__ == "__main__":
    main()
