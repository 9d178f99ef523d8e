"""A real Prometheus scrapes real service processes through a round; every dashboard panel and alert rule works.

The three services run as ``hetlora serve`` processes on loopback port 0 with ``--metrics-port 0``; devices
enroll through the enrollment service and train as in-process agents (tiny model). Prometheus (Debian's
package) runs with the shipped ``ops/prometheus`` config and rules, scrape interval lowered to 1 s. Then every
PromQL expression in ``ops/grafana/dashboards/*.json`` goes through Prometheus' HTTP API and must return data,
and every alert rule must be loaded and evaluated without error.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from services.api.hetlora.v1 import enrollment_pb2 as epb
from services.api.hetlora.v1 import enrollment_pb2_grpc as erpc
from services.pki import new_key_and_csr
from services.transport import channel
from tests.services.device_threads import start_devices
from tests.services.processes import ServiceProcess, start_service
from tests.system_tools import require_tool

pytestmark = pytest.mark.timeout(300)
ROOT = Path(__file__).resolve().parents[2]
DEVICES = {"p-a": 1504, "p-b": 2000, "p-c": 1512}  # device id -> memory MB: different profiles, different ranks
RANGE = {"$__rate_interval": "30s", "$__range": "10m"}  # what Grafana would substitute


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prometheus:
    def __init__(self, binary: str, config_dir: Path, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(config_dir / "prometheus.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config_dir / 'prometheus.yml'}", f"--storage.tsdb.path={config_dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def get(self, path: str, **params: str) -> dict:
        url = f"{self.url}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.loads(r.read())

    def query(self, expr: str) -> list:
        body = self.get("/api/v1/query", query=expr)
        assert body["status"] == "success", f"{expr}: {body}"
        return body["data"]["result"]

    def wait_until(self, what: str, check, timeout_s: float):
        """Poll (bounded) until ``check()`` is truthy: Prometheus only learns by scraping, there is no event."""
        end = time.monotonic() + timeout_s
        while True:
            try:
                value = check()
            except OSError:  # not listening yet
                value = None
            if value:
                return value
            if self.proc.poll() is not None or time.monotonic() > end:
                log = Path(self.log.name).read_text()[-3000:]
                raise AssertionError(f"Prometheus: {what} not within {timeout_s} s\n{log}")
            with contextlib.suppress(subprocess.TimeoutExpired):  # the poll interval, cut short if Prometheus dies
                self.proc.wait(timeout=0.25)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def prometheus_config(tmp: Path, targets: dict[str, str], self_port: int) -> Path:
    """The shipped config and rules, with 1 s intervals and this test's ports in the file-discovery targets."""
    conf = tmp / "prometheus"
    (conf / "targets").mkdir(parents=True)
    shutil.copy(ROOT / "ops/prometheus/alerts.yml", conf / "alerts.yml")
    config = yaml.safe_load((ROOT / "ops/prometheus/prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    for job in config["scrape_configs"]:
        if job["job_name"] == "prometheus":
            job["static_configs"] = [{"targets": [f"127.0.0.1:{self_port}"]}]
    (conf / "prometheus.yml").write_text(yaml.safe_dump(config))
    groups = [{"targets": [address], "labels": {"component": c}} for c, address in targets.items()]
    (conf / "targets" / "hetlora.json").write_text(json.dumps(groups))
    return conf


def panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, PromQL) for every target of every panel."""
    found = []
    for path in sorted((ROOT / "ops/grafana/dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            found += [(path.name, panel["title"], t["expr"]) for t in panel.get("targets", []) if t.get("expr")]
    return found


def enroll(enroll_port: int, admin_port: int, pki: Path) -> dict[str, tuple[bytes, bytes]]:
    """Invite and enroll every device through the real enrollment service (admin mTLS, enroll TLS)."""
    ca = (pki / "ca.crt").read_bytes()
    admin_channel = channel(
        f"127.0.0.1:{admin_port}", ca, (pki / "admin.crt").read_bytes(), (pki / "admin.key").read_bytes()
    )
    admin = erpc.DeviceAdminServiceStub(admin_channel)
    enroll_stub = erpc.EnrollmentServiceStub(channel(f"127.0.0.1:{enroll_port}", ca))
    creds = {}
    for name, memory in DEVICES.items():
        token = admin.IssueToken(epb.IssueTokenRequest(device_id=name), timeout=10).token
        key, csr = new_key_and_csr()
        profile = epb.DeviceProfile(memory_mb=memory, gflops=400)
        reply = enroll_stub.Enroll(epb.EnrollRequest(token=token, csr_pem=csr, profile=profile), timeout=10)
        creds[name] = (reply.certificate_pem, key)
    return creds


def test_prometheus_scrapes_a_round_and_every_panel_and_alert_rule_has_data(
    pki: Path, tmp_path: Path, tokenizer, tiny_model_factory
) -> None:
    binary = require_tool("prometheus")
    db, store = tmp_path / "registry.db", tmp_path / "store"
    services: list[ServiceProcess] = []
    prometheus = None
    try:
        services.append(start_service(["serve", "enrollment", "--pki", str(pki), "--db", str(db), "--port", "0",
                                       "--admin-port", "0", "--r-max", "8", "--metrics-port", "0"]))  # fmt: skip
        services.append(start_service(["serve", "aggregator", "--pki", str(pki), "--port", "0", "--metrics-port", "0"]))
        enrollment, aggregator = services
        creds = enroll(int(enrollment.ready["enroll_port"]), int(enrollment.ready["admin_port"]), pki)
        services.append(start_service([
            "serve", "orchestrator", "--pki", str(pki), "--registry", str(db), "--store", str(store),
            "--aggregator", f"127.0.0.1:{aggregator.ready['port']}", "--port", "0", "--model", "tiny",
            "--strategy", "hetlora-rebase", "--r-max", "8", "--rounds", "2", "--per-round", "3", "--overselect", "1",
            "--local-steps", "2", "--batch-size", "2", "--stage-timeout", "20", "--round-deadline", "120",
            "--eval-corpus", "chitchat", "--eval-clients", "2", "--eval-blocks", "1", "--eval-seq-len", "32",
            "--metrics-port", "0", "--dp-example-noise", "0.8", "--dp-user-noise", "1.0", "--dp-user-clip", "0.5",
            "--dp-user-budget", "50",
        ]))  # fmt: skip
        orchestrator = services[2]
        targets = {
            name: f"127.0.0.1:{proc.ready['metrics_port']}"
            for name, proc in zip(("enrollment", "aggregator", "orchestrator"), services, strict=True)
        }
        port = free_port()
        prometheus = Prometheus(binary, prometheus_config(tmp_path, targets, port), port)
        prometheus.wait_until("all three services up", lambda: prometheus.query('sum(up{job="hetlora"})') and float(
            prometheus.query('sum(up{job="hetlora"})')[0]["value"][1]) == 3, 60)  # fmt: skip

        devices = start_devices(f"127.0.0.1:{orchestrator.ready['port']}", pki, creds, tokenizer, tiny_model_factory)
        try:
            orchestrator.wait_for("DONE", timeout=180)
        finally:
            devices.finish()
        assert not devices.failures, devices.failures
        prometheus.wait_until("version 2 scraped", lambda: prometheus.query("hetlora_global_version >= 2"), 30)
        prometheus.wait_until(
            "version 2 scored", lambda: prometheus.query("hetlora_heldout_evaluated_version >= 2"), 60
        )

        promtool = require_tool("promtool")  # naming and unit conventions of every exported family, as scraped
        for name, address in targets.items():
            with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as r:
                exposition = r.read()
            lint = subprocess.run([promtool, "check", "metrics"], input=exposition, capture_output=True, timeout=60)
            assert lint.returncode == 0 and not lint.stdout.strip(), f"{name}: {lint.stdout!r} {lint.stderr!r}"

        empty = []
        for dashboard, title, expr in panel_queries():
            components = ("enrollment", "aggregator", "orchestrator") if "$component" in expr else ("",)
            for component in components:
                concrete = expr.replace("$component", component)
                for var, value in RANGE.items():
                    concrete = concrete.replace(var, value)
                assert not re.search(r"\$\w", concrete), f"unsubstituted variable in {concrete}"
                if not prometheus.query(concrete):
                    empty.append(f"{dashboard} / {title}{f' ({component})' if component else ''}: {concrete}")
        assert not empty, "panels without data:\n" + "\n".join(empty)

        def rules_evaluated() -> list | None:
            rules = [r for g in prometheus.get("/api/v1/rules")["data"]["groups"] for r in g["rules"]]
            return rules if rules and all(not r["lastEvaluation"].startswith("0001") for r in rules) else None

        rules = prometheus.wait_until("every rule evaluated", rules_evaluated, 30)
        shipped = yaml.safe_load((ROOT / "ops/prometheus/alerts.yml").read_text())
        assert {r["name"] for r in rules} == {r["alert"] for g in shipped["groups"] for r in g["rules"]}
        assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
        # a healthy round: nothing is down and no round is stalled
        firing = {a["labels"]["alertname"] for a in prometheus.get("/api/v1/alerts")["data"]["alerts"]}
        assert not firing & {"HetloraServiceDown", "HetloraRoundStalled", "HetloraCertificateExpiresSoon"}
    finally:
        if prometheus is not None:
            prometheus.stop()
        for proc in reversed(services):
            proc.stop()
