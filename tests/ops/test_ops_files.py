"""The operator files in ops/ are valid as their own tools see them: promtool, docker-compose, kubectl + schemas.

Each check runs the real tool (Debian's prometheus, docker-compose and kubectl, installed by `make install`); the
Grafana dashboards must be exactly what ops/grafana/dashboards.py generates.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.system_tools import require_tool

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"


def run(*argv: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=120, cwd=ROOT, env={**os.environ, **(env or {})}
    )
    assert done.returncode == 0, f"{' '.join(argv)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def test_prometheus_configs_and_rules_pass_promtool() -> None:
    promtool = require_tool("promtool")
    for config in ("prometheus.yml", "prometheus-cluster.yml"):
        run(promtool, "check", "config", str(OPS / "prometheus" / config))
    said = run(promtool, "check", "rules", str(OPS / "prometheus/alerts.yml"))
    assert "SUCCESS: 9 rules found" in said


def test_alert_rules_unit_tests_pass() -> None:
    said = run(require_tool("promtool"), "test", "rules", str(OPS / "prometheus/alerts_test.yml"))
    assert "SUCCESS" in said


def test_every_alert_has_a_unit_test_and_actionable_annotations() -> None:
    rules = yaml.safe_load((OPS / "prometheus/alerts.yml").read_text())["groups"][0]["rules"]
    tested = (OPS / "prometheus/alerts_test.yml").read_text()
    for rule in rules:
        assert f"alertname: {rule['alert']}" in tested, f"{rule['alert']} has no promtool test"
        assert rule["annotations"]["summary"] and len(rule["annotations"]["description"]) > 80
        assert rule["labels"]["severity"] in ("info", "warning", "critical")


def test_dashboards_match_their_generator() -> None:
    run(sys.executable, str(OPS / "grafana/dashboards.py"), "--check")


def test_dashboards_query_the_provisioned_datasource_and_have_unique_panel_ids() -> None:
    import json

    provisioned = yaml.safe_load((OPS / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = provisioned["datasources"][0]["uid"]
    for path in (OPS / "grafana/dashboards").glob("*.json"):
        panels = json.loads(path.read_text())["panels"]
        ids = [p["id"] for p in panels]
        assert len(ids) == len(set(ids)) and None not in ids, path.name
        for panel in panels:
            for target in panel.get("targets", []):
                assert target["datasource"]["uid"] == uid, f"{path.name}/{panel['title']}"


def test_compose_file_is_valid(tmp_path: Path) -> None:
    said = run(
        require_tool("docker-compose"),
        "-f",
        str(OPS / "deploy/compose.yaml"),
        "config",
        env={"HETLORA_PKI": str(tmp_path)},
    )
    config = yaml.safe_load(said)
    assert set(config["services"]) == {"enrollment", "aggregator", "orchestrator", "prometheus", "grafana"}
    # only enrollment signs certificates, so only it gets the CA key
    assert [s for s, c in config["services"].items() if "ca.key" in str(c.get("secrets"))] == ["enrollment"]


def test_kubernetes_manifests_validate_against_the_schemas() -> None:
    validate = require_tool("kubernetes-validate")
    run(validate, "--strict", "--quiet", *map(str, sorted((OPS / "k8s").glob("*.yaml"))))


def test_kustomize_renders_everything_into_one_validated_bundle(tmp_path: Path) -> None:
    kubectl = require_tool("kubectl")
    rendered = run(kubectl, "kustomize", str(OPS))
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    kinds = sorted(
        f"{d['kind']}/{d['metadata']['name'].rsplit('-', 1)[0] if d['kind'] == 'ConfigMap' else d['metadata']['name']}"
        for d in docs
    )
    expected = ["StatefulSet/control", "Deployment/aggregator", "Deployment/prometheus", "Deployment/grafana"]
    expected += ["ConfigMap/prometheus-config", "ConfigMap/grafana-dashboards", "Service/orchestrator"]
    for kind in expected:
        assert kind in kinds, kinds
    assert all(d["metadata"].get("namespace") == "hetlora" for d in docs if d["kind"] != "Namespace")
    bundle = tmp_path / "hetlora.yaml"
    bundle.write_text(rendered)
    run(require_tool("kubernetes-validate"), "--strict", "--quiet", str(bundle))
