"""Prometheus metrics for every service: the domain metrics and the listeners that feed them.

Names follow Prometheus conventions (``hetlora_`` prefix, base units, ``_total`` counters); labels are bounded
sets (service, method, status code, stage, outcome, unit): never device ids. The libraries stay free of
prometheus_client: ``secure_agg`` reports through its ``StageListener`` protocol and the coordinator through
``RoundListener``; both are implemented here. The gRPC interceptor is in ``services.rpc_metrics``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence

from cryptography import x509
from prometheus_client import Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

from secure_agg import BucketOutcome, Stage
from services.orchestrator.listeners import RoundSummary

log = logging.getLogger("hetlora.services")

ROUNDS = Counter("hetlora_rounds_total", "Round attempts by outcome", ["outcome"], registry=None)
ROUND_SECONDS = Histogram(
    "hetlora_round_duration_seconds",
    "Planning to commit",
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800),
    registry=None,
)
ROUND_DEVICES = Counter("hetlora_round_devices_total", "Devices per round by what happened", ["state"], registry=None)
GLOBAL_VERSION = Gauge("hetlora_global_version", "Newest committed global adapter version", registry=None)
ROUND_INDEX = Gauge("hetlora_round_index", "Index of the round running or last run (1-based)", registry=None)
ROUND_IN_PROGRESS = Gauge("hetlora_round_in_progress", "1 while a round is between planning and commit", registry=None)
ROUND_STARTED = Gauge(
    "hetlora_round_started_timestamp_seconds", "Unix time the current or last round started", registry=None
)
LAST_COMMIT = Gauge("hetlora_last_commit_timestamp_seconds", "Unix time of the newest committed version", registry=None)
HELDOUT_LOSS = Gauge(
    "hetlora_heldout_loss_nats", "Held-out token loss of the newest evaluated global version", registry=None
)
HELDOUT_VERSION = Gauge(
    "hetlora_heldout_evaluated_version", "Global version the held-out loss belongs to", registry=None
)
PRIVACY_EPSILON = Gauge(
    "hetlora_privacy_epsilon",
    "ε spent: unit=user for the federation (DP-FedAvg), unit=example for the most any device reported (DP-SGD)",
    ["unit"],
    registry=None,
)
PRIVACY_BUDGET = Gauge("hetlora_privacy_epsilon_budget", "User-level ε the orchestrator stops at", registry=None)
PRIVACY_SIGMA = Gauge(
    "hetlora_privacy_effective_noise_multiplier",
    "Noise multiplier the newest round's released sums carried (after dropouts, in distributed mode)",
    registry=None,
)
CERT_EXPIRY = Gauge(
    "hetlora_certificate_expiry_timestamp_seconds", "Unix time the service's TLS certificate expires", ["service"]
)
RANK_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
PARTICIPANT_RANK = Histogram(
    "hetlora_participant_rank", "LoRA rank of sampled devices", buckets=RANK_BUCKETS, registry=None
)
PRUNED_RANK = Histogram(
    "hetlora_pruned_rank", "LoRA rank after self-pruning, per report", buckets=RANK_BUCKETS, registry=None
)
UPLOAD_BYTES = Counter("hetlora_upload_bytes_total", "Bytes of updates devices declared uploading", registry=None)
DOWNLOAD_BYTES = Counter(
    "hetlora_download_bytes_total", "Bytes of global factors streamed to devices in tasks", registry=None
)
REPORTS_REFUSED = Counter(
    "hetlora_reports_refused_total",
    "Training reports refused because an honest device could not have sent them, by field",
    ["field"],
    registry=None,
)
DEVICES_UNAVAILABLE = Counter(
    "hetlora_devices_unavailable_total",
    "Devices turned away or reporting they cannot train, by reason (base_model, bad_data)",
    ["reason"],
    registry=None,
)
STAGES = Counter("hetlora_secagg_stages_total", "Secure-aggregation stages closed", ["stage"], registry=None)
STAGE_DROPPED = Counter(
    "hetlora_secagg_dropped_devices_total", "Devices that missed a stage deadline", ["stage"], registry=None
)
SECAGG_ABORTS = Counter("hetlora_secagg_aborts_total", "Secure-aggregation rounds aborted", ["stage"], registry=None)
BUCKET_COHORT = Histogram(
    "hetlora_secagg_bucket_cohort_devices",
    "Devices inside each rank bucket's sum",
    buckets=(1, 2, 3, 5, 10, 20, 50, 100),
    registry=None,
)
BUCKETS_NOT_UNMASKED = Counter(
    "hetlora_secagg_buckets_not_unmasked_total", "Buckets below their cohort threshold", registry=None
)
RECONSTRUCTION_SECONDS = Histogram(
    "hetlora_secagg_reconstruction_seconds", "Shamir + mask removal wall time", registry=None
)
SECAGG_STAGE = Gauge(
    "hetlora_secagg_stage",
    "Stages the newest secure round has closed: 0 idle, 1-4 in progress, 5 unmasked",
    registry=None,
)
STAGE_ORDER = {s: i + 1 for i, s in enumerate(list(Stage)[:5])}
# Domain metrics are exported only by the service that owns them (an aggregator reporting a global version of 0
# would mislead); the gRPC, certificate and process metrics are everyone's.
OWNED: dict[str, tuple[Collector, ...]] = {
    "orchestrator": (
        PRIVACY_EPSILON,
        PRIVACY_BUDGET,
        PRIVACY_SIGMA,
        ROUNDS,
        ROUND_SECONDS,
        ROUND_DEVICES,
        GLOBAL_VERSION,
        ROUND_INDEX,
        ROUND_IN_PROGRESS,
        ROUND_STARTED,
        LAST_COMMIT,
        HELDOUT_LOSS,
        HELDOUT_VERSION,
        PARTICIPANT_RANK,
        PRUNED_RANK,
        UPLOAD_BYTES,
        DOWNLOAD_BYTES,
        DEVICES_UNAVAILABLE,
        REPORTS_REFUSED,
    ),
    "aggregator": (
        STAGES,
        STAGE_DROPPED,
        SECAGG_ABORTS,
        BUCKET_COHORT,
        BUCKETS_NOT_UNMASKED,
        RECONSTRUCTION_SECONDS,
        SECAGG_STAGE,
    ),
}
_exported: set[str] = set()


def export_service_metrics(service: str) -> None:
    """Register ``service``'s own metrics for scraping (idempotent: tests run several services in one process)."""
    if service in _exported:
        return
    for metric in OWNED.get(service, ()):
        REGISTRY.register(metric)
    _exported.add(service)


def serve_metrics(port: int, host: str = "127.0.0.1") -> int:
    """Serve ``/metrics`` over HTTP on ``port`` (0 picks one); returns the bound port."""
    server, _ = start_http_server(port, addr=host)
    return int(server.server_port)


def record_certificate(service: str, cert_pem: bytes) -> None:
    """Export when ``service``'s own certificate expires, for the near-expiry alert."""
    expiry = x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc
    CERT_EXPIRY.labels(service).set(expiry.timestamp())


class RegistryCollector(Collector):
    """``hetlora_enrolled_devices{state}`` read from the registry at scrape time (always current, no bookkeeping).

    One per process, registered at import; the enrollment server points it at its registry. Tests start several
    servers in one process, and a second collector of the same name would be refused by prometheus_client.
    """

    def __init__(self) -> None:
        self.count_devices: Callable[[], dict[str, int]] | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("hetlora_enrolled_devices", "Enrolled devices by state", labels=["state"])
        try:
            counts = self.count_devices() if self.count_devices is not None else {}
        except Exception:  # a registry mid-shutdown must not take the whole /metrics page down with it
            log.exception("counting enrolled devices for /metrics failed")
            counts = {}
        for state, n in sorted(counts.items()):
            family.add_metric([state], n)
        yield family


ENROLLED_DEVICES = RegistryCollector()
OWNED["enrollment"] = (ENROLLED_DEVICES,)


def watch_registry(count_devices: Callable[[], dict[str, int]] | None) -> None:
    """Count devices with ``count_devices`` at every scrape (None when the registry closes)."""
    export_service_metrics("enrollment")
    ENROLLED_DEVICES.count_devices = count_devices


class PrometheusStageListener:
    """``secure_agg.StageListener`` for the aggregator's rounds."""

    def __init__(self) -> None:
        export_service_metrics("aggregator")

    def stage_closed(self, stage: Stage, survivors: int, dropped: Sequence[int]) -> None:
        STAGES.labels(str(stage)).inc()
        SECAGG_STAGE.set(STAGE_ORDER.get(stage, 0))
        if dropped:
            STAGE_DROPPED.labels(str(stage)).inc(len(dropped))

    def aborted(self, stage: Stage, reason: str) -> None:
        SECAGG_ABORTS.labels(str(stage)).inc()
        SECAGG_STAGE.set(0)

    def completed(self, survivors: int, outcomes: Sequence[BucketOutcome], reconstruction_s: float) -> None:
        RECONSTRUCTION_SECONDS.observe(reconstruction_s)
        SECAGG_STAGE.set(len(STAGE_ORDER))
        for outcome in outcomes:
            BUCKET_COHORT.observe(outcome.cohort)
            if str(outcome.status) != "unmasked":
                BUCKETS_NOT_UNMASKED.inc()


class PrometheusRoundListener:
    """The coordinator's round events."""

    def __init__(self) -> None:
        export_service_metrics("orchestrator")

    def round_started(self, index: int, ranks: Sequence[int]) -> None:
        ROUND_INDEX.set(index)
        ROUND_IN_PROGRESS.set(1)
        ROUND_STARTED.set_to_current_time()
        ROUND_DEVICES.labels("selected").inc(len(ranks))
        for rank in ranks:
            PARTICIPANT_RANK.observe(rank)

    def round_finished(self, summary: RoundSummary) -> None:
        ROUNDS.labels("committed" if summary.committed else "rejected" if summary.rejected else "failed").inc()
        for field_name, count in summary.refused_reports:
            REPORTS_REFUSED.labels(field_name).inc(count)
        ROUND_IN_PROGRESS.set(0)
        if summary.committed:
            LAST_COMMIT.set_to_current_time()
        ROUND_SECONDS.observe(summary.wall_s)
        ROUND_DEVICES.labels("reported").inc(summary.reported)
        ROUND_DEVICES.labels("dropped").inc(summary.dropped)
        GLOBAL_VERSION.set(summary.version)
        for rank in summary.ranks_after:
            PRUNED_RANK.observe(rank)
        UPLOAD_BYTES.inc(summary.upload_bytes)
        user = summary.privacy.get("privacy")
        if user:
            PRIVACY_EPSILON.labels("user").set(user["epsilon"])
            PRIVACY_SIGMA.set(user["effective_noise_multiplier"])
        example = summary.privacy.get("example_privacy")
        if example:
            PRIVACY_EPSILON.labels("example").set(max(e["epsilon"] for e in example.values()))

    def privacy_configured(self, budget: float, spent: float) -> None:
        """At start (and after a restart): the user-level budget and what the restored ledger has spent."""
        PRIVACY_BUDGET.set(budget)
        PRIVACY_EPSILON.labels("user").set(spent)

    def version_evaluated(self, version: int, loss: float) -> None:
        HELDOUT_LOSS.set(loss)
        HELDOUT_VERSION.set(version)
