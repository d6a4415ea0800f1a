"""A local HTTP server that answers the Hugging Face hub's model-info endpoint, so the
real `huggingface_hub` client can be exercised without the internet."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class HubServer:
    def __init__(self):
        self.models: dict[str, dict] = {}
        self.broken: set[str] = set()  # answer 500
        self.slow: set[str] = set()  # answer after the client's timeout
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                hub.requests.append(self.path)
                path = self.path.split("?", 1)[0]
                prefix = "/api/models/"
                if not path.startswith(prefix):
                    return self._send(404, {"error": "Not found"})
                repo = path[len(prefix) :].split("/revision/")[0]
                if repo in hub.slow:
                    time.sleep(3)
                if repo in hub.broken:
                    return self._send(500, {"error": "Internal Error"})
                if repo not in hub.models:
                    return self._send(
                        404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
                    )
                return self._send(200, hub.models[repo])

            def _send(self, status, body, headers=None):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def add_model(
        self,
        repo: str,
        *,
        license="mit",
        gated=False,
        downloads=0,
        likes=0,
        total_params=None,
        last_modified="2025-01-20T12:00:00.000Z",
    ):
        info = {
            "_id": "x",
            "id": repo,
            "modelId": repo,
            "author": repo.split("/")[0],
            "sha": "0" * 40,
            "lastModified": last_modified,
            "private": False,
            "disabled": False,
            "gated": gated,
            "downloads": downloads,
            "likes": likes,
            "tags": [f"license:{license}"],
            "cardData": {"license": license},
            "siblings": [],
            "library_name": "transformers",
        }
        if total_params:
            info["safetensors"] = {"parameters": {"BF16": total_params}, "total": total_params}
        self.models[repo] = info

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
