"""Enrollment over real gRPC on loopback with mTLS: tokens, certificates, ranks, admin calls, refusals."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from services.api.hetlora.v1 import enrollment_pb2 as pb
from services.api.hetlora.v1 import enrollment_pb2_grpc as rpc
from services.pki import CertificateAuthority, identity_of, new_key_and_csr
from services.transport import TlsFiles, channel

pytestmark = pytest.mark.timeout(60)
WAIT = 10.0


def admin_stub(pki: Path, port: int) -> rpc.DeviceAdminServiceStub:
    tls = TlsFiles.load(pki, "admin")
    return rpc.DeviceAdminServiceStub(channel(f"127.0.0.1:{port}", tls.ca_pem, tls.cert_pem, tls.key_pem))


def enroll_stub(pki: Path, port: int) -> rpc.EnrollmentServiceStub:
    return rpc.EnrollmentServiceStub(channel(f"127.0.0.1:{port}", (pki / "ca.crt").read_bytes()))


def enroll(pki: Path, running, token: str, memory_mb: float = 1600, gflops: float = 100) -> pb.EnrollResponse:
    _, csr = new_key_and_csr()
    request = pb.EnrollRequest(token=token, csr_pem=csr, profile=pb.DeviceProfile(memory_mb=memory_mb, gflops=gflops))
    return enroll_stub(pki, running.enroll_port).Enroll(request, timeout=WAIT)


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def test_device_enrolls_with_a_token_and_gets_a_ca_signed_certificate_and_its_rank(pki: Path, enrollment) -> None:
    admin = admin_stub(pki, enrollment.admin_port)
    token = admin.IssueToken(pb.IssueTokenRequest(device_id="phone-1"), timeout=WAIT).token
    done = enroll(pki, enrollment, token, memory_mb=1500 + 2 * 20, gflops=1e3)
    assert done.device_id == "phone-1" and done.rank == 20  # memory allows exactly rank 20 under the cost model
    who = identity_of(done.certificate_pem)
    assert (who.common_name, who.role) == ("phone-1", "device")
    ca = CertificateAuthority.load(pki)
    assert done.ca_certificate_pem == ca.certificate_pem
    listed = admin.ListDevices(pb.ListDevicesRequest(), timeout=WAIT).devices
    assert [(d.device_id, d.rank, d.certificate_serial, d.revoked) for d in listed] == [
        ("phone-1", 20, who.serial, False)
    ]


def test_token_is_one_time_and_expired_or_forged_tokens_are_refused(pki: Path, enrollment) -> None:
    admin = admin_stub(pki, enrollment.admin_port)
    token = admin.IssueToken(pb.IssueTokenRequest(device_id="phone-2"), timeout=WAIT).token
    enroll(pki, enrollment, token)
    assert code_of(lambda: enroll(pki, enrollment, token)) == grpc.StatusCode.PERMISSION_DENIED  # replayed
    forged = token.split(".")[0] + ".not-the-secret"
    assert code_of(lambda: enroll(pki, enrollment, forged)) == grpc.StatusCode.UNAUTHENTICATED
    expired, _ = enrollment.registry.issue_token("phone-3", -1, 0)  # expired at its birth
    assert code_of(lambda: enroll(pki, enrollment, expired)) == grpc.StatusCode.UNAUTHENTICATED
    assert enrollment.registry.get("phone-3") is None  # refusals change nothing


def test_revocation_voids_pending_tokens_and_a_new_token_re_enrolls(pki: Path, enrollment) -> None:
    admin = admin_stub(pki, enrollment.admin_port)
    first = enroll(pki, enrollment, admin.IssueToken(pb.IssueTokenRequest(device_id="tab"), timeout=WAIT).token)
    pending = admin.IssueToken(pb.IssueTokenRequest(device_id="tab"), timeout=WAIT).token
    admin.RevokeDevice(pb.RevokeDeviceRequest(device_id="tab"), timeout=WAIT)
    assert enrollment.registry.get("tab").revoked
    assert code_of(lambda: enroll(pki, enrollment, pending)) == grpc.StatusCode.PERMISSION_DENIED
    again = enroll(pki, enrollment, admin.IssueToken(pb.IssueTokenRequest(device_id="tab"), timeout=WAIT).token)
    record = enrollment.registry.get("tab")
    assert not record.revoked and record.serial == identity_of(again.certificate_pem).serial
    assert identity_of(first.certificate_pem).serial != record.serial
    missing = pb.RevokeDeviceRequest(device_id="nobody")
    assert code_of(lambda: admin.RevokeDevice(missing, timeout=WAIT)) == grpc.StatusCode.NOT_FOUND


def test_admin_port_refuses_callers_without_an_admin_certificate(pki: Path, enrollment, tmp_path: Path) -> None:
    target = f"127.0.0.1:{enrollment.admin_port}"
    ca_pem = (pki / "ca.crt").read_bytes()
    no_cert = rpc.DeviceAdminServiceStub(channel(target, ca_pem))
    assert code_of(lambda: no_cert.ListDevices(pb.ListDevicesRequest(), timeout=WAIT)) == grpc.StatusCode.UNAVAILABLE
    service = TlsFiles.load(pki, "service")
    not_admin = rpc.DeviceAdminServiceStub(channel(target, ca_pem, service.cert_pem, service.key_pem))
    assert code_of(lambda: not_admin.ListDevices(pb.ListDevicesRequest(), timeout=WAIT)) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    # A certificate from another CA does not get through the TLS handshake at all.
    other = CertificateAuthority.create("someone else")
    cert, key = other.issue("admin", "admin")
    foreign = rpc.DeviceAdminServiceStub(channel(target, ca_pem, cert, key))
    assert code_of(lambda: foreign.ListDevices(pb.ListDevicesRequest(), timeout=WAIT)) == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.EnrollRequest(token="", csr_pem=b"x", profile=pb.DeviceProfile(memory_mb=1, gflops=1)), "token"),
        (pb.EnrollRequest(token="a.b", csr_pem=b"", profile=pb.DeviceProfile(memory_mb=1, gflops=1)), "csr_pem"),
        (pb.EnrollRequest(token="a.b", csr_pem=b"x", profile=pb.DeviceProfile(memory_mb=-1, gflops=1)), "memory_mb"),
        (
            pb.EnrollRequest(token="a.b", csr_pem=b"x", profile=pb.DeviceProfile(memory_mb=1, gflops=float("nan"))),
            "gflops",
        ),
    ],
)
def test_malformed_enroll_requests_are_invalid_argument_naming_the_field(
    pki: Path, enrollment, request_: pb.EnrollRequest, field: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        enroll_stub(pki, enrollment.enroll_port).Enroll(request_, timeout=WAIT)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in info.value.details()


def test_garbage_csr_with_a_valid_token_is_refused_and_leaves_the_token_usable(pki: Path, enrollment) -> None:
    admin = admin_stub(pki, enrollment.admin_port)
    token = admin.IssueToken(pb.IssueTokenRequest(device_id="watch"), timeout=WAIT).token
    bad = pb.EnrollRequest(
        token=token,
        csr_pem=b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n",
        profile=pb.DeviceProfile(memory_mb=2000, gflops=50),
    )
    assert code_of(lambda: enroll_stub(pki, enrollment.enroll_port).Enroll(bad, timeout=WAIT)) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    assert enroll(pki, enrollment, token).device_id == "watch"


def _csr_for(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def test_csr_keys_other_than_p256_are_refused_and_leave_the_token_usable(pki: Path, enrollment) -> None:
    admin = admin_stub(pki, enrollment.admin_port)
    token = admin.IssueToken(pb.IssueTokenRequest(device_id="tablet"), timeout=WAIT).token
    stub = enroll_stub(pki, enrollment.enroll_port)
    for key in (ec.generate_private_key(ec.SECP384R1()), rsa.generate_private_key(65537, 2048)):
        request = pb.EnrollRequest(
            token=token, csr_pem=_csr_for(key), profile=pb.DeviceProfile(memory_mb=2000, gflops=50)
        )
        with pytest.raises(grpc.RpcError) as info:
            stub.Enroll(request, timeout=WAIT)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "P-256" in (info.value.details() or "")
    assert enroll(pki, enrollment, token).device_id == "tablet"


def test_oversize_request_is_resource_exhausted(pki: Path, enrollment) -> None:
    huge = pb.EnrollRequest(token="a.b", csr_pem=b"x" * (5 * 1024 * 1024))
    code = code_of(lambda: enroll_stub(pki, enrollment.enroll_port).Enroll(huge, timeout=WAIT))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
