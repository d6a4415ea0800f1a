"""`make run` smoke: the embedded default starts, serves, and one Ctrl-C, or one SIGTERM
to make (what docker, systemd or a CI runner send), stops it all, engines included."""

import json
import os
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A free port whose successor (the gateway's) is free too."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except OSError:
        return 0


def ctrl_c(proc) -> None:
    os.killpg(proc.pid, signal.SIGINT)  # the terminal sends it to the whole group


def sigterm_to_make(proc) -> None:
    os.kill(proc.pid, signal.SIGTERM)  # docker stop: to the main process only


def instance_processes_of_this_session() -> set[int]:
    from deployments.drivers.local import instance_processes

    return set(instance_processes(os.environ["GANTRY_INSTANCE"], nested=True))


@pytest.mark.timeout(600)
@pytest.mark.parametrize("stop", [ctrl_c, sigterm_to_make], ids=["ctrl-c", "sigterm"])
def test_make_run_serves_the_portal_and_stops_everything_it_started(tmp_path, stop):
    port = free_port()
    before = instance_processes_of_this_session()
    # The embedded default: no database, broker or secret from the environment.
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in {
            "DATABASE_URL",
            "CELERY_BROKER_URL",
            "SECRET_KEY",
            "DEBUG",
            "CELERY_TASK_DEFAULT_QUEUE",
            "EMAIL_URL",
            "MAKEFLAGS",
            "MAKELEVEL",
        }
    }
    env["VAR_DIR"] = str(tmp_path / "var")
    log_path = tmp_path / "run.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            ["make", "run", f"PORT={port}"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and get(f"http://127.0.0.1:{port}/") != 200:
                assert proc.poll() is None, log_path.read_text()
                time.sleep(0.5)
            assert get(f"http://127.0.0.1:{port}/") == 200, log_path.read_text()
            assert get(f"http://127.0.0.1:{port}/api/schema/") == 200
            assert get(f"http://127.0.0.1:{port}/api/docs/") == 200
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not (
                "worker@" in (text := log_path.read_text())
                and "ready." in text
                and "beat: Starting" in text
            ):
                time.sleep(0.5)
            text = log_path.read_text()
            assert "ready." in text and "beat: Starting" in text, text
            assert f"http://127.0.0.1:{port}/" in text and "demo / gantry-demo" in text
            # The demo model comes up on the local pool, driven by the worker alone.
            db = tmp_path / "var" / "gantry.sqlite3"
            deadline = time.monotonic() + 180
            url = None
            while time.monotonic() < deadline and url is None:
                with sqlite3.connect(db, timeout=10) as conn:
                    row = conn.execute(
                        "select r.url from deployments_replica r join deployments_deployment d"
                        " on d.id = r.deployment_id where d.name = 'tiny-demo'"
                        " and d.status = 'running' and r.status = 'running'"
                    ).fetchone()
                url = row[0] if row else None
                time.sleep(1)
            assert url, log_path.read_text()
            engine_pids = [
                int(p.read_text()) for p in (tmp_path / "var" / "replicas").glob("*/gantry-r*/pid")
            ]
            assert engine_pids
            body = json.dumps(
                {
                    "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 4,
                    "logit_bias": {"2": -100},
                }
            ).encode()
            request = urllib.request.Request(
                f"{url}/v1/chat/completions",
                data=body,
                headers={"Content-Type": "application/json"},
            )
            # Engines answer only the platform: a caller without the replica's key is refused.
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=30)
            assert refused.value.code == 401
            # Through the gateway, with an API key minted by the operator command.
            key = subprocess.run(
                [
                    str(ROOT / ".venv" / "bin" / "python"),
                    "manage.py",
                    "create_api_key",
                    "--org",
                    "demo",
                    "--user",
                    "demo",
                    "--name",
                    "smoke",
                ],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            body = json.dumps(
                {
                    "model": "tiny-demo",
                    "max_tokens": 4,
                    "logit_bias": {"2": -100},
                    "messages": [{"role": "user", "content": "hi"}],
                }
            ).encode()
            request = urllib.request.Request(
                f"http://127.0.0.1:{port + 1}/v1/chat/completions",
                data=body,
                headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
            )
            with urllib.request.urlopen(request, timeout=30) as r:
                assert json.loads(r.read())["usage"]["completion_tokens"] > 0
        finally:
            stop(proc)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                raise
    # Nothing is left behind: no process of the group, nothing on the port, and no
    # process of this run anywhere (engines run in sessions of their own).
    leftover = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", leftover.stdout
    assert get(f"http://127.0.0.1:{port}/") == 0
    assert not [pid for pid in engine_pids if os.path.exists(f"/proc/{pid}")]
    # Grandchildren (gunicorn's and celery's own workers) may take a moment to exit.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not instance_processes_of_this_session() <= before:
        time.sleep(0.2)
    assert instance_processes_of_this_session() <= before
    text = log_path.read_text()
    assert "stopped 1 local replica(s)" in text, text[-3000:]
