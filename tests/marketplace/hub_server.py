"""A local HTTP server that answers the Hugging Face hub's endpoints the real
`huggingface_hub` client calls — model info, and file resolve (HEAD and ranged GET) — so
it can be exercised without the internet. Knows gated repos, revisions and errors."""

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class HubServer:
    def __init__(self):
        self.models: dict[str, dict] = {}
        self.files: dict[str, dict[str, bytes]] = {}  # repo -> filename -> content
        self.gated: dict[str, str] = {}  # repo -> the token that has access
        self.broken: set[str] = set()  # answer 500
        self.slow: set[str] = set()  # answer after the client's timeout
        self.requests: list[str] = []
        self.fixed_etags: dict[str, str] = {}  # filename -> ETag to announce regardless
        self.rate: dict[str, int] = {}  # repo -> bytes per second its file GETs are sent at
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, body, headers=None, head=False):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                if not head:
                    self.wfile.write(data)

            def _denied(self, repo, head=False) -> bool:
                if repo not in hub.gated:
                    return False
                given = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
                if given == hub.gated[repo]:
                    return False
                self._send(
                    401 if not given else 403,
                    {"error": "Access is restricted."},
                    {"X-Error-Code": "GatedRepo"},
                    head=head,
                )
                return True

            def _bad_revision(self, repo, revision, head=False) -> bool:
                if not revision or revision in ("main", hub.models[repo]["sha"]):
                    return False
                self._send(
                    404,
                    {"error": "Revision not found"},
                    {"X-Error-Code": "RevisionNotFound"},
                    head=head,
                )
                return True

            def _resolve(self, head: bool):
                # /{owner}/{name}/resolve/{revision}/{filename}
                parts = self.path.split("?", 1)[0].lstrip("/").split("/")
                repo, rev, name = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
                if repo not in hub.models:
                    return self._send(
                        404,
                        {"error": "Repository not found"},
                        {"X-Error-Code": "RepoNotFound"},
                        head=head,
                    )
                if self._denied(repo, head) or self._bad_revision(repo, rev, head):
                    return None
                data = hub.files.get(repo, {}).get(name)
                if data is None:
                    return self._send(
                        404,
                        {"error": "Entry not found"},
                        {"X-Error-Code": "EntryNotFound"},
                        head=head,
                    )
                # Range: bytes=<start>-[<end>] (RFC 9110), as the client sends to resume.
                start, end = 0, len(data) - 1
                wanted = self.headers.get("Range", "")
                ranged = wanted.startswith("bytes=")
                if ranged:
                    first, _, last = wanted[6:].partition("-")
                    start = int(first or 0)
                    end = min(int(last), end) if last else end
                    if start >= len(data) and data:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return None
                body = data[start : end + 1]
                self.send_response(206 if ranged else 200)
                self.send_header("Content-Length", str(len(body)))
                if ranged:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                etag = hub.fixed_etags.get(name) or hashlib.sha256(data).hexdigest()
                self.send_header("ETag", f'"{etag}"')
                self.send_header("X-Repo-Commit", hub.models[repo]["sha"])
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if head:
                    return None
                rate = hub.rate.get(repo)
                chunk = max(rate // 10, 1) if rate else 1 << 20
                try:
                    for i in range(0, len(body), chunk):
                        self.wfile.write(body[i : i + chunk])
                        self.wfile.flush()
                        if rate:
                            time.sleep(0.1)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client went away (or was killed)
                return None

            def _tree(self, rest: str):
                # /api/models/{owner}/{name}/tree/{revision}[/{path}]?recursive=true: the
                # files of a revision, as snapshot_download lists them (one page, no Link).
                repo, _, tail = rest.partition("/tree/")
                revision = tail.split("/", 1)[0]
                if repo not in hub.models:
                    return self._send(
                        404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
                    )
                if self._denied(repo) or self._bad_revision(repo, revision):
                    return None
                entries = []
                for name, data in sorted(hub.files.get(repo, {}).items()):
                    entry = {
                        "type": "file",
                        "oid": hashlib.sha1(data).hexdigest(),
                        "size": len(data),
                        "path": name,
                    }
                    if name.endswith((".safetensors", ".gguf", ".bin")):  # kept in LFS
                        entry["lfs"] = {
                            "oid": hashlib.sha256(data).hexdigest(),
                            "size": len(data),
                            "pointerSize": 134,
                        }
                    entries.append(entry)
                return self._send(200, entries)

            def do_HEAD(self):
                hub.requests.append("HEAD " + self.path)
                if "/resolve/" in self.path:
                    return self._resolve(head=True)
                return self._send(404, {"error": "Not found"}, head=True)

            def do_GET(self):
                hub.requests.append(self.path)
                if "/resolve/" in self.path:
                    return self._resolve(head=False)
                path = self.path.split("?", 1)[0]
                prefix = "/api/models/"
                if not path.startswith(prefix):
                    return self._send(404, {"error": "Not found"})
                if "/tree/" in path:
                    return self._tree(path.removeprefix(prefix))
                repo, _, revision = path.removeprefix(prefix).partition("/revision/")
                if repo in hub.slow:
                    time.sleep(3)
                if repo in hub.broken:
                    return self._send(500, {"error": "Internal Error"})
                if repo not in hub.models:
                    return self._send(
                        404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
                    )
                if self._denied(repo) or self._bad_revision(repo, revision):
                    return None
                return self._send(200, hub.models[repo])

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
            "sha": hashlib.sha1(repo.encode()).hexdigest(),
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

    def add_files(
        self,
        repo: str,
        files: dict[str, bytes],
        *,
        gguf: dict | None = None,
        safetensors_total: int | None = None,
        gated_token: str | None = None,
    ):
        """Serve these files from `repo` (which must be added first)."""
        self.files[repo] = files
        info = self.models[repo]
        info["siblings"] = [
            {"rfilename": n, "size": len(d), "blobId": hashlib.sha1(d).hexdigest()}
            for n, d in files.items()
        ]
        if gguf is not None:
            info["gguf"] = gguf
        if safetensors_total is not None:
            info["safetensors"] = {
                "parameters": {"BF16": safetensors_total},
                "total": safetensors_total,
            }
        if gated_token:
            self.gated[repo] = gated_token
            info["gated"] = "manual"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
