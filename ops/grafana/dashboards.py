"""Grafana dashboards as code: ``python ops/grafana/dashboards.py`` writes ``dashboards/*.json``.

The JSON is checked in (Grafana provisioning loads it as is) and ``--check`` fails when it differs from what
this file generates, so a dashboard is only ever edited here. Every panel's PromQL is evaluated against a
real Prometheus scraping a real round in ``tests/services/test_prometheus_dashboards.py``.

Two dashboards: *hetlora / rounds* (what a round is doing: stages, devices, loss, ranks, bytes, errors) and
*hetlora / service* (one service's health: up, requests, latency, CPU, memory, certificate).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grafanalib._gen import DashboardEncoder
from grafanalib.core import (
    BarGauge,
    Dashboard,
    GridPos,
    Panel,
    RowPanel,
    Stat,
    Target,
    Template,
    Templating,
    Time,
    TimeSeries,
)

DATASOURCE = {"type": "prometheus", "uid": "hetlora-prometheus"}  # provisioning/datasources/prometheus.yml
OUT = Path(__file__).resolve().parent / "dashboards"
WIDTH = 24


class Layout:
    """Places panels left to right in rows of 24 columns (Grafana's grid), so sizes are all that is written."""

    def __init__(self) -> None:
        self.x, self.y, self.row_height = 0, 0, 0

    def row(self, title: str) -> RowPanel:
        self._newline()
        panel = RowPanel(title=title, gridPos=GridPos(h=1, w=WIDTH, x=0, y=self.y))
        self.y += 1
        return panel

    def place(self, panel: Panel, w: int, h: int = 8) -> Panel:
        if self.x + w > WIDTH:
            self._newline()
        panel.gridPos = GridPos(h=h, w=w, x=self.x, y=self.y)
        self.x += w
        self.row_height = max(self.row_height, h)
        return panel

    def _newline(self) -> None:
        self.y += self.row_height
        self.x, self.row_height = 0, 0


def q(expr: str, legend: str = "", ref: str = "A", instant: bool = False) -> Target:
    return Target(expr=expr, legendFormat=legend, refId=ref, instant=instant, datasource=DATASOURCE)


def series(title: str, description: str, targets: list[Target], unit: str = "", stack: bool = False) -> TimeSeries:
    return TimeSeries(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=targets,
        unit=unit,
        stacking={"mode": "normal"} if stack else {"mode": "none"},
        fillOpacity=20 if stack else 0,
    )


def stat(title: str, description: str, target: Target, unit: str = "none", decimals: int | None = None) -> Stat:
    return Stat(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=[target],
        format=unit,
        decimals=decimals,
        reduceCalc="lastNotNull",
        graphMode="none",
    )


def rank_histogram(title: str, description: str, metric: str) -> BarGauge:
    return BarGauge(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=[
            q(f"sum by (le) (increase({metric}_bucket[$__range]))", "rank ≤ {{le}}", instant=True),
        ],
        calc="lastNotNull",
        displayMode="gradient",
        orientation="vertical",
        max=None,
        format="short",
    )


def rounds_dashboard() -> Dashboard:
    lay = Layout()
    panels: list[Panel] = [
        lay.row("Now"),
        lay.place(stat("Committed version", "Newest committed global adapter", q("max(hetlora_global_version)")), 4, 4),
        lay.place(stat("Round", "Index of the round running or last run", q("max(hetlora_round_index)")), 4, 4),
        lay.place(
            stat(
                "Secure-aggregation stage",
                "Stages the newest secure round has closed: 0 idle, 1 keys advertised, 2 keys shared, "
                "3 masked inputs in, 4 consistency checked, 5 unmasked",
                q("max(hetlora_secagg_stage)"),
            ),
            4,
            4,
        ),
        lay.place(
            stat(
                "Held-out loss",
                "Of the newest scored global version (orchestrator --eval-corpus)",
                q("max(hetlora_heldout_loss_nats)"),
                decimals=4,
            ),
            4,
            4,
        ),
        lay.place(
            stat(
                "Enrolled devices",
                "Active device certificates in the registry",
                q('sum(hetlora_enrolled_devices{state="active"})'),
            ),
            4,
            4,
        ),
        lay.place(
            stat(
                "Since last commit",
                "Time since the newest version was committed",
                q("time() - max(hetlora_last_commit_timestamp_seconds)"),
                unit="s",
            ),
            4,
            4,
        ),
        lay.row("Progress"),
        lay.place(
            series(
                "Stages closed",
                "Secure-aggregation stages closed, by stage: a round walks advertise → share → masked input → "
                "consistency → unmask",
                [q("sum by (stage) (increase(hetlora_secagg_stages_total[$__rate_interval]))", "{{stage}}")],
                stack=True,
            ),
            12,
        ),
        lay.place(
            series(
                "Rounds",
                "Round attempts by outcome; a failed attempt keeps the committed version and is retried",
                [q("sum by (outcome) (increase(hetlora_rounds_total[$__rate_interval]))", "{{outcome}}")],
                stack=True,
            ),
            12,
        ),
        lay.place(
            series(
                "Devices by state",
                "Selected into a cohort, reported after training, dropped (missed a deadline); enrolled by state",
                [
                    q("sum by (state) (increase(hetlora_round_devices_total[$__rate_interval]))", "round: {{state}}"),
                    q("sum by (state) (hetlora_enrolled_devices)", "registry: {{state}}", ref="B"),
                ],
            ),
            12,
        ),
        lay.place(
            series(
                "Dropped devices by stage",
                "Devices that missed a secure-aggregation stage deadline",
                [
                    q(
                        "sum by (stage) (increase(hetlora_secagg_dropped_devices_total[$__rate_interval])) "
                        "or vector(0)",
                        "{{stage}}",
                    )
                ],
            ),
            12,
        ),
        lay.row("Model"),
        lay.place(
            series(
                "Held-out loss per version",
                "Held-out token loss of each committed version (left) and the version it belongs to (right)",
                [
                    q("max(hetlora_heldout_loss_nats)", "held-out loss"),
                    q("max(hetlora_heldout_evaluated_version)", "version", ref="B"),
                ],
            ),
            12,
        ),
        lay.place(
            series(
                "Round duration",
                "Planning to commit, median and 95th percentile",
                [
                    q(
                        "histogram_quantile(0.5, sum by (le) (rate(hetlora_round_duration_seconds_bucket[$__range])))",
                        "p50",
                    ),
                    q(
                        "histogram_quantile(0.95, sum by (le) (rate(hetlora_round_duration_seconds_bucket[$__range])))",
                        "p95",
                        ref="B",
                    ),
                ],
                unit="s",
            ),
            12,
        ),
        lay.place(
            rank_histogram(
                "Ranks of participating devices", "LoRA rank each sampled device trained at", "hetlora_participant_rank"
            ),
            8,
        ),
        lay.place(
            rank_histogram("Ranks after self-pruning", "Rank each device kept after training", "hetlora_pruned_rank"),
            8,
        ),
        lay.place(
            rank_histogram(
                "Rank-bucket cohort sizes",
                "Devices inside each bucket's secure sum; below the threshold a bucket is withheld",
                "hetlora_secagg_bucket_cohort_devices",
            ),
            8,
        ),
        lay.row("Privacy"),
        lay.place(
            series(
                "ε spent (user-level)",
                "DP-FedAvg: what the global model reveals about one device's whole participation, against the "
                "budget at which the orchestrator stops (δ and accountant in each version's record)",
                [
                    q('max(hetlora_privacy_epsilon{unit="user"})', "spent"),
                    q("max(hetlora_privacy_epsilon_budget)", "budget", ref="B"),
                ],
            ),
            8,
        ),
        lay.place(
            series(
                "ε spent (example-level, worst device)",
                "DP-SGD on the devices: the largest ε any device reported (a different claim from user-level)",
                [q('max(hetlora_privacy_epsilon{unit="example"})', "max over devices")],
            ),
            8,
        ),
        lay.place(
            series(
                "Noise multiplier carried",
                "σ the released sums actually carried: distributed noise shrinks when devices drop out",
                [q("max(hetlora_privacy_effective_noise_multiplier)", "σ effective")],
            ),
            8,
        ),
        lay.row("Traffic and errors"),
        lay.place(
            series(
                "Bytes",
                "Updates uploaded (masked) and global factors sent to devices",
                [
                    q("sum(rate(hetlora_upload_bytes_total[$__rate_interval]))", "up"),
                    q("sum(rate(hetlora_download_bytes_total[$__rate_interval]))", "down", ref="B"),
                ],
                unit="Bps",
            ),
            8,
        ),
        lay.place(
            series(
                "Buckets withheld",
                "Rank buckets below their cohort threshold (not unmasked: the privacy guarantee at work)",
                [q("sum(increase(hetlora_secagg_buckets_not_unmasked_total[$__rate_interval]))", "withheld")],
            ),
            8,
        ),
        lay.place(
            series(
                "Errors by code",
                "gRPC calls that did not end OK, by status code (DEADLINE_EXCEEDED on check-in means 'no task yet')",
                [
                    q(
                        'sum by (code) (rate(hetlora_grpc_requests_total{code!="OK"}[$__rate_interval])) or vector(0)',
                        "{{code}}",
                    )
                ],
                unit="reqps",
            ),
            8,
        ),
    ]
    return Dashboard(
        title="hetlora / rounds",
        uid="hetlora-rounds",
        description="Federated rounds: progress through the stages, devices, held-out loss, ranks, bytes, errors",
        tags=["hetlora"],
        panels=panels,
        refresh="10s",
        time=Time("now-1h", "now"),
        schemaVersion=39,
    )


def service_dashboard() -> Dashboard:
    lay = Layout()
    sel = 'job="hetlora", component="$component"'
    panels: list[Panel] = [
        lay.row("Health"),
        lay.place(stat("Up", "1 when Prometheus can scrape the service", q(f"max(up{{{sel}}})")), 6, 4),
        lay.place(
            stat(
                "Certificate expires in",
                "Time left on the service's TLS certificate",
                q(f"min(hetlora_certificate_expiry_timestamp_seconds{{{sel}}}) - time()"),
                unit="s",
            ),
            6,
            4,
        ),
        lay.place(stat("Resident memory", "", q(f"max(process_resident_memory_bytes{{{sel}}})"), unit="bytes"), 6, 4),
        lay.place(stat("Open files", "", q(f"max(process_open_fds{{{sel}}})")), 6, 4),
        lay.row("gRPC"),
        lay.place(
            series(
                "Requests by method and code",
                "",
                [
                    q(
                        f"sum by (method, code) (rate(hetlora_grpc_requests_total{{{sel}}}[$__rate_interval]))",
                        "{{method}} {{code}}",
                    )
                ],
                unit="reqps",
            ),
            12,
        ),
        lay.place(
            series(
                "Latency p95 by method",
                "Streams count until their last message; long polls (GetTask, AwaitStage) wait by design",
                [
                    q(
                        "histogram_quantile(0.95, sum by (method, le) "
                        f"(rate(hetlora_grpc_request_duration_seconds_bucket{{{sel}}}[$__rate_interval])))",
                        "{{method}}",
                    )
                ],
                unit="s",
            ),
            12,
        ),
        lay.row("Process"),
        lay.place(
            series("CPU", "Cores used", [q(f"sum(rate(process_cpu_seconds_total{{{sel}}}[$__rate_interval]))", "cpu")]),
            12,
        ),
        lay.place(
            series("Memory", "", [q(f"sum(process_resident_memory_bytes{{{sel}}})", "resident")], unit="bytes"),
            12,
        ),
    ]
    component = Template(
        name="component",
        label="Service",
        query='label_values(up{job="hetlora"}, component)',
        dataSource=DATASOURCE,
        default="orchestrator",
    )
    return Dashboard(
        title="hetlora / service",
        uid="hetlora-service",
        description="One hetlora service: scrape health, gRPC requests and latency, CPU, memory, certificate",
        tags=["hetlora"],
        panels=panels,
        templating=Templating(list=[component]),
        refresh="10s",
        time=Time("now-1h", "now"),
        schemaVersion=39,
    )


def render() -> dict[str, str]:
    """File name → JSON text, deterministic (sorted keys) so the drift check is a plain comparison."""
    dashboards = {
        "rounds.json": rounds_dashboard().auto_panel_ids(),
        "service.json": service_dashboard().auto_panel_ids(),
    }
    return {
        name: json.dumps(d.to_json_data(), cls=DashboardEncoder, indent=2, sort_keys=True) + "\n"
        for name, d in dashboards.items()
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="fail if dashboards/ differs from what this file generates")
    args = p.parse_args()
    stale = []
    for name, text in render().items():
        path = OUT / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"dashboards out of date: {', '.join(stale)}; run 'make dashboards' and commit", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
