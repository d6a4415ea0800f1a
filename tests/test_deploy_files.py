"""The monitoring files under deploy/ parse, and name only metrics the gateway exposes.
Where promtool is on the PATH (Debian's `prometheus` package), it checks the rules too."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from gateway.metrics import Metrics

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "gantry.json"
NAME = re.compile(r"\b(gantry_[a-z_]+)")


def exposed() -> set[str]:
    """Every series name the gateway's registry can produce (histograms: their parts)."""
    names = set()
    for family in Metrics().registry.collect():
        names.add(family.name)
        for suffix in ("_total", "_bucket", "_count", "_sum", "_created"):
            names.add(family.name + suffix)
    return names


def test_alert_rules_parse_and_cover_what_operators_need():
    rules = yaml.safe_load(RULES.read_text())
    alerts = {r["alert"]: r for group in rules["groups"] for r in group["rules"]}
    assert {"GantryReplicaDown", "GantryTTFTSLOBurn", "GantrySpendNearLimit"} <= set(alerts)
    for name, rule in alerts.items():
        assert rule["expr"].strip(), name
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"], name
    known = exposed()
    used = {n for r in alerts.values() for n in NAME.findall(r["expr"])}
    assert used and used <= known, used - known


def test_the_dashboard_is_grafana_json_over_the_gateways_metrics():
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] == "gantry-gateway" and board["panels"]
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    used = {n for e in exprs for n in NAME.findall(e)}
    known = exposed()
    assert used <= known, used - known
    titles = " ".join(p["title"] for p in board["panels"])
    for wanted in ("Time to first token", "Inter-token", "per replica", "Spend"):
        assert wanted in titles


def test_promtool_accepts_the_rules_where_it_is_installed():
    promtool = shutil.which("promtool")
    if promtool is None:
        return  # the Python checks above still ran
    result = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
