"""A local HTTP server that answers the Stripe API endpoints Gantry calls (customers,
invoices, invoice items) the way Stripe does — form-encoded requests, JSON objects back,
and idempotency keys that replay the first answer — and records what it was sent."""

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl

OBJECTS = {
    "/v1/customers": ("cus", "customer"),
    "/v1/invoices": ("in", "invoice"),
    "/v1/invoiceitems": ("ii", "invoiceitem"),
}


class StripeServer:
    def __init__(self):
        self.calls: list[dict] = []  # every request, replays included
        self.created: list[dict] = []  # objects actually created
        self._by_key: dict[str, bytes] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                params = dict(parse_qsl(body))
                key = self.headers.get("Idempotency-Key", "")
                server.calls.append(
                    {
                        "path": self.path,
                        "params": params,
                        "key": key,
                        "auth": self.headers.get("Authorization", ""),
                    }
                )
                if key and key in server._by_key:
                    return self._send(200, server._by_key[key])
                prefix, kind = OBJECTS.get(self.path, (None, None))
                if prefix is None:
                    return self._send(
                        404,
                        json.dumps(
                            {
                                "error": {
                                    "message": "Unrecognized request URL",
                                    "type": "invalid_request_error",
                                }
                            }
                        ).encode(),
                    )
                obj = {
                    "id": f"{prefix}_{uuid.uuid4().hex[:14]}",
                    "object": kind,
                    "livemode": False,
                    **params,
                }
                server.created.append(obj)
                data = json.dumps(obj).encode()
                if key:
                    server._by_key[key] = data
                return self._send(200, data)

            def _send(self, status, data):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
