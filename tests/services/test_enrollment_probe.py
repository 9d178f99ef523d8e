"""Ranks from measured points, through the real enrollment service on loopback, and the CLI's two ways in."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from services.api.hetlora.v1 import enrollment_pb2 as pb
from services.cli import main
from tests.services.test_enrollment_service import WAIT, admin_stub, enroll_stub
from trainer.probe import ProbeResult
from trainer.ranks import RankPoint

pytestmark = pytest.mark.timeout(60)

# 1000 MiB + 10 MiB/rank and 1 s + 0.05 s/rank between r_min = 2 and r_max = 32 (tests/trainer/test_probe.py).
LINE = [
    pb.RankCost(rank=2, peak_memory_mb=1000, step_seconds=1.0),
    pb.RankCost(rank=32, peak_memory_mb=1300, step_seconds=2.5),
]


def measured(memory_mb: float, points: list[pb.RankCost], gflops: float = 300) -> pb.DeviceProfile:
    return pb.DeviceProfile(memory_mb=memory_mb, gflops=gflops, measured=points)


def enroll_measured(pki: Path, running, device_id: str, profile: pb.DeviceProfile) -> pb.EnrollResponse:
    from services.pki import new_key_and_csr

    token = admin_stub(pki, running.admin_port).IssueToken(pb.IssueTokenRequest(device_id=device_id), timeout=WAIT)
    _, csr = new_key_and_csr()
    request = pb.EnrollRequest(token=token.token, csr_pem=csr, profile=profile)
    return enroll_stub(pki, running.enroll_port).Enroll(request, timeout=WAIT)


@pytest.fixture
def tight_budget(pki: Path, tmp_path: Path) -> Iterator:
    """An enrollment service whose rounds allow 1.75 s per local step (rank 17 on LINE)."""
    from services.enrollment.handler import EnrollmentPolicy
    from services.enrollment.server import start

    running = start(pki, tmp_path / "tight.db", "127.0.0.1", 0, 0, EnrollmentPolicy(step_budget_s=1.75))
    yield running
    running.stop(None)


def test_service_assigns_the_rank_from_measured_points(pki: Path, enrollment) -> None:
    # 0.8 × 1437.5 MiB = 1150 MiB usable: rank 17's interpolated peak, so memory binds at 17.
    assert enroll_measured(pki, enrollment, "memory-bound", measured(1437.5, LINE)).rank == 17
    assert enroll_measured(pki, enrollment, "roomy", measured(1e5, LINE)).rank == 32
    assert enroll_measured(pki, enrollment, "cramped", measured(500, LINE)).rank == 2  # still joins, at r_min
    # A typed profile with the same memory still goes through the fixed cost model (1500 MiB + 2 MiB/rank).
    typed = pb.DeviceProfile(memory_mb=1437.5, gflops=300)
    assert enroll_measured(pki, enrollment, "typed", typed).rank == 2
    listed = {
        d.device_id: d for d in admin_stub(pki, enrollment.admin_port).ListDevices(pb.ListDevicesRequest()).devices
    }
    assert (listed["memory-bound"].rank, listed["memory-bound"].profile.memory_mb) == (17, 1437.5)
    assert listed["memory-bound"].profile.gflops == 300


def test_step_budget_bounds_the_measured_rank(pki: Path, tight_budget) -> None:
    assert enroll_measured(pki, tight_budget, "slow", measured(1e5, LINE)).rank == 17


def test_unordered_non_monotone_points_are_accepted(pki: Path, enrollment) -> None:
    bumpy = [
        pb.RankCost(rank=32, peak_memory_mb=1100, step_seconds=1.0),
        pb.RankCost(rank=2, peak_memory_mb=1000, step_seconds=1.0),
        pb.RankCost(rank=16, peak_memory_mb=2000, step_seconds=1.0),
    ]
    assert enroll_measured(pki, enrollment, "bumpy", measured(1500, bumpy)).rank == 32


def point(rank: int = 8, peak: float = 1000.0, seconds: float = 1.0) -> pb.RankCost:
    return pb.RankCost(rank=rank, peak_memory_mb=peak, step_seconds=seconds)


@pytest.mark.parametrize(
    ("profile", "field"),
    [
        (measured(1000, [point(0), point(32)]), "profile.measured[0].rank"),
        (measured(1000, [point(2), point(5000)]), "profile.measured[1].rank"),
        (measured(1000, [point(2), point(2)]), "profile.measured[1].rank"),
        (measured(1000, [point(2), point(32, peak=float("nan"))]), "profile.measured[1].peak_memory_mb"),
        (measured(1000, [point(2, peak=-5), point(32)]), "profile.measured[0].peak_memory_mb"),
        (measured(1000, [point(2), point(32, seconds=float("inf"))]), "profile.measured[1].step_seconds"),
        (measured(1000, [point(2), point(32, seconds=0)]), "profile.measured[1].step_seconds"),
        (measured(1000, [point(2)]), "profile.measured"),
        (measured(1000, [point(r) for r in range(1, 18)]), "profile.measured"),
        (measured(float("nan"), LINE), "profile.memory_mb"),
        (measured(1000, LINE, gflops=0), "profile.gflops"),
    ],
)
def test_bad_measurements_are_invalid_argument_naming_the_field(
    pki: Path, enrollment, profile: pb.DeviceProfile, field: str
) -> None:
    token, _ = enrollment.registry.issue_token("victim", 3600, 2**40)
    request = pb.EnrollRequest(token=token, csr_pem=b"x", profile=profile)
    with pytest.raises(grpc.RpcError) as info:
        enroll_stub(pki, enrollment.enroll_port).Enroll(request, timeout=WAIT)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(f"{field}: "), info.value.details()
    assert enrollment.registry.token_device(token, 2**39) == "victim"  # the token was not spent


def enroll_args(pki: Path, running, token: str, device_dir: Path, *extra: str) -> list[str]:
    return [
        "device", "enroll", "--token", token, "--target", f"127.0.0.1:{running.enroll_port}",
        "--ca", str(pki / "ca.crt"), "--dir", str(device_dir), *extra,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--probe", "--memory-mb", "2000"), "not both"),
        (("--probe", "--memory-mb", "2000", "--gflops", "10"), "not both"),
        ((), "--probe (measured on --model), or --memory-mb and --gflops"),
        (("--memory-mb", "2000"), "--probe (measured on --model), or --memory-mb and --gflops"),
    ],
)
def test_cli_needs_exactly_one_way_to_state_the_profile(
    pki: Path, enrollment, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: tuple[str, ...], message: str
) -> None:
    token, _ = enrollment.registry.issue_token("undecided", 3600, 2**40)
    assert main(enroll_args(pki, enrollment, token, tmp_path / "dev", *extra)) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "dev").exists()  # nothing written, token unspent
    assert enrollment.registry.token_device(token, 2**39) == "undecided"


def test_cli_rejects_malformed_probe_ranks(pki: Path, enrollment, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        main(enroll_args(pki, enrollment, "a.b", tmp_path, "--probe", "--ranks", "8"))
    assert info.value.code == 2


def test_cli_probe_enrolls_at_the_rank_the_service_picks(
    pki: Path, enrollment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI's --probe path end to end with the measurement stubbed (tests/trainer/test_probe.py runs it)."""
    import services.enrollment.client as client

    seen = {}

    def fake_probe(model, targets, ranks, batch_size, seq_len, device, dtype, checkpointing, on_point=None):
        seen.update(model=model, ranks=tuple(ranks), batch=(batch_size, seq_len), checkpointing=checkpointing)
        points = (RankPoint(2, 1000.0, 1.0), RankPoint(32, 1300.0, 2.5))
        return ProbeResult("cpu", 1437.5, 300.0, points, "vmhwm")

    monkeypatch.setattr(client, "probe_device", fake_probe)
    token, _ = enrollment.registry.issue_token("prober", 3600, 2**40)
    device_dir = tmp_path / "dev"
    args = enroll_args(pki, enrollment, token, device_dir, "--probe", "--model", "tiny", "--ranks", "2,32")
    assert main([*args, "--batch-size", "2", "--seq-len", "16", "--gradient-checkpointing"]) == 0
    assert seen == {"model": "tiny", "ranks": (2, 32), "batch": (2, 16), "checkpointing": True}
    record = json.loads((device_dir / "enrollment.json").read_text())
    assert (record["device_id"], record["rank"]) == ("prober", 17)
    assert record["probe"]["points"][1] == {"rank": 32, "peak_memory_mb": 1300.0, "step_seconds": 2.5}
    assert enrollment.registry.get("prober").rank == 17
