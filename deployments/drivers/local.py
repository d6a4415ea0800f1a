"""The `local` driver: each replica is an engine process on this machine.

Processes are started detached (their own session, re-parented away from the worker),
so a worker restart neither kills them nor leaves zombies; each runtime keeps a small
state folder (pid, port, log) under RUNTIME_DIR/<pool>/<name>. A process is only
trusted as "ours" when its environment carries the replica's name, so a recycled pid
is never mistaken for a replica.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings

from deployments.drivers.base import (
    DriverError,
    PoolDriver,
    ReplicaSpec,
    RuntimeInfo,
    RuntimeStatus,
    Started,
)
from deployments.drivers.launch import engine_launch
from deployments.engines import model_file

MARKER = "GANTRY_REPLICA"
# Names the Gantry instance (one `make run`, one test session) that started an engine, so
# that instance can find and stop exactly its own engines, and nobody else's, on the way
# out. Set by the Makefile and by the test session; engines inherit it.
INSTANCE = "GANTRY_INSTANCE"
# The only variables an engine inherits. Gantry's own (SECRET_KEY, DATABASE_URL…) must
# not reach it, and llama.cpp's server reads PORT, HOST and MODEL from the environment,
# which would override the command line.
ENGINE_ENV = {
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "LD_LIBRARY_PATH",
    "OMP_NUM_THREADS",
    "CUDA_VISIBLE_DEVICES",
    "HF_HOME",
    "HF_HUB_OFFLINE",
    "HF_ENDPOINT",
    INSTANCE,
}


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host if host not in {"", "0.0.0.0"} else "127.0.0.1", 0))  # noqa: S104
        return s.getsockname()[1]


def _proc_is(pid: int, name: str) -> bool:
    """True when ``pid`` is a live (not zombie) process carrying our marker."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        if state in (b"Z", b"X"):
            return False
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f"{MARKER}={name}".encode() in f.read().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError):
        return False


def _environ(pid: int) -> dict[bytes, bytes]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            pairs = f.read().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return {}
    return dict(p.split(b"=", 1) for p in pairs if b"=" in p)


def instance_processes(
    instance: str, *, engines_only: bool = False, nested: bool = False
) -> list[int]:
    """Live processes whose environment names ``instance`` (an engine also carries the
    replica marker); with ``nested``, also those of instances started inside it (named
    ``<instance>/…``, as a `make run` inside a test session is). The environment is what
    a process started with, so a recycled pid or another instance's process never matches."""
    want = instance.encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        env = _environ(int(entry.name))
        value = env.get(INSTANCE.encode())
        if value is None or not (value == want or (nested and value.startswith(want + b"/"))):
            continue
        if engines_only and MARKER.encode() not in env:
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X"):
                    continue
        except (FileNotFoundError, IndexError):
            continue
        found.append(int(entry.name))
    return found


def terminate(pids: list[int], grace: float = 3.0) -> None:
    """SIGTERM every process group at once, then SIGKILL what is left after ``grace``
    seconds. Engines lead their own session (see start), so the group is the engine."""

    def alive(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
        except (FileNotFoundError, IndexError):
            return False

    def signal_all(sig: int) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if os.getpgid(pid) == pid:
                    os.killpg(pid, sig)
                else:
                    os.kill(pid, sig)

    signal_all(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    pids = [p for p in pids if alive(p)]
    if pids:
        signal_all(signal.SIGKILL)


class LocalDriver(PoolDriver):
    def __init__(self, pool):
        super().__init__(pool)
        self.root = Path(settings.RUNTIME_DIR) / str(pool.pk)

    # --- helpers ---------------------------------------------------------------------

    def _dir(self, handle: str) -> Path:
        if not handle.startswith("gantry-r") or "/" in handle:
            raise DriverError(f"not a local runtime handle: {handle!r}")
        return self.root / handle

    def _meta(self, handle: str) -> dict | None:
        rundir = self._dir(handle)
        try:
            meta = json.loads((rundir / "meta.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        if not meta.get("pid"):
            # Launched, but the launcher died before recording the pid: the engine wrote
            # it itself, so the process is still found (and adopted or stopped).
            with contextlib.suppress(FileNotFoundError, ValueError):
                meta["pid"] = int((rundir / "pid").read_text().strip())
        return meta

    def _write_meta(self, handle: str, meta: dict) -> None:
        rundir = self._dir(handle)
        tmp = rundir / f"meta.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(meta))
        tmp.replace(rundir / "meta.json")

    def _alive(self, handle: str, meta: dict | None) -> bool:
        return bool(meta and meta.get("pid") and _proc_is(meta["pid"], handle))

    # --- interface -------------------------------------------------------------------

    def start(self, spec: ReplicaSpec) -> Started:
        requested_at = time.time()  # when the start call came in (kept in meta.json)
        meta = self._meta(spec.name)
        if self._alive(spec.name, meta):
            # Started by an earlier attempt that died before recording it: adopt it.
            return Started(handle=spec.name, url=meta["url"])
        if spec.engine != "llama.cpp":
            module = {"vllm": "vllm", "sglang": "sglang"}.get(spec.engine, spec.engine)
            import importlib.util

            if importlib.util.find_spec(module) is None:
                raise DriverError(f"{spec.engine} is not installed on this machine's local pool.")
        path = model_file(spec.model_ref)
        if not path.is_file():
            raise DriverError(f"model file {path} does not exist")
        host = spec.node_address or "127.0.0.1"
        port = _free_port(host)
        rundir = self._dir(spec.name)
        rundir.mkdir(parents=True, exist_ok=True)
        pidfile = rundir / "pid"
        pidfile.unlink(missing_ok=True)
        log_path = rundir / "log"
        launch = engine_launch(
            spec, model_path=str(path), host=host, port=port, python=sys.executable
        )
        cmd = launch.argv
        url = f"http://{host}:{port}"
        # Written before the launch, so a crash at any later point leaves a findable trail.
        self._write_meta(
            spec.name,
            {"pid": None, "port": port, "url": url, "cmd": cmd, "requested_at": requested_at},
        )
        env = {k: v for k, v in os.environ.items() if k in ENGINE_ENV or k.startswith("OPENBLAS_")}
        env.update({MARKER: spec.name, "PYTHONUNBUFFERED": "1", **launch.env})
        # Exactly the GPUs placement gave the replica, and none for a CPU replica.
        cpu = not spec.gpus or spec.gpu_type == "cpu"
        env["CUDA_VISIBLE_DEVICES"] = "" if cpu else ",".join(map(str, spec.gpu_indices))
        # setsid -f forks into a new session and returns at once: the engine is then no
        # child of this worker. The shell records its pid, then becomes the engine.
        launcher = ["setsid", "-f", "sh", "-c", 'echo $$ > "$0"; exec "$@"', str(pidfile), *cmd]
        with open(log_path, "ab") as log:
            subprocess.run(  # noqa: S603 - a list built here; no shell parses tenant text
                launcher,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=rundir,
                check=True,
                timeout=30,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not pidfile.exists():
            time.sleep(0.02)
        try:
            pid = int(pidfile.read_text().strip())
        except (FileNotFoundError, ValueError) as exc:
            raise DriverError("the engine process did not start") from exc
        self._write_meta(
            spec.name,
            {"pid": pid, "port": port, "url": url, "cmd": cmd, "requested_at": requested_at},
        )
        return Started(handle=spec.name, url=url)

    def status(self, handle: str) -> RuntimeStatus:
        meta = self._meta(handle)
        if meta is None:
            return RuntimeStatus("missing", "no such runtime on this machine")
        if meta.get("stopped"):
            return RuntimeStatus("exited", "stopped")
        if self._alive(handle, meta):
            return RuntimeStatus("running")
        tail = self.logs(handle, tail=3).strip().splitlines()
        return RuntimeStatus("exited", "process exited" + (f": {tail[-1]}" if tail else ""))

    def stop(self, handle: str) -> None:
        meta = self._meta(handle)
        if meta is None:
            return
        pid = meta.get("pid")
        if pid and self._alive(handle, meta):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _proc_is(pid, handle):
                time.sleep(0.05)
            if _proc_is(pid, handle):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
        meta["stopped"] = True
        if self._dir(handle).exists():
            self._write_meta(handle, meta)

    def list(self) -> list[RuntimeInfo]:
        found = []
        if not self.root.exists():
            return found
        for rundir in self.root.iterdir():
            handle = rundir.name
            if not handle.startswith("gantry-r"):
                continue
            meta = self._meta(handle)
            if self._alive(handle, meta):
                found.append(RuntimeInfo(handle=handle, replica_id=int(handle[len("gantry-r") :])))
        return found

    def logs(self, handle: str, tail: int = 200) -> str:
        path = self._dir(handle) / "log"
        if not path.exists():
            return ""
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read().decode("utf-8", "replace")
        return "\n".join(data.splitlines()[-tail:])
