"""The Lab's load generator beside NVIDIA AIPerf, on the same llama.cpp server, in one run.

A real llama.cpp server (llama-cpp-python) serves the bench model (~120M parameters,
random weights, written by deployments/bench_model.py). The same prompts (the Lab's
synthetic words, seeded) go out at the same concurrency with the same max_tokens from:
 - the Lab's runner (lab.runner.measure), through a recording proxy (lab.fidelity) that
   times every answer from outside: the fidelity ratios Lab / independent;
 - AIPerf 0.13.0, installed on first use in a virtualenv of its own under
   var/lab-runners (never in the product's requirements), offline: the bench model's
   tokenizer is written locally as a Hugging Face tokenizer and served from a local hub
   cache.
Rounds alternate (Lab, AIPerf, Lab, AIPerf…) so the machine's changing load falls on both.
Then both run once more against a paced stand-in engine whose timing is known (first token
after 250 ms, then one every 20 ms, no compute), where neither generator can slow what it
measures: there they must agree with each other and with the known figures.
Prints TTFT p50, request and output-token throughput, the generator's own CPU seconds and
start-up time, then the ratios; last line RESULT.
"""

import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from deployments.bench_model import _vocab, write_bench_gguf  # noqa: E402
from lab import specs  # noqa: E402
from lab.fidelity import RecordingProxy  # noqa: E402
from lab.loadgen import prompts_for_point  # noqa: E402
from lab.runner import measure  # noqa: E402

AIPERF = "aiperf==0.13.0"
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "2"))
REQUESTS = int(os.environ.get("BENCH_REQUESTS", "16"))
INPUT, OUTPUT = 64, 32
VAR = ROOT / "var"
TOKENIZER_REPO = "gantry/bench-random-llama-tokenizer"
REV = "0" * 40


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def runner_venv() -> Path:
    venv = VAR / "lab-runners" / AIPERF.replace("==", "-")
    py = venv / "bin" / "python"
    if not (venv / "bin" / "aiperf").exists():
        print(f"installing {AIPERF} in {venv} (first use)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", AIPERF], check=True)
    return venv


def write_tokenizer(venv: Path, hf_home: Path) -> None:
    """The bench model's vocabulary as a Hugging Face tokenizer (Unigram over the same
    pieces and scores, byte fallback), in a local hub cache AIPerf reads offline."""
    snap = hf_home / "hub" / f"models--{TOKENIZER_REPO.replace('/', '--')}"
    (snap / "refs").mkdir(parents=True, exist_ok=True)
    (snap / "refs" / "main").write_text(REV)
    folder = snap / "snapshots" / REV
    folder.mkdir(parents=True, exist_ok=True)
    tokens, scores, _types = _vocab()
    (folder / "vocab.json").write_text(
        json.dumps([[t.decode(), s] for t, s in zip(tokens, scores, strict=True)])
    )
    script = f"""
import json
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
vocab = [tuple(v) for v in json.load(open({str(folder / "vocab.json")!r}))]
tok = Tokenizer(models.Unigram(vocab, unk_id=0, byte_fallback=True))
tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                 decoders.Fuse(), decoders.Strip(" ", 1, 0)])
tok.save({str(folder / "tokenizer.json")!r})
"""
    subprocess.run([str(venv / "bin" / "python"), "-c", script], check=True)
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
            }
        )
    )


def start_engine(model: Path, port: int, log: Path) -> subprocess.Popen:
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host",
            "127.0.0.1", "--port", str(port), "--n_ctx", "1024", "--model_alias", "bench",
            "--interrupt_requests", "False"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1)
            return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"the engine did not start:\n{log.read_text()[-2000:]}")


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def lab_round(url: str, workload: dict) -> dict:
    load = specs.load_parse({"concurrency": [CONCURRENCY]})
    cpu0, t0 = time.process_time(), time.perf_counter()
    with RecordingProxy(url) as outside:
        [p] = measure(base_url=outside.url, api_key="", model="bench", workload=workload,
                      load=load, slo=specs.slo_parse({}))  # fmt: skip
    return {
        "ttft_p50_ms": p.ttft_ms["p50"],
        "rps": p.requests_per_s,
        "tps": p.output_tokens_per_s,
        "itl_p50_ms": p.itl_ms["p50"],
        # This process ran both the runner and the proxy; the proxy's share is not the
        # runner's, but it cannot be told apart here: an upper bound.
        "cpu_s": time.process_time() - cpu0,
        "wall_s": time.perf_counter() - t0,
        "startup_s": 0.0,
        "indep_ttft_p50_ms": outside.ttft_p50_ms(),
        "indep_tps": outside.output_tokens_per_s(),
    }


def aiperf_round(venv: Path, url: str, prompts: Path, hf_home: Path, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    argv = [str(venv / "bin" / "aiperf"), "profile", "-m", "bench", "--url", url,
            "--endpoint-type", "completions", "--streaming", "--concurrency", str(CONCURRENCY),
            "--request-count", str(REQUESTS), "--input-file", str(prompts),
            "--custom-dataset-type", "single_turn", "--prompt-output-tokens-mean", str(OUTPUT),
            "--tokenizer", TOKENIZER_REPO, "--random-seed", "7", "--output-artifact-dir",
            str(out), "--ui-type", "none", "--no-server-metrics", "--no-gpu-telemetry",
            "--workers-max", "1"]  # fmt: skip
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    cpu0, t0 = children_cpu(), time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    report = out / "profile_export_aiperf.json"
    if done.returncode != 0 or not report.exists():
        raise SystemExit(f"aiperf failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    data = json.loads(report.read_text())
    duration = data["benchmark_duration"]["avg"]
    return {
        "ttft_p50_ms": data["time_to_first_token"]["p50"],
        "rps": data["request_throughput"]["avg"],
        "tps": data["output_token_throughput"]["avg"],
        "itl_p50_ms": data["inter_token_latency"]["p50"],
        "cpu_s": children_cpu() - cpu0,
        "wall_s": wall,
        # Everything before the first request went out: the run took `wall`, of which the
        # benchmark itself took `duration`.
        "startup_s": wall - duration,
    }


PACED_TTFT_S, PACED_ITL_S = 0.25, 0.02


async def _paced(request):
    """A stand-in engine whose timing is known: the first token after PACED_TTFT_S, then
    one every PACED_ITL_S, each a common word (one token to both tokenizers)."""
    import asyncio

    from aiohttp import web

    body = await request.json()
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await asyncio.sleep(PACED_TTFT_S)
    for i in range(int(body.get("max_tokens") or OUTPUT)):
        if i:
            await asyncio.sleep(PACED_ITL_S)
        event = {"object": "text_completion", "choices": [{"index": 0, "text": " the"}]}
        await resp.write(b"data: " + json.dumps(event).encode() + b"\n\n")
    await resp.write(b"data: [DONE]\n\n")
    return resp


def paced_server():
    """(base URL, stop) of the paced stand-in, served on a thread of its own."""
    import asyncio
    import threading

    from aiohttp import web

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    app = web.Application()
    app.router.add_post("/v1/completions", _paced)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    port = free_port()

    async def start() -> None:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()

    asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)

    def stop() -> None:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)

    return f"http://127.0.0.1:{port}", stop


def main() -> None:
    venv = runner_venv()
    work = Path(tempfile.mkdtemp(prefix="lab-loadgen-"))
    hf_home = work / "hf"
    write_tokenizer(venv, hf_home)
    model = write_bench_gguf(VAR / "bench-models" / "bench-random-llama-f16.gguf")
    port = free_port()
    engine = start_engine(model, port, work / "engine.log")
    url = f"http://127.0.0.1:{port}"
    workload = specs.workload_parse(
        {"input_tokens": INPUT, "output_tokens": OUTPUT, "requests_per_point": REQUESTS,
         "warmup_requests": 0, "seed": 7}
    )  # fmt: skip
    # AIPerf sends the very prompts the Lab's first point sends.
    prompts = work / "prompts.jsonl"
    jobs = prompts_for_point(workload, seed=workload["seed"] * 1_000_003)
    prompts.write_text("".join(json.dumps({"text": j.prompt}) + "\n" for j in jobs))
    lab, aip = [], []
    try:
        measure(base_url=url, api_key="", model="bench",
                workload=dict(workload, requests_per_point=2),
                load=specs.load_parse({"concurrency": [1]}),
                slo=specs.slo_parse({}))  # fmt: skip
        for r in range(ROUNDS):
            lab.append(lab_round(url, workload))
            aip.append(aiperf_round(venv, url, prompts, hf_home, work / f"aiperf-{r}"))
            print(
                f"round {r + 1}: TTFT p50 lab {lab[-1]['ttft_p50_ms']:.0f} ms / aiperf "
                f"{aip[-1]['ttft_p50_ms']:.0f} ms; requests/s lab {lab[-1]['rps']:.2f} / aiperf "
                f"{aip[-1]['rps']:.2f}; output tok/s lab {lab[-1]['tps']:.1f} / aiperf "
                f"{aip[-1]['tps']:.1f}",
                flush=True,
            )
    finally:
        engine.terminate()
        engine.wait(timeout=30)
    # The same two generators against timing that is known, which neither can slow down.
    paced_url, stop = paced_server()
    try:
        paced_lab = lab_round(paced_url, workload)
        paced_aip = aiperf_round(venv, paced_url, prompts, hf_home, work / "aiperf-paced")
    finally:
        stop()
    e2e = PACED_TTFT_S + (OUTPUT - 1) * PACED_ITL_S
    truth = {"ttft_p50_ms": PACED_TTFT_S * 1000, "itl_p50_ms": PACED_ITL_S * 1000,
             "tps": CONCURRENCY * OUTPUT / e2e, "rps": CONCURRENCY / e2e}  # fmt: skip

    def med(rows: list[dict], key: str) -> float:
        return statistics.median(row[key] for row in rows)

    print(f"\nllama.cpp (llama-cpp-python), bench model, concurrency {CONCURRENCY}, "
          f"{REQUESTS} requests of {INPUT} words → {OUTPUT} tokens, "
          f"{ROUNDS} rounds, medians")  # fmt: skip
    print(f"{'':28}{'Lab runner':>14}{'AIPerf 0.13':>14}{'independent':>14}")
    for key, label in (("ttft_p50_ms", "TTFT p50 (ms)"), ("itl_p50_ms", "ITL p50 (ms)"),
                       ("rps", "requests/s"), ("tps", "output tokens/s"),
                       ("cpu_s", "generator CPU (s)"), ("startup_s", "start-up (s)"),
                       ("wall_s", "wall (s)")):  # fmt: skip
        indep = {"ttft_p50_ms": med(lab, "indep_ttft_p50_ms"), "tps": med(lab, "indep_tps")}
        extra = f"{indep[key]:>14.2f}" if key in indep else f"{'':>14}"
        print(f"{label:28}{med(lab, key):>14.2f}{med(aip, key):>14.2f}{extra}")
    print(f"\npaced stand-in (TTFT {PACED_TTFT_S * 1000:.0f} ms, ITL {PACED_ITL_S * 1000:.0f} ms), "
          f"same prompts and concurrency")  # fmt: skip
    print(f"{'':28}{'Lab runner':>14}{'AIPerf 0.13':>14}{'known':>14}")
    for key, label in (("ttft_p50_ms", "TTFT p50 (ms)"), ("itl_p50_ms", "ITL p50 (ms)"),
                       ("rps", "requests/s"), ("tps", "output tokens/s")):  # fmt: skip
        print(f"{label:28}{paced_lab[key]:>14.2f}{paced_aip[key]:>14.2f}{truth[key]:>14.2f}")
    ttft_vs = med(lab, "ttft_p50_ms") / med(lab, "indep_ttft_p50_ms")
    tps_vs = med(lab, "tps") / med(lab, "indep_tps")
    print(
        "RESULT "
        f"lab_ttft_p50_ms={med(lab, 'ttft_p50_ms'):.1f} "
        f"aiperf_ttft_p50_ms={med(aip, 'ttft_p50_ms'):.1f} "
        f"lab_rps={med(lab, 'rps'):.3f} aiperf_rps={med(aip, 'rps'):.3f} "
        f"lab_tps={med(lab, 'tps'):.2f} aiperf_tps={med(aip, 'tps'):.2f} "
        f"lab_cpu_s={med(lab, 'cpu_s'):.2f} aiperf_cpu_s={med(aip, 'cpu_s'):.2f} "
        f"aiperf_startup_s={med(aip, 'startup_s'):.2f} "
        f"ttft_vs_independent={ttft_vs:.3f} tps_vs_independent={tps_vs:.3f} "
        f"paced_lab_ttft_ms={paced_lab['ttft_p50_ms']:.1f} "
        f"paced_aiperf_ttft_ms={paced_aip['ttft_p50_ms']:.1f} "
        f"paced_lab_tps={paced_lab['tps']:.2f} paced_aiperf_tps={paced_aip['tps']:.2f} "
        f"paced_known_tps={truth['tps']:.2f}"
    )


if __name__ == "__main__":
    main()
