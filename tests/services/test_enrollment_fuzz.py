"""Bounded fuzz loops against the enrollment ports: every answer is a precise status, state never changes.

The first loop sends random fields and bytes; the second mutates a valid request for every method of both
ports (tests/services/mutations.py has the mutations).
"""

from __future__ import annotations

import random
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.api.hetlora.v1 import enrollment_pb2 as pb
from services.api.hetlora.v1 import enrollment_pb2_grpc as rpc
from services.pki import new_key_and_csr
from services.transport import MAX_MESSAGE_BYTES, TlsFiles, channel
from tests.services.mutations import PRECISE, Target, assert_reached_handlers, fuzz, no_tracebacks

pytestmark = pytest.mark.timeout(120)
WAIT = 10.0
ROUNDS = 1000


def _text(rng: random.Random) -> str:
    alphabet = "abc.-_XYZ019 \u00e9\u2603\x00"
    return "".join(rng.choice(alphabet) for _ in range(rng.choice((0, 1, 5, 40, 200))))


def _number(rng: random.Random) -> float:
    return rng.choice((0.0, -1.0, 1.0, 1e3, 1e300, float("inf"), float("-inf"), float("nan"), rng.uniform(-1e6, 1e6)))


def test_a_thousand_malformed_requests_get_precise_statuses_and_change_nothing(
    pki: Path, enrollment, caplog: pytest.LogCaptureFixture
) -> None:
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
    no_tracebacks(caplog)


def p384_csr() -> bytes:
    """A well-formed CSR the service refuses for its curve, after it has looked the token up."""
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fuzz")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def enrollment_targets(pki: Path, enrollment, real_token: str) -> list[Target]:
    """A valid request for every method of both ports. Enroll has two: the real token with a CSR refused for
    its curve, and a token of the right form that was never issued with a good CSR; no mutation of either can
    enroll a device (that takes both a real token and a P-256 CSR)."""
    ca_pem, tls = (pki / "ca.crt").read_bytes(), TlsFiles.load(pki, "admin")
    big = 8 * MAX_MESSAGE_BYTES  # the client sends oversized mutants: the server must refuse them itself
    enroll_ch = channel(f"127.0.0.1:{enrollment.enroll_port}", ca_pem, max_message_bytes=big)
    admin_ch = channel(f"127.0.0.1:{enrollment.admin_port}", ca_pem, tls.cert_pem, tls.key_pem, max_message_bytes=big)
    profile = pb.DeviceProfile(
        memory_mb=4000,
        gflops=100,
        measured=[
            pb.RankCost(rank=2, peak_memory_mb=900, step_seconds=0.5),
            pb.RankCost(rank=8, peak_memory_mb=2500, step_seconds=1.0),
        ],
    )
    _, good_csr = new_key_and_csr()
    tokens = ("", ".", "a.b", "x" * 300 + ".y", real_token + "x", "." + real_token)
    enroll, admin = "/hetlora.v1.EnrollmentService/Enroll", "/hetlora.v1.DeviceAdminService/"
    return [
        Target(
            enroll,
            "unary",
            (pb.EnrollRequest(token=real_token, csr_pem=p384_csr(), profile=profile),),
            enroll_ch,
            PRECISE,
            {"token": tokens, "rank": (0, 1, 64, 65, 2**32 - 1)},
        ),
        Target(
            enroll,
            "unary",
            (pb.EnrollRequest(token="0123abcd.never-issued", csr_pem=good_csr, profile=profile),),
            enroll_ch,
            PRECISE,
            {"token": tokens[:4], "rank": (0, 1, 64, 65, 2**32 - 1)},
        ),
        Target(
            admin + "IssueToken",
            "unary",
            (pb.IssueTokenRequest(device_id="fuzz-new", ttl_seconds=60),),
            admin_ch,
            PRECISE,
            {"ttl_seconds": (0, 1, 2**31, 2**32 - 1)},
            ok=True,
        ),
        Target(
            admin + "RevokeDevice",
            "unary",
            (pb.RevokeDeviceRequest(device_id="nobody-here"),),
            admin_ch,
            PRECISE,
            {"device_id": ("", "-", "x" * 65, "NOBODY", "nobody-else")},
        ),
        Target(admin + "ListDevices", "unary", (pb.ListDevicesRequest(),), admin_ch, PRECISE, ok=True),
    ]


def test_mutated_valid_requests_to_every_enrollment_method_get_precise_statuses_and_change_nothing(
    pki: Path, enrollment, caplog: pytest.LogCaptureFixture
) -> None:
    real, _ = enrollment.registry.issue_token("fuzz-target", 3600, 2**40)  # valid for the whole test
    targets = enrollment_targets(pki, enrollment, real)
    before = enrollment.registry.devices()

    seen = fuzz(targets, random.Random(4321), calls=60 * len(targets))

    assert_reached_handlers(seen, targets)
    assert any(":oversized:RESOURCE_EXHAUSTED" in key for key in seen), sorted(seen)
    assert {"Enroll:extreme:INVALID_ARGUMENT", "Enroll:flip:UNAUTHENTICATED"} <= set(seen), sorted(seen)
    # No device enrolled or changed, the real token is unspent, and it still enrolls a device with a good CSR.
    assert enrollment.registry.devices() == before
    assert enrollment.registry.token_device(real, 2**39) == "fuzz-target"
    _, csr = new_key_and_csr()
    request = pb.EnrollRequest(token=real, csr_pem=csr, profile=pb.DeviceProfile(memory_mb=4000, gflops=100))
    assert rpc.EnrollmentServiceStub(targets[0].channel).Enroll(request, timeout=WAIT).device_id == "fuzz-target"
    listed = rpc.DeviceAdminServiceStub(targets[-1].channel).ListDevices(pb.ListDevicesRequest(), timeout=WAIT)
    assert [d.device_id for d in listed.devices] == [d.device_id for d in before] + ["fuzz-target"]
    no_tracebacks(caplog)
    assert real not in caplog.text and real.split(".")[1] not in caplog.text  # refusals never log the token


@pytest.mark.parametrize(
    "old, new",
    [
        ("06082a8648ce3d030107", "06082a8648ce3d030108"),  # the P-256 curve's OID -> one no library implements
        ("06072a8648ce3d0201", "06072a8648ce3d0209"),  # id-ecPublicKey -> an unknown key type
    ],
)
def test_a_csr_naming_an_unknown_key_type_or_curve_is_invalid_argument_and_leaves_the_token_usable(
    pki: Path, enrollment, caplog: pytest.LogCaptureFixture, old: str, new: str
) -> None:
    """Found by the mutation loop (one bit flipped in the CSR): cryptography raises UnsupportedAlgorithm, not
    ValueError, which was answered INTERNAL with a traceback."""
    token, _ = enrollment.registry.issue_token("odd-curve", 3600, 2**40)
    _, pem = new_key_and_csr()
    der = x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER)
    assert der.count(bytes.fromhex(old)) == 1
    odd = x509.load_der_x509_csr(der.replace(bytes.fromhex(old), bytes.fromhex(new)))
    stub = rpc.EnrollmentServiceStub(channel(f"127.0.0.1:{enrollment.enroll_port}", (pki / "ca.crt").read_bytes()))
    profile = pb.DeviceProfile(memory_mb=4000, gflops=100)
    request = pb.EnrollRequest(token=token, csr_pem=odd.public_bytes(serialization.Encoding.PEM), profile=profile)
    with pytest.raises(grpc.RpcError) as info:
        stub.Enroll(request, timeout=WAIT)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert (info.value.details() or "").startswith("csr_pem: not a usable certificate signing request ("), info.value
    no_tracebacks(caplog)
    request = pb.EnrollRequest(token=token, csr_pem=pem, profile=profile)
    assert stub.Enroll(request, timeout=WAIT).device_id == "odd-curve"
