"""Monitoring pieces on plain values: registry counts, listener fan-out, version scoring, certificate expiry, logs."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from prometheus_client import REGISTRY

from services.enrollment.handler import EnrollmentHandler, EnrollmentPolicy
from services.metrics import PrometheusRoundListener, record_certificate, watch_registry
from services.orchestrator.evaluation import VersionEvaluator
from services.orchestrator.listeners import RoundListeners, RoundSummary
from services.pki import CertificateAuthority, Identity, new_key_and_csr
from services.registry import DeviceRegistry
from trainer.factors import ModuleShape
from trainer.ranks import DeviceProfile
from trainer.store import DirectoryStore
from trainer.strategies import StrategyConfig, make_strategy

SHAPES = {"layers.0.q_proj": ModuleShape(8, 6)}


def test_registry_counts_devices_by_state_and_live_invitations(tmp_path: Path) -> None:
    reg = DeviceRegistry(tmp_path / "r.db")
    for name in ("a", "b", "c"):
        token, _ = reg.issue_token(name, 100, now=1000)
        if name != "c":
            reg.complete_enrollment(token, name, f"serial-{name}", DeviceProfile(2000, 100), 4, 1001)
    reg.issue_token("late", 10, now=1000)  # expires at 1010
    reg.revoke("b", 1002)
    assert reg.count_by_state(1005) == {"active": 1, "revoked": 1, "invited": 2}
    assert reg.count_by_state(1050) == {"active": 1, "revoked": 1, "invited": 1}  # 'late' expired
    watch_registry(lambda: reg.count_by_state(1005))
    assert REGISTRY.get_sample_value("hetlora_enrolled_devices", {"state": "revoked"}) == 1
    watch_registry(None)
    reg.close()
    assert REGISTRY.get_sample_value("hetlora_enrolled_devices", {"state": "revoked"}) is None


class Recording:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def round_started(self, index: int, ranks: Sequence[int]) -> None:
        self.events.append(("started", index, tuple(ranks)))

    def round_finished(self, summary: RoundSummary) -> None:
        self.events.append(("finished", summary.committed, summary.version))


class Broken(Recording):
    def round_started(self, index: int, ranks: Sequence[int]) -> None:
        raise RuntimeError("listener bug")


def test_a_failing_listener_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    after = Recording()
    fan = RoundListeners(Broken(), after)
    fan.round_started(3, [2, 4])
    fan.round_finished(RoundSummary(True, 7, 2, 0, 1.5, (2, 3), 100))
    assert after.events == [("started", 3, (2, 4)), ("finished", True, 7)]
    assert "Broken failed on round_started" in caplog.text


def test_round_metrics_track_progress_and_commit_time() -> None:
    metrics = PrometheusRoundListener()
    metrics.round_started(5, [2, 8])
    assert REGISTRY.get_sample_value("hetlora_round_in_progress") == 1
    assert REGISTRY.get_sample_value("hetlora_round_index") == 5
    metrics.round_finished(RoundSummary(True, 4, 2, 0, 3.0, (2, 6), 1000))
    assert REGISTRY.get_sample_value("hetlora_round_in_progress") == 0
    assert REGISTRY.get_sample_value("hetlora_global_version") == 4
    started = REGISTRY.get_sample_value("hetlora_round_started_timestamp_seconds")
    assert REGISTRY.get_sample_value("hetlora_last_commit_timestamp_seconds") >= started > 0


def test_evaluator_scores_the_starting_version_then_each_commit(tmp_path: Path) -> None:
    strategy = make_strategy("hetlora-rebase", StrategyConfig(r_min=2, r_max=4))
    store = DirectoryStore(tmp_path / "store", strategy.initial(SHAPES, 0), base_model="tiny")
    heard: list[tuple[int, float]] = []

    def score(adapter) -> float:  # a deterministic stand-in for held-out loss: the size of ΔW
        return float(sum(np.abs(adapter.delta(m)).sum() for m in adapter.factors))

    evaluator = VersionEvaluator(store, score, lambda v, loss: heard.append((v, loss)))
    evaluator.start()
    assert evaluator.wait_scored(0, timeout_s=30)
    _, adapter = store.latest()
    adapter.factors["layers.0.q_proj"].B[:] = 0.5
    store.commit(adapter, {"round": 1})
    evaluator.round_finished(RoundSummary(False, 0, dropped=3))  # a failed round commits nothing: nothing to score
    evaluator.round_finished(RoundSummary(True, 1, 3, 0, 1.0, (2, 2, 4), 10))
    assert evaluator.wait_scored(1, timeout_s=30)
    evaluator.stop()
    assert [v for v, _ in heard] == [0, 1]
    assert heard[0][1] == pytest.approx(0.0) and heard[1][1] > 0  # LoRA starts with B = 0


def test_certificate_expiry_is_exported_per_service(pki: Path) -> None:
    pem = (pki / "service.crt").read_bytes()
    record_certificate("aggregator", pem)
    expiry = x509.load_pem_x509_certificate(pem).not_valid_after_utc.timestamp()
    assert (
        REGISTRY.get_sample_value("hetlora_certificate_expiry_timestamp_seconds", {"service": "aggregator"}) == expiry
    )


def test_enrollment_logs_name_the_device_but_never_the_token(
    pki: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:

    handler = EnrollmentHandler(DeviceRegistry(tmp_path / "r.db"), CertificateAuthority.load(pki), EnrollmentPolicy())
    admin = Identity("operator", "admin", "01")
    caplog.set_level(logging.INFO, logger="hetlora.enrollment")
    token, _ = handler.issue_token(admin, "phone-7", 0)
    _key, csr = new_key_and_csr()
    handler.enroll(token, csr, 2000, 100)
    handler.revoke(admin, "phone-7")
    assert "device=phone-7 enrolled" in caplog.text and "device=phone-7 revoked" in caplog.text
    secret = token.split(".")[1]
    assert secret not in caplog.text and token not in caplog.text and b"PRIVATE" not in caplog.text.encode()
