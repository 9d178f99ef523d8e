"""The enrollment process: a TLS port devices enroll on and an mTLS port for the operator's admin calls."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from services.api.hetlora.v1 import enrollment_pb2 as pb
from services.enrollment.handler import EnrollmentHandler, EnrollmentPolicy
from services.enrollment.servicer import DeviceAdminServicer, EnrollmentServicer
from services.metrics import record_certificate, watch_registry
from services.pki import CertificateAuthority
from services.registry import DeviceRegistry
from services.transport import TlsFiles, add_servicer, bind, new_server

log = logging.getLogger("hetlora.enrollment")


@dataclass
class RunningEnrollment:
    enroll_server: grpc.Server
    admin_server: grpc.Server
    enroll_port: int
    admin_port: int
    registry: DeviceRegistry

    def stop(self, grace: float | None = None) -> None:
        self.enroll_server.stop(grace).wait()
        self.admin_server.stop(grace).wait()
        watch_registry(None)
        self.registry.close()


def start(
    pki: Path, db: Path | str, host: str, enroll_port: int, admin_port: int, policy: EnrollmentPolicy
) -> RunningEnrollment:
    """Start both listeners; the CA key must be in ``pki`` (this is the only service that signs)."""
    registry = DeviceRegistry(db)
    handler = EnrollmentHandler(registry, CertificateAuthority.load(pki), policy)
    tls = TlsFiles.load(pki, "service")
    record_certificate("enrollment", tls.cert_pem)
    watch_registry(lambda: registry.count_by_state(int(time.time())))
    enroll_server, admin_server = new_server(service="enrollment"), new_server(service="enrollment-admin")
    services = pb.DESCRIPTOR.services_by_name
    add_servicer(enroll_server, services["EnrollmentService"], EnrollmentServicer(handler))
    add_servicer(admin_server, services["DeviceAdminService"], DeviceAdminServicer(handler))
    ports = (
        bind(enroll_server, f"{host}:{enroll_port}", tls, require_client_cert=False),
        bind(admin_server, f"{host}:{admin_port}", tls, require_client_cert=True),
    )
    enroll_server.start()
    admin_server.start()
    log.info("enrollment listening on %s:%d (TLS), admin on %s:%d (mTLS)", host, ports[0], host, ports[1])
    return RunningEnrollment(enroll_server, admin_server, ports[0], ports[1], registry)
