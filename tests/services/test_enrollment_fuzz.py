"""A bounded fuzz loop against the enrollment ports: every answer is a precise status, state never changes."""

from __future__ import annotations

import random
from pathlib import Path

import grpc
import pytest

from services.api.hetlora.v1 import enrollment_pb2 as pb
from services.api.hetlora.v1 import enrollment_pb2_grpc as rpc
from services.transport import TlsFiles, channel

pytestmark = pytest.mark.timeout(120)
WAIT = 10.0
ROUNDS = 1000


def _text(rng: random.Random) -> str:
    alphabet = "abc.-_XYZ019 \u00e9\u2603\x00"
    return "".join(rng.choice(alphabet) for _ in range(rng.choice((0, 1, 5, 40, 200))))


def _number(rng: random.Random) -> float:
    return rng.choice((0.0, -1.0, 1.0, 1e3, 1e300, float("inf"), float("-inf"), float("nan"), rng.uniform(-1e6, 1e6)))


def test_a_thousand_malformed_requests_get_precise_statuses_and_change_nothing(pki: Path, enrollment) -> None:
    rng = random.Random(1234)
    ca_pem = (pki / "ca.crt").read_bytes()
    enroll_channel = channel(f"127.0.0.1:{enrollment.enroll_port}", ca_pem)
    enroll = rpc.EnrollmentServiceStub(enroll_channel)
    tls = TlsFiles.load(pki, "admin")
    admin = rpc.DeviceAdminServiceStub(channel(f"127.0.0.1:{enrollment.admin_port}", ca_pem, tls.cert_pem, tls.key_pem))
    raw = enroll_channel.unary_unary("/hetlora.v1.EnrollmentService/Enroll")  # bytes in, bytes out
    real, _ = enrollment.registry.issue_token("fuzz-target", 3600, 2**40)  # valid for the whole test
    before = enrollment.registry.devices()
    seen: dict[str, int] = {}
    for i in range(ROUNDS):
        kind = i % 4
        try:
            if kind == 0:  # random fields, sometimes the real token with a broken CSR
                token = real if rng.random() < 0.2 else _text(rng)
                csr = rng.choice(
                    (b"", b"-----BEGIN CERTIFICATE REQUEST-----\n", rng.randbytes(rng.choice((1, 64, 9000))))
                )
                profile = pb.DeviceProfile(memory_mb=_number(rng), gflops=_number(rng))
                enroll.Enroll(pb.EnrollRequest(token=token, csr_pem=csr, profile=profile), timeout=WAIT)
            elif kind == 1:  # bytes that may not even parse as the message
                raw(rng.randbytes(rng.choice((1, 7, 300))), timeout=WAIT)
            elif kind == 2:
                admin.IssueToken(
                    pb.IssueTokenRequest(device_id=_text(rng), ttl_seconds=rng.choice((0, 1, 2**32 - 1))), timeout=WAIT
                )
            else:
                admin.RevokeDevice(pb.RevokeDeviceRequest(device_id=_text(rng)), timeout=WAIT)
            outcome = "OK"
        except grpc.RpcError as e:
            outcome = e.code().name
            assert e.code() not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), e.details()
        seen[f"{kind}:{outcome}"] = seen.get(f"{kind}:{outcome}", 0) + 1
    # Enrollment never succeeded with garbage, and the registry of enrolled devices is untouched.
    assert not any(k.startswith("0:OK") for k in seen), seen
    assert enrollment.registry.devices() == before
    assert enrollment.registry.token_device(real, 2**39) == "fuzz-target"  # the real token was never spent
    expected = {"0:INVALID_ARGUMENT", "0:UNAUTHENTICATED", "1:INVALID_ARGUMENT", "2:INVALID_ARGUMENT"}
    assert expected | {"3:INVALID_ARGUMENT", "3:NOT_FOUND"} <= set(seen), seen
