"""Registry and identity rules on plain values (no gRPC): tokens, atomic enrollment, device certificates."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from services.auth import require_admin, require_device
from services.errors import ServiceError
from services.pki import Identity
from services.registry import DeviceRegistry
from trainer.ranks import DeviceProfile

PROFILE = DeviceProfile(2000, 100)


def status(call) -> grpc.StatusCode:
    with pytest.raises(ServiceError) as info:
        call()
    return info.value.code


def test_token_lifecycle_and_atomic_enrollment(tmp_path: Path) -> None:
    reg = DeviceRegistry(tmp_path / "r.db")
    token, expires = reg.issue_token("d1", 60, now=1000)
    assert expires == 1060 and reg.token_device(token, 1059) == "d1"
    assert status(lambda: reg.token_device(token, 1060)) == grpc.StatusCode.UNAUTHENTICATED  # expired
    assert status(lambda: reg.token_device("nope." + token.split(".")[1], 1000)) == grpc.StatusCode.UNAUTHENTICATED
    reg.complete_enrollment(token, "d1", "abc", PROFILE, 8, now=1001)
    assert status(lambda: reg.complete_enrollment(token, "d1", "def", PROFILE, 9, 1002)) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    record = reg.get("d1")
    assert record is not None and (record.serial, record.rank) == ("abc", 8)  # the refused replay changed nothing
    reg.close()
    reopened = DeviceRegistry(tmp_path / "r.db")  # committed state survives the process
    assert reopened.get("d1") == record


def test_require_device_accepts_only_the_current_unrevoked_certificate(tmp_path: Path) -> None:
    reg = DeviceRegistry(":memory:")
    token, _ = reg.issue_token("d2", 60, now=0)
    reg.complete_enrollment(token, "d2", "s1", PROFILE, 4, now=1)
    assert require_device(Identity("d2", "device", "s1"), reg) == "d2"
    assert status(lambda: require_device(Identity("d2", "device", "old"), reg)) == grpc.StatusCode.UNAUTHENTICATED
    assert status(lambda: require_device(Identity("d9", "device", "s1"), reg)) == grpc.StatusCode.UNAUTHENTICATED
    assert status(lambda: require_device(Identity("d2", "admin", "s1"), reg)) == grpc.StatusCode.PERMISSION_DENIED
    reg.revoke("d2", now=2)
    assert status(lambda: require_device(Identity("d2", "device", "s1"), reg)) == grpc.StatusCode.PERMISSION_DENIED
    assert status(lambda: require_admin(Identity("d2", "device", "s1"))) == grpc.StatusCode.PERMISSION_DENIED
    assert status(lambda: reg.issue_token("Bad Name", 60, 0)) == grpc.StatusCode.INVALID_ARGUMENT
