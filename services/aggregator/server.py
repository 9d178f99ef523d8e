"""The aggregator process: one mTLS port for the orchestrator's round calls and the devices' stage calls."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from services.aggregator.handler import AggregatorHandler
from services.aggregator.servicer import AggregatorServicer
from services.aio_transport import AioServer
from services.api.hetlora.v1 import aggregator_pb2 as pb
from services.deadlines import Deadlines
from services.metrics import PrometheusStageListener, record_certificate
from services.transport import MAX_MESSAGE_BYTES, TlsFiles

log = logging.getLogger("hetlora.aggregator")
MAX_UPLOAD_BYTES = 1 << 30  # one device's masked input, reassembled from chunks


@dataclass
class RunningAggregator:
    server: AioServer
    port: int
    handler: AggregatorHandler

    def stop(self, grace: float | None = None) -> None:
        self.server.stop(grace)


def start(
    pki: Path | None,
    host: str,
    port: int,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    deadlines: Deadlines | None = None,
) -> RunningAggregator:
    """``pki=None`` serves plaintext (``--insecure``): then no caller has an identity and every call is refused.
    ``deadlines``: server-side caps and the upload idle timeout (default: ``services.deadlines``)."""
    handler = AggregatorHandler(max_upload_bytes, PrometheusStageListener())
    # Results carry whole bucket sums to the orchestrator: allow large responses, keep requests chunked.
    # grpc.aio: a device waiting for its next stage holds no thread, however many wait.
    server = AioServer(
        max_message_bytes=MAX_MESSAGE_BYTES,
        max_send_bytes=max_upload_bytes,
        service="aggregator",
        deadlines=deadlines,
    )
    server.add_servicer(pb.DESCRIPTOR.services_by_name["AggregatorService"], AggregatorServicer(handler))
    tls = TlsFiles.load(pki, "service") if pki else None
    if tls is not None:
        record_certificate("aggregator", tls.cert_pem)
    bound = server.bind(f"{host}:{port}", tls)
    server.start()
    log.info("aggregator listening on %s:%d", host, bound)
    return RunningAggregator(server, bound, handler)
