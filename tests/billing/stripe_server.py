"""A local HTTP server that answers the Stripe API endpoints Gantry calls the way Stripe
does: form-encoded requests (nested `metadata[key]` fields), JSON objects back, lists as
`{"object": "list", "data": [...], "has_more": false}`, errors as `{"error": {...}}`, and
idempotency keys that replay the first answer — until they expire, as Stripe's do after
24 hours (`expire_idempotency_keys`). Invoices keep Stripe's states: draft → open on
finalize → void; items can only be added to drafts; only drafts can be deleted; a
negative item lowers the invoice's total. It records what it was sent."""

import json
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

PREFIX = {"customers": "cus", "invoices": "in", "invoiceitems": "ii"}
KIND = {"customers": "customer", "invoices": "invoice", "invoiceitems": "invoiceitem"}


def _form(body: str) -> dict:
    """Stripe's form encoding: `metadata[a]=b` → {"metadata": {"a": "b"}}."""
    out: dict = {}
    for name, value in parse_qsl(body, keep_blank_values=True):
        m = re.fullmatch(r"(\w+)\[(\w+)\]", name)
        if m:
            out.setdefault(m[1], {})[m[2]] = value
        else:
            out[name] = value
    return out


class StripeError(Exception):
    def __init__(self, status: int, message: str, code: str = ""):
        self.status, self.message, self.code = status, message, code


class StripeServer:
    def __init__(self):
        self.calls: list[dict] = []  # every request, replays included
        self.objects: dict[str, dict] = {}  # id → object, as Stripe holds them
        self._by_key: dict[str, tuple[int, bytes]] = {}
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _handle(self, method):
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length).decode() if length else ""
                params = _form(body if method == "POST" else url.query)
                key = self.headers.get("Idempotency-Key", "")
                with server._lock:
                    server.calls.append(
                        {
                            "method": method,
                            "path": url.path,
                            "params": params,
                            "key": key,
                            "auth": self.headers.get("Authorization", ""),
                        }
                    )
                    if key and key in server._by_key:
                        return self._send(*server._by_key[key])
                    try:
                        status, obj = 200, server._route(method, url.path, params)
                    except StripeError as exc:
                        status = exc.status
                        obj = {
                            "error": {
                                "message": exc.message,
                                "type": "invalid_request_error",
                                **({"code": exc.code} if exc.code else {}),
                            }
                        }
                    data = json.dumps(obj).encode()
                    if key and method == "POST":
                        server._by_key[key] = (status, data)
                return self._send(status, data)

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

            def do_DELETE(self):
                self._handle("DELETE")

            def _send(self, status, data):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    # --- what tests look at ------------------------------------------------------------

    def expire_idempotency_keys(self) -> None:
        """What 24 hours do to Stripe's idempotency keys."""
        with self._lock:
            self._by_key.clear()

    def of_kind(self, kind: str) -> list[dict]:
        return [o for o in self.objects.values() if o["object"] == kind]

    def invoices(self, status: str | None = None) -> list[dict]:
        return [i for i in self.of_kind("invoice") if status in (None, i["status"])]

    def items_of(self, invoice_id: str) -> list[dict]:
        return [i for i in self.of_kind("invoiceitem") if i.get("invoice") == invoice_id]

    # --- the API -----------------------------------------------------------------------

    def _get(self, collection: str, oid: str) -> dict:
        obj = self.objects.get(oid)
        if obj is None or obj["object"] != KIND[collection]:
            raise StripeError(404, f"No such {KIND[collection]}: '{oid}'", "resource_missing")
        return obj

    def _route(self, method: str, path: str, params: dict) -> dict:
        parts = path.strip("/").split("/")
        if len(parts) < 2 or parts[0] != "v1" or parts[1] not in PREFIX:
            raise StripeError(404, f"Unrecognized request URL ({method}: {path}).")
        collection, rest = parts[1], parts[2:]
        if method == "POST" and not rest:
            return self._create(collection, params)
        if method == "GET" and not rest:
            return self._list(collection, params)
        obj = self._get(collection, rest[0])
        if method == "GET" and len(rest) == 1:
            return obj
        if collection == "invoices" and method == "DELETE" and len(rest) == 1:
            if obj["status"] != "draft":
                raise StripeError(400, "You can only delete draft invoices.")
            del self.objects[obj["id"]]
            return {"id": obj["id"], "object": "invoice", "deleted": True}
        if collection == "invoices" and method == "POST" and len(rest) == 2:
            return self._transition(obj, rest[1], params)
        raise StripeError(404, f"Unrecognized request URL ({method}: {path}).")

    def _create(self, collection: str, params: dict) -> dict:
        obj = {
            "id": f"{PREFIX[collection]}_{uuid.uuid4().hex[:14]}",
            "object": KIND[collection],
            "livemode": False,
            "created": int(time.time()),
            "metadata": {},
            **params,
        }
        if collection == "invoices":
            self._get("customers", params.get("customer", ""))
            obj.update(status="draft", total=0, amount_due=0)
        if collection == "invoiceitems":
            obj["amount"] = int(params["amount"])
            if params.get("invoice"):
                invoice = self._get("invoices", params["invoice"])
                if invoice["status"] != "draft":
                    raise StripeError(
                        400,
                        f"Invoice {invoice['id']} is not a draft: items can only be added "
                        "to draft invoices.",
                    )
                invoice["total"] += obj["amount"]
                invoice["amount_due"] = max(0, invoice["total"])
        self.objects[obj["id"]] = obj
        return obj

    def _list(self, collection: str, params: dict) -> dict:
        data = [
            o
            for o in self.objects.values()
            if o["object"] == KIND[collection]
            and all(o.get(f) == params[f] for f in ("customer", "invoice", "status") if f in params)
        ]
        data.sort(key=lambda o: o["created"], reverse=True)
        return {"object": "list", "url": f"/v1/{collection}", "has_more": False, "data": data}

    def _transition(self, invoice: dict, action: str, params: dict) -> dict:
        allowed = {"finalize": ("draft",), "void": ("open", "uncollectible")}
        if action not in allowed:
            raise StripeError(404, f"Unrecognized request URL (POST: .../{action}).")
        if invoice["status"] not in allowed[action]:
            raise StripeError(
                400, f"You can't {action} an invoice whose status is {invoice['status']}."
            )
        invoice["status"] = {"finalize": "open", "void": "void"}[action]
        if action == "finalize" and "auto_advance" in params:
            invoice["auto_advance"] = params["auto_advance"]
        return invoice

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
