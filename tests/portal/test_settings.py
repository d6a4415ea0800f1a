"""Production settings: `check --deploy` passes, and no SECRET_KEY means no start."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def manage(*args, env_extra: dict, tmp_path) -> subprocess.CompletedProcess:
    drop = {"SECRET_KEY", "DEBUG", "DJANGO_ALLOW_ASYNC_UNSAFE"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update({"VAR_DIR": str(tmp_path)}, **env_extra)
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_production_settings_pass_check_deploy(tmp_path):
    result = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        env_extra={
            "DEBUG": "False",
            "SECRET_KEY": "x9" * 30 + "-production-key-with-enough-entropy",
            "ALLOWED_HOSTS": "gantry.example.com",
        },
        tmp_path=tmp_path,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert "no issues" in result.stdout


def test_production_refuses_to_start_without_secret_key(tmp_path):
    result = manage("check", env_extra={"DEBUG": "False"}, tmp_path=tmp_path)
    assert result.returncode != 0
    assert "SECRET_KEY is not set" in result.stderr


def test_env_example_lists_every_variable_the_settings_read():
    import re

    settings_src = (ROOT / "portal" / "settings.py").read_text()
    read = set(re.findall(r'env(?:\.\w+)?\(\s*"([A-Z_]+)"', settings_src))
    listed = set(re.findall(r"^#?\s*([A-Z_]+)=", (ROOT / ".env.example").read_text(), re.M))
    assert read <= listed, f"missing from .env.example: {sorted(read - listed)}"
    readme = (ROOT / "README.md").read_text()
    assert all(f"`{name}`" in readme for name in read), "README table misses a variable"
