"""Prometheus metrics for every service: one gRPC interceptor plus listeners for the domain events.

Names follow Prometheus conventions (``hetlora_`` prefix, base units, ``_total`` counters); labels are bounded
sets (service, method, status code, stage, outcome): never device ids. The libraries stay free of
prometheus_client: ``secure_agg`` reports through its ``StageListener`` protocol and the coordinator through
``RoundListener``; both are implemented here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from secure_agg import BucketOutcome, Stage

RPC_REQUESTS = Counter("hetlora_grpc_requests_total", "gRPC calls handled", ["service", "method", "code"])
RPC_SECONDS = Histogram("hetlora_grpc_request_duration_seconds", "gRPC call latency", ["service", "method"])
ROUNDS = Counter("hetlora_rounds_total", "Round attempts by outcome", ["outcome"])
ROUND_SECONDS = Histogram(
    "hetlora_round_duration_seconds", "Planning to commit", buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800)
)
ROUND_DEVICES = Counter("hetlora_round_devices_total", "Devices per round by what happened", ["state"])
GLOBAL_VERSION = Gauge("hetlora_global_version", "Newest committed global adapter version")
RANK_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
PARTICIPANT_RANK = Histogram("hetlora_participant_rank", "LoRA rank of sampled devices", buckets=RANK_BUCKETS)
PRUNED_RANK = Histogram("hetlora_pruned_rank", "LoRA rank after self-pruning, per report", buckets=RANK_BUCKETS)
UPLOAD_BYTES = Counter("hetlora_upload_bytes_total", "Bytes of updates devices declared uploading")
STAGES = Counter("hetlora_secagg_stages_total", "Secure-aggregation stages closed", ["stage"])
STAGE_DROPPED = Counter("hetlora_secagg_dropped_devices_total", "Devices that missed a stage deadline", ["stage"])
SECAGG_ABORTS = Counter("hetlora_secagg_aborts_total", "Secure-aggregation rounds aborted", ["stage"])
BUCKET_COHORT = Histogram(
    "hetlora_secagg_bucket_cohort_devices",
    "Devices inside each rank bucket's sum",
    buckets=(1, 2, 3, 5, 10, 20, 50, 100),
)
BUCKETS_NOT_UNMASKED = Counter("hetlora_secagg_buckets_not_unmasked_total", "Buckets below their cohort threshold")
RECONSTRUCTION_SECONDS = Histogram("hetlora_secagg_reconstruction_seconds", "Shamir + mask removal wall time")


def serve_metrics(port: int, host: str = "127.0.0.1") -> int:
    """Serve ``/metrics`` over HTTP on ``port`` (0 picks one); returns the bound port."""
    server, _ = start_http_server(port, addr=host)
    return int(server.server_port)


class MetricsInterceptor(grpc.ServerInterceptor):
    """Counts every call by method and final status code and times it (streams until their last message)."""

    def __init__(self, service: str) -> None:
        self.service = service

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        method = details.method.rsplit("/", 1)[-1]
        if handler.unary_unary:
            return handler._replace(unary_unary=self._unary(handler.unary_unary, method))
        if handler.stream_unary:
            return handler._replace(stream_unary=self._unary(handler.stream_unary, method))
        if handler.unary_stream:
            return handler._replace(unary_stream=self._streaming(handler.unary_stream, method))
        return handler

    def _record(self, method: str, context: grpc.ServicerContext, started: float, failed: bool) -> None:
        code = context.code() if hasattr(context, "code") else None  # set by abort()/set_code()
        name = code.name if isinstance(code, grpc.StatusCode) else ("UNKNOWN" if failed else "OK")
        RPC_REQUESTS.labels(self.service, method, name).inc()
        RPC_SECONDS.labels(self.service, method).observe(time.perf_counter() - started)

    def _unary(self, behaviour: Callable[..., Any], method: str) -> Callable[..., Any]:
        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            started, failed = time.perf_counter(), True
            try:
                response = behaviour(request, context)
                failed = False
                return response
            finally:
                self._record(method, context, started, failed)

        return wrapped

    def _streaming(self, behaviour: Callable[..., Iterator[Any]], method: str) -> Callable[..., Iterator[Any]]:
        def wrapped(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            started, failed = time.perf_counter(), True
            try:
                yield from behaviour(request, context)
                failed = False
            finally:
                self._record(method, context, started, failed)

        return wrapped


class PrometheusStageListener:
    """``secure_agg.StageListener`` for the aggregator's rounds."""

    def stage_closed(self, stage: Stage, survivors: int, dropped: Sequence[int]) -> None:
        STAGES.labels(str(stage)).inc()
        if dropped:
            STAGE_DROPPED.labels(str(stage)).inc(len(dropped))

    def aborted(self, stage: Stage, reason: str) -> None:
        SECAGG_ABORTS.labels(str(stage)).inc()

    def completed(self, survivors: int, outcomes: Sequence[BucketOutcome], reconstruction_s: float) -> None:
        RECONSTRUCTION_SECONDS.observe(reconstruction_s)
        for outcome in outcomes:
            BUCKET_COHORT.observe(outcome.cohort)
            if str(outcome.status) != "unmasked":
                BUCKETS_NOT_UNMASKED.inc()


class PrometheusRoundListener:
    """The coordinator's round events."""

    def round_started(self, ranks: Sequence[int]) -> None:
        ROUND_DEVICES.labels("selected").inc(len(ranks))
        for rank in ranks:
            PARTICIPANT_RANK.observe(rank)

    def round_finished(
        self,
        committed: bool,
        version: int,
        reported: int,
        dropped: int,
        wall_s: float,
        ranks_after: Sequence[int],
        upload_bytes: int,
    ) -> None:
        ROUNDS.labels("committed" if committed else "failed").inc()
        ROUND_SECONDS.observe(wall_s)
        ROUND_DEVICES.labels("reported").inc(reported)
        ROUND_DEVICES.labels("dropped").inc(dropped)
        GLOBAL_VERSION.set(version)
        for rank in ranks_after:
            PRUNED_RANK.observe(rank)
        UPLOAD_BYTES.inc(upload_bytes)
