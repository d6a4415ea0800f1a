"""The gateway under the same load as its peers, in one run on this machine.

Same generator (wrk), same concurrency, same fast OpenAI-shaped upstream on loopback; each
gateway pinned to its own core (taskset), the upstream and wrk on the other. Gantry runs
with key check, routing, token metering and limits on. Two workloads: a plain chat
completion, and the same request streamed (server-sent events ending with the usage event
the gateway asks for, as vLLM sends it) — metered too. The upstream alone, under the same
wrk, gives the ceiling (`direct_rps`). The peers are installed on first use, for this bench
only, under var/bench-peers (never in the product's requirements): LiteLLM's proxy in a
virtualenv of its own, Portkey's gateway from npm with @hono/node-server held at 1.13.5
(newer ones break its streaming). BENCH_LITELLM / BENCH_PORTKEY point elsewhere. wrk is
installed with apt-get when it is missing. Prints requests/s, sequential added latency p50
over the direct upstream, p99 at load, each gateway's CPU time per request (its process
tree's, from /proc: a figure the rest of the machine's load hardly moves, unlike req/s), and
the ratios.
"""

import asyncio
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _setup import ROOT, django_on_postgres, start_gateway

CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "32"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))
SEQUENTIAL = int(os.environ.get("BENCH_SEQUENTIAL", "300"))
LITELLM_KEY = "sk-gantry-bench-7f3a9c2e41d84b6b9e05"
BODY = json.dumps(
    {"model": "bench", "max_tokens": 8, "messages": [{"role": "user", "content": "hello"}]}
)
STREAM_BODY = json.dumps(
    {
        "model": "bench",
        "max_tokens": 8,
        "stream": True,
        "messages": [{"role": "user", "content": "hello"}],
    }
)


def _event(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


STREAM_ANSWER = (
    b"".join(
        _event(
            {
                "id": "chatcmpl-bench",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": "bench",
                "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}],
            }
        )
        for word in ["Hello", " from", " the", " upstream", "."]
    )
    + _event(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "bench",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        }
    )
    + _event(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "bench",
            "choices": [],
            "usage": {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14},
        }
    )
    + b"data: [DONE]\n\n"
)
ANSWER = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": "bench",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": "Hello from the upstream."},
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15},
    }
).encode()


class Upstream(asyncio.Protocol):
    """A deliberately tiny HTTP/1.1 server: keep-alive, one fixed JSON answer."""

    def connection_made(self, transport):
        self.transport, self.buf = transport, b""

    def data_received(self, data):
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, rest = self.buf.split(b"\r\n\r\n", 1)
            m = re.search(rb"(?i)content-length:\s*(\d+)", head)
            need = int(m.group(1)) if m else 0
            if len(rest) < need:
                return
            body, self.buf = rest[:need], rest[need:]
            streamed = re.search(rb'"stream":\s*true', body) is not None
            answer, kind = (
                (STREAM_ANSWER, b"text/event-stream") if streamed else (ANSWER, b"application/json")
            )
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: "
                + kind
                + b"\r\nContent-Length: "
                + str(len(answer)).encode()
                + b"\r\nConnection: keep-alive\r\n\r\n"
                + answer
            )


def start_upstream(port: int) -> None:
    def run():
        loop = asyncio.new_event_loop()
        server = loop.run_until_complete(loop.create_server(Upstream, "127.0.0.1", port))
        loop.run_until_complete(server.serve_forever())

    threading.Thread(target=run, daemon=True).start()
    time.sleep(0.3)


def wait_http(port: int, path: str = "/", timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", path)
            c.getresponse().read()
            return True
        except OSError:
            time.sleep(0.3)
    return False


def sequential_p50_ms(port: int, path: str, headers: dict, body: str = BODY) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    samples = []
    for i in range(SEQUENTIAL + 20):
        t = time.perf_counter()
        conn.request(
            "POST", path, body=body, headers={"Content-Type": "application/json", **headers}
        )
        r = conn.getresponse()
        r.read()
        assert r.status == 200, r.status
        if i >= 20:
            samples.append((time.perf_counter() - t) * 1000)
    return statistics.median(samples)


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process and all its descendants, from /proc: what a
    gateway spends, whatever else the machine is doing meanwhile."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    tree, grew = {pid}, True
    while grew:
        more = {p for p, parent in parents.items() if parent in tree} - tree
        tree, grew = tree | more, bool(more)
    return sum(times.get(p, 0.0) for p in tree)


def wrk(port: int, path: str, headers: dict, body: str = BODY) -> tuple[float, float]:
    script = Path(tempfile.mkdtemp()) / "post.lua"
    lines = [
        'wrk.method = "POST"',
        f"wrk.body = {json.dumps(body)}",
        'wrk.headers["Content-Type"] = "application/json"',
    ]
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    script.write_text("\n".join(lines) + "\n")
    out = subprocess.run(
        [
            "taskset",
            "-c",
            "0",
            "wrk",
            "-t1",
            f"-c{CONCURRENCY}",
            f"-d{SECONDS}s",
            "--latency",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}{path}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    wrk.requests = int(re.search(r"(\d+) requests in", out).group(1))
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    p99 = float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]
    if "Non-2xx" in out:
        raise SystemExit(f"errors under load on port {port}:\n{out}")
    return rps, p99


PEERS = ROOT / "var" / "bench-peers"


def install_peers() -> tuple[str, Path]:
    """LiteLLM's `litellm` and Portkey's folder, installed here once if not given."""
    litellm = os.environ.get("BENCH_LITELLM") or str(PEERS / "litellm" / "bin" / "litellm")
    if not os.environ.get("BENCH_LITELLM") and not Path(litellm).exists():
        print("installing LiteLLM's proxy for the bench (once)…", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(PEERS / "litellm")], check=True)
        subprocess.run(
            [str(PEERS / "litellm" / "bin" / "pip"), "install", "-q", "litellm[proxy]"], check=False
        )
    portkey = Path(os.environ.get("BENCH_PORTKEY") or PEERS / "portkey")
    start = portkey / "node_modules/@portkey-ai/gateway/build/start-server.js"
    if not os.environ.get("BENCH_PORTKEY") and not start.exists() and shutil.which("npm"):
        print("installing Portkey's gateway for the bench (once)…", flush=True)
        portkey.mkdir(parents=True, exist_ok=True)
        (portkey / "package.json").write_text(
            json.dumps(
                {
                    "name": "bench-portkey",
                    "private": True,
                    "overrides": {"@hono/node-server": "1.13.5"},
                }
            )
        )
        subprocess.run(
            ["npm", "install", "--silent", "@portkey-ai/gateway"], cwd=portkey, check=False
        )
    return litellm, portkey


def ensure_wrk() -> None:
    """Install wrk with apt-get when it is missing (reading the package lists first if
    this machine has none yet)."""
    if shutil.which("wrk"):
        return
    print("installing wrk for the bench (once)…", flush=True)
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*sudo, "apt-get", "install", "-y", "-q", "wrk"]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run([*sudo, "apt-get", "update", "-q"], env=env, capture_output=True)
        subprocess.run(install, env=env, capture_output=True)
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed and could not be installed: apt-get install wrk")


def main():
    ensure_wrk()
    # This process (the upstream's thread and the sequential client) on core 0 with wrk, as
    # the table says: never on the gateways' core, where it would add its own CPU to theirs.
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {0})
    db_url = django_on_postgres()
    from django.contrib.auth import get_user_model

    from deployments.gpu_types import ensure_gpu_types
    from deployments.models import Deployment, Driver, GpuPool, GpuType, Node, Region, Replica
    from portal.models import ApiKey, Organization
    from portal.services import api_key_create, organization_create

    upstream_port, gantry_port, litellm_port, portkey_port = 19100, 19101, 19102, 8787
    start_upstream(upstream_port)
    up = f"http://127.0.0.1:{upstream_port}"

    ensure_gpu_types()
    user, _ = get_user_model().objects.get_or_create(username="bench-gw")
    org = Organization.objects.filter(slug="bench-gw").first() or organization_create(
        name="bench-gw", slug="bench-gw", owner=user
    )
    Deployment.objects.filter(organization=org).delete()
    ApiKey.objects.filter(organization=org).delete()
    region, _ = Region.objects.get_or_create(code="bench", defaults={"name": "bench"})
    pool, _ = GpuPool.objects.get_or_create(
        region=region,
        name="cpu",
        defaults={"driver": Driver.LOCAL, "gpu_type": GpuType.objects.get(code="cpu")},
    )
    node, _ = Node.objects.get_or_create(pool=pool, name="n", defaults={"gpus_total": 1})
    d = Deployment.objects.create(
        organization=org,
        name="bench",
        model_ref="x/y",
        engine="vllm",
        gpu_type=GpuType.objects.get(code="cpu"),
        regions=["bench"],
        status="running",
    )
    Replica.objects.create(
        deployment=d,
        ordinal=0,
        region=region,
        pool=pool,
        node=node,
        gpus=0,
        status="running",
        url=up,
        handle="bench",
    )
    key, raw = api_key_create(organization=org, user=user, name="bench")
    # Limits on, set far above what the bench reaches: every request is counted against
    # them, as in production, without any being refused.
    ApiKey.objects.filter(pk=key.pk).update(
        requests_per_minute=2_000_000_000, tokens_per_minute=2_000_000_000
    )

    procs = []
    env = {**os.environ, "DATABASE_URL": db_url, "LOG_LEVEL": "WARNING"}
    procs.append(start_gateway(gantry_port, env=env, core=1, quiet=True))
    peers = {"gantry": (gantry_port, "/v1/chat/completions", {"Authorization": f"Bearer {raw}"})}
    pids = {"gantry": procs[-1].pid}

    litellm, portkey = install_peers()
    if Path(litellm).exists():
        cfg = Path(tempfile.mkdtemp()) / "litellm.yaml"
        cfg.write_text(
            json.dumps(
                {
                    "model_list": [
                        {
                            "model_name": "bench",
                            "litellm_params": {
                                "model": "openai/bench",
                                "api_base": f"{up}/v1",
                                "api_key": "sk-bench",
                            },
                        }
                    ]
                }
            )
        )
        procs.append(
            subprocess.Popen(
                [
                    "taskset",
                    "-c",
                    "1",
                    litellm,
                    "--config",
                    str(cfg),
                    "--port",
                    str(litellm_port),
                    "--num_workers",
                    "1",
                ],
                env={
                    # Not DATABASE_URL: LiteLLM would try to keep its own tables there.
                    **{k: v for k, v in os.environ.items() if k != "DATABASE_URL"},
                    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                    "LITELLM_LOG": "ERROR",
                    "LITELLM_MASTER_KEY": LITELLM_KEY,
                },
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        pids["litellm"] = procs[-1].pid
        peers["litellm"] = (
            litellm_port,
            "/v1/chat/completions",
            {"Authorization": f"Bearer {LITELLM_KEY}"},
        )
    start = portkey / "node_modules/@portkey-ai/gateway/build/start-server.js"
    if start.exists():
        procs.append(
            subprocess.Popen(
                ["taskset", "-c", "1", "node", str(start), "--headless"],
                cwd=portkey,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        pids["portkey"] = procs[-1].pid
        peers["portkey"] = (
            portkey_port,
            "/v1/chat/completions",
            {
                "x-portkey-provider": "openai",
                "x-portkey-custom-host": f"{up}/v1",
                "Authorization": "Bearer sk-bench",
            },
        )
    try:
        for name, (port, _, _) in peers.items():
            health = {"gantry": "/healthz", "litellm": "/health/liveliness"}.get(name, "/")
            if not wait_http(port, health, timeout=120):
                raise SystemExit(f"{name} did not start on port {port}")
        direct = sequential_p50_ms(upstream_port, "/v1/chat/completions", {})
        direct_rps, _ = wrk(upstream_port, "/v1/chat/completions", {})
        results = {}
        for name, (port, path, headers) in peers.items():
            seq = sequential_p50_ms(port, path, headers)
            before = cpu_seconds(pids[name])
            rps, p99 = wrk(port, path, headers)
            between = cpu_seconds(pids[name])
            cpu_us = (between - before) / max(wrk.requests, 1) * 1e6
            stream_rps, stream_p99 = wrk(port, path, headers, STREAM_BODY)
            stream_cpu_us = (cpu_seconds(pids[name]) - between) / max(wrk.requests, 1) * 1e6
            results[name] = {
                "rps": rps,
                "added": seq - direct,
                "p99": p99,
                "stream_rps": stream_rps,
                "stream_p99": stream_p99,
                "cpu_us": cpu_us,
                "stream_cpu_us": stream_cpu_us,
            }
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            with __import__("contextlib").suppress(subprocess.TimeoutExpired):
                p.wait(timeout=15)
    metered = metered_streams(d.pk)

    print(
        f"wrk -t1 -c{CONCURRENCY} -d{SECONDS}s; gateways on core 1, upstream and wrk on "
        f"core 0; direct upstream {direct_rps:.0f} requests/s, sequential p50 {direct:.3f} ms"
    )
    print(
        f"{'gateway':<10}{'req/s':>10}{'added p50 ms':>14}{'p99 at load ms':>16}"
        f"{'stream req/s':>14}{'stream p99 ms':>15}{'CPU µs/req':>12}{'stream CPU µs/req':>19}"
    )
    for name, r in results.items():
        print(
            f"{name:<10}{r['rps']:>10.0f}{r['added']:>14.3f}{r['p99']:>16.2f}"
            f"{r['stream_rps']:>14.0f}{r['stream_p99']:>15.2f}"
            f"{r['cpu_us']:>12.0f}{r['stream_cpu_us']:>19.0f}"
        )
    g = results["gantry"]
    pk = results.get("portkey")
    ll = results.get("litellm")
    print(
        "ratios: "
        + ", ".join(
            f"gantry/{n} {ratio(g['rps'], r['rps']):.2f}× "
            f"(streamed {ratio(g['stream_rps'], r['stream_rps']):.2f}×)"
            for n, r in results.items()
            if n != "gantry"
        )
    )
    print(f"streamed requests Gantry metered into the ledger: {metered}")
    nan = float("nan")
    print(
        f"RESULT gantry_rps={g['rps']:.0f} portkey_rps={pk['rps'] if pk else nan:.0f} "
        f"litellm_rps={ll['rps'] if ll else nan:.0f} "
        f"rps_vs_portkey={ratio(g['rps'], pk['rps']) if pk else nan:.2f} "
        f"rps_vs_litellm={ratio(g['rps'], ll['rps']) if ll else nan:.2f} "
        f"stream_rps_vs_portkey={ratio(g['stream_rps'], pk['stream_rps']) if pk else nan:.2f} "
        f"direct_rps={direct_rps:.0f} "
        f"gantry_seq_added_p50_ms={g['added']:.3f} "
        f"gantry_stream_rps={g['stream_rps']:.0f} "
        f"portkey_stream_rps={pk['stream_rps'] if pk else nan:.0f} "
        f"litellm_stream_rps={ll['stream_rps'] if ll else nan:.0f} "
        f"gantry_cpu_us_per_req={g['cpu_us']:.0f} "
        f"gantry_stream_cpu_us_per_req={g['stream_cpu_us']:.0f} "
        f"portkey_cpu_us_per_req={pk['cpu_us'] if pk else nan:.0f} "
        f"portkey_stream_cpu_us_per_req={pk['stream_cpu_us'] if pk else nan:.0f} "
        f"portkey_seq_added_p50_ms={pk['added'] if pk else nan:.3f} "
        f"litellm_seq_added_p50_ms={ll['added'] if ll else nan:.3f}"
    )


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def metered_streams(deployment_id: int) -> int:
    """Requests the gateway metered as streamed-with-usage, counted from the ledger after
    the gateway stopped (it writes what it holds on shutdown)."""
    from billing.models import UsageRecord

    return UsageRecord.objects.filter(
        deployment_id=deployment_id, kind="output_tokens", quantity=5
    ).count()


if __name__ == "__main__":
    main()
