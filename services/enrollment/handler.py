"""Transport-free enrollment logic: validate, check the token, sign the CSR, assign the rank, record.

The servicer only converts messages; everything a test needs to check (token rules, rank policy, admin-only
calls) happens here on plain values. The profile's numbers and the rank policy are in ``profile.py``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import serialization

from services import errors
from services.auth import require_admin
from services.enrollment.profile import RankPolicy, checked_points, checked_profile
from services.pki import CertificateAuthority, Identity
from services.registry import DeviceRecord, DeviceRegistry, check_device_id
from trainer.ranks import TrainingCost

log = logging.getLogger("hetlora.enrollment")  # device ids and serials only: never tokens or keys
MAX_TOKEN_CHARS = 128
MAX_CSR_BYTES = 8192


@dataclass(frozen=True)
class EnrollmentPolicy:
    """Deployment settings; ``step_budget_s`` and ``memory_fraction`` apply to measured profiles (RankPolicy)."""

    r_min: int = 2
    r_max: int = 32
    token_ttl_s: int = 24 * 3600
    max_token_ttl_s: int = 30 * 24 * 3600
    cost: TrainingCost = field(default_factory=TrainingCost)
    step_budget_s: float = 30.0
    memory_fraction: float = 0.8

    def ranks(self) -> RankPolicy:
        return RankPolicy(self.r_min, self.r_max, self.step_budget_s, self.memory_fraction, self.cost)


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
        self._ranks = policy.ranks()  # validates the policy at startup, not at the first enrollment

    def _now(self) -> int:
        return int(self._clock())

    def enroll(
        self,
        token: str,
        csr_pem: bytes,
        memory_mb: float,
        gflops: float,
        measured: Sequence[tuple[int, float, float]] = (),
    ) -> Enrolled:
        """``measured``: (rank, peak MiB, step seconds) from the device's probe; empty for a typed profile."""
        if not token or len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
            raise errors.invalid("token", "expected '<id>.<secret>' as printed by 'hetlora admin issue-token'")
        if not csr_pem or len(csr_pem) > MAX_CSR_BYTES:
            raise errors.invalid("csr_pem", f"expected a PEM certificate signing request under {MAX_CSR_BYTES} bytes")
        profile = checked_profile(memory_mb, gflops)
        points = checked_points(measured)
        device_id = self.registry.token_device(token, self._now())
        try:
            cert = self.ca.sign_csr(csr_pem, device_id)
        except ValueError as e:
            raise errors.invalid("csr_pem", f"not a usable certificate signing request ({e})") from None
        rank = self._ranks.rank(profile, points)
        serial = format(cert.serial_number, "x")
        self.registry.complete_enrollment(token, device_id, serial, profile, rank, self._now())
        pem = cert.public_bytes(serialization.Encoding.PEM)
        how = f"measured at ranks {sorted(p.rank for p in points)}" if points else "typed profile"
        log.info("device=%s enrolled: rank %d (%s), certificate serial %s", device_id, rank, how, serial)
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
