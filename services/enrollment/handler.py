"""Transport-free enrollment logic: validate, check the token, sign the CSR, assign the rank, record.

The servicer only converts messages; everything a test needs to check (token rules, rank policy, admin-only
calls) happens here on plain values.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import serialization

from services import errors
from services.auth import require_admin
from services.pki import CertificateAuthority, Identity
from services.registry import DeviceRecord, DeviceRegistry, check_device_id
from trainer.ranks import DeviceProfile, TrainingCost, assign_rank

log = logging.getLogger("hetlora.enrollment")  # device ids and serials only: never tokens or keys
MAX_TOKEN_CHARS = 128
MAX_CSR_BYTES = 8192
MAX_MEMORY_MB = 16 * 1024 * 1024  # 16 TiB: anything larger is a unit mistake
MAX_GFLOPS = 1e7


@dataclass(frozen=True)
class EnrollmentPolicy:
    r_min: int = 2
    r_max: int = 32
    token_ttl_s: int = 24 * 3600
    max_token_ttl_s: int = 30 * 24 * 3600
    cost: TrainingCost = field(default_factory=TrainingCost)


@dataclass(frozen=True)
class Enrolled:
    device_id: str
    certificate_pem: bytes
    ca_certificate_pem: bytes
    rank: int


class EnrollmentHandler:
    def __init__(
        self,
        registry: DeviceRegistry,
        ca: CertificateAuthority,
        policy: EnrollmentPolicy,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry, self.ca, self.policy, self._clock = registry, ca, policy, clock

    def _now(self) -> int:
        return int(self._clock())

    def enroll(self, token: str, csr_pem: bytes, memory_mb: float, gflops: float) -> Enrolled:
        if not token or len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
            raise errors.invalid("token", "expected '<id>.<secret>' as printed by 'hetlora admin issue-token'")
        if not csr_pem or len(csr_pem) > MAX_CSR_BYTES:
            raise errors.invalid("csr_pem", f"expected a PEM certificate signing request under {MAX_CSR_BYTES} bytes")
        profile = _profile(memory_mb, gflops)
        device_id = self.registry.token_device(token, self._now())
        try:
            cert = self.ca.sign_csr(csr_pem, device_id)
        except ValueError as e:
            raise errors.invalid("csr_pem", f"not a usable certificate signing request ({e})") from None
        rank = assign_rank(profile, self.policy.r_min, self.policy.r_max, self.policy.cost)
        serial = format(cert.serial_number, "x")
        self.registry.complete_enrollment(token, device_id, serial, profile, rank, self._now())
        pem = cert.public_bytes(serialization.Encoding.PEM)
        log.info("device=%s enrolled: rank %d, certificate serial %s", device_id, rank, serial)
        return Enrolled(device_id, pem, self.ca.certificate_pem, rank)

    def issue_token(self, caller: Identity, device_id: str, ttl_s: int) -> tuple[str, int]:
        require_admin(caller)
        check_device_id(device_id)
        ttl = ttl_s or self.policy.token_ttl_s
        if ttl > self.policy.max_token_ttl_s:
            raise errors.invalid("ttl_seconds", f"at most {self.policy.max_token_ttl_s} seconds")
        issued = self.registry.issue_token(device_id, ttl, self._now())
        log.info("device=%s invited by %s (token valid %d s)", device_id, caller.common_name, ttl)
        return issued

    def revoke(self, caller: Identity, device_id: str) -> None:
        require_admin(caller)
        self.registry.revoke(check_device_id(device_id), self._now())
        log.info("device=%s revoked by %s", device_id, caller.common_name)

    def devices(self, caller: Identity) -> list[DeviceRecord]:
        require_admin(caller)
        return self.registry.devices()


def _profile(memory_mb: float, gflops: float) -> DeviceProfile:
    for name, value, bound in (("memory_mb", memory_mb, MAX_MEMORY_MB), ("gflops", gflops, MAX_GFLOPS)):
        if not math.isfinite(value) or not 0 < value <= bound:
            raise errors.invalid(f"profile.{name}", f"must be a positive number up to {bound:g}, got {value!r}")
    return DeviceProfile(memory_mb, gflops)
