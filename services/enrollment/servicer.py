"""gRPC face of the enrollment handler: convert messages, take the caller from the mTLS peer, map errors."""

from __future__ import annotations

import grpc

from services.api.hetlora.v1 import enrollment_pb2 as pb
from services.api.hetlora.v1 import enrollment_pb2_grpc as rpc
from services.auth import peer_identity
from services.enrollment.handler import EnrollmentHandler
from services.errors import grpc_errors


class EnrollmentServicer(rpc.EnrollmentServiceServicer):
    def __init__(self, handler: EnrollmentHandler) -> None:
        self.handler = handler

    @grpc_errors
    def Enroll(self, request: pb.EnrollRequest, context: grpc.ServicerContext) -> pb.EnrollResponse:
        profile = request.profile
        measured = [(m.rank, m.peak_memory_mb, m.step_seconds) for m in profile.measured]
        done = self.handler.enroll(request.token, request.csr_pem, profile.memory_mb, profile.gflops, measured)
        return pb.EnrollResponse(
            device_id=done.device_id,
            certificate_pem=done.certificate_pem,
            ca_certificate_pem=done.ca_certificate_pem,
            rank=done.rank,
        )


class DeviceAdminServicer(rpc.DeviceAdminServiceServicer):
    """Served only on the mTLS port: the caller's admin certificate is what authorises these calls."""

    def __init__(self, handler: EnrollmentHandler) -> None:
        self.handler = handler

    @grpc_errors
    def IssueToken(self, request: pb.IssueTokenRequest, context: grpc.ServicerContext) -> pb.IssueTokenResponse:
        token, expires = self.handler.issue_token(peer_identity(context), request.device_id, request.ttl_seconds)
        return pb.IssueTokenResponse(token=token, expires_at=expires)

    @grpc_errors
    def RevokeDevice(self, request: pb.RevokeDeviceRequest, context: grpc.ServicerContext) -> pb.RevokeDeviceResponse:
        self.handler.revoke(peer_identity(context), request.device_id)
        return pb.RevokeDeviceResponse(device_id=request.device_id)

    @grpc_errors
    def ListDevices(self, request: pb.ListDevicesRequest, context: grpc.ServicerContext) -> pb.ListDevicesResponse:
        records = self.handler.devices(peer_identity(context))
        return pb.ListDevicesResponse(
            devices=[
                pb.Device(
                    device_id=r.device_id,
                    rank=r.rank,
                    profile=pb.DeviceProfile(memory_mb=r.profile.memory_mb, gflops=r.profile.gflops)
                    if r.profile
                    else None,
                    certificate_serial=r.serial,
                    revoked=r.revoked,
                    enrolled_at=r.enrolled_at,
                )
                for r in records
            ]
        )
