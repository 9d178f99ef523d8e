"""The aggregator process: one mTLS port for the orchestrator's round calls and the devices' stage calls."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import grpc

from services.aggregator.handler import AggregatorHandler
from services.aggregator.servicer import AggregatorServicer
from services.api.hetlora.v1 import aggregator_pb2 as pb
from services.metrics import PrometheusStageListener, record_certificate
from services.transport import MAX_MESSAGE_BYTES, TlsFiles, add_servicer, bind, new_server

log = logging.getLogger("hetlora.aggregator")
MAX_UPLOAD_BYTES = 1 << 30  # one device's masked input, reassembled from chunks


@dataclass
class RunningAggregator:
    server: grpc.Server
    port: int
    handler: AggregatorHandler

    def stop(self, grace: float | None = None) -> None:
        self.server.stop(grace).wait()


def start(pki: Path | None, host: str, port: int, max_upload_bytes: int = MAX_UPLOAD_BYTES) -> RunningAggregator:
    """``pki=None`` serves plaintext (``--insecure``): then no caller has an identity and every call is refused."""
    handler = AggregatorHandler(max_upload_bytes, PrometheusStageListener())
    # Results carry whole bucket sums to the orchestrator: allow large responses, keep requests chunked.
    server = new_server(
        workers=32, max_message_bytes=MAX_MESSAGE_BYTES, max_send_bytes=max_upload_bytes, service="aggregator"
    )
    add_servicer(server, pb.DESCRIPTOR.services_by_name["AggregatorService"], AggregatorServicer(handler))
    tls = TlsFiles.load(pki, "service") if pki else None
    if tls is not None:
        record_certificate("aggregator", tls.cert_pem)
    bound = bind(server, f"{host}:{port}", tls)
    server.start()
    log.info("aggregator listening on %s:%d", host, bound)
    return RunningAggregator(server, bound, handler)
