"""A device never trains against another base model than the job's, and one that cannot train says why.

Through the real orchestrator on loopback with mTLS: a device whose fingerprint differs is refused at check-in
(FAILED_PRECONDITION naming both fingerprints, counted and never sampled); a task whose header names another base
is refused by the device itself; ``ReportUnavailable`` is validated, counted and takes the device out of sampling.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch

from services.api.hetlora.v1 import orchestrator_pb2 as pb
from services.api.hetlora.v1 import orchestrator_pb2_grpc as rpc
from services.device.agent import BaseModelMismatchError, DeviceAgent
from services.metrics import DEVICES_UNAVAILABLE
from services.transport import channel
from tests.services.test_round_services import deploy

JOB_BASE = "LlamaForCausalLM:w=00000000000000aa:m=000000bb"
OTHER_BASE = "LlamaForCausalLM:w=00000000000000cc:m=000000bb"
pytestmark = pytest.mark.timeout(120)


def unavailable(reason: str) -> float:
    samples = [s for m in DEVICES_UNAVAILABLE.collect() for s in m.samples if s.name.endswith("_total")]
    return sum(s.value for s in samples if s.labels.get("reason") == reason)


@pytest.fixture
def job(pki: Path, tmp_path: Path, tiny_model_factory) -> Iterator[tuple[Any, dict]]:
    devices = {"dev-a": 2, "dev-b": 4}
    orchestrator, aggregator, creds, _ = deploy(
        pki, tmp_path, tiny_model_factory, "hetlora-rebase", devices, 2, base_model_fingerprint=JOB_BASE
    )
    yield orchestrator, creds
    orchestrator.stop(None)
    aggregator.stop(None)


def agent(pki: Path, orchestrator: Any, creds: dict, name: str, fingerprint: str) -> DeviceAgent:
    ca = (pki / "ca.crt").read_bytes()
    model = torch.nn.Linear(2, 2)
    return DeviceAgent.connect(f"127.0.0.1:{orchestrator.port}", ca, *creds[name], model, None, fingerprint=fingerprint)  # type: ignore[arg-type]


def test_a_device_with_another_base_model_is_refused_at_check_in(pki: Path, job) -> None:
    orchestrator, creds = job
    before = unavailable("base_model")
    with pytest.raises(BaseModelMismatchError) as refused:
        agent(pki, orchestrator, creds, "dev-a", OTHER_BASE).run_round(wait_s=0.2)
    assert JOB_BASE in str(refused.value) and OTHER_BASE in str(refused.value)
    assert unavailable("base_model") == before + 1
    assert orchestrator.coordinator._available() == []  # never a candidate for a cohort
    # The job's own base checks in and simply waits for a round (DEADLINE_EXCEEDED -> None).
    assert agent(pki, orchestrator, creds, "dev-b", JOB_BASE).run_round(wait_s=0.2) is None
    assert orchestrator.coordinator._available() == ["dev-b"]


def test_report_unavailable_is_validated_counted_and_stops_sampling(pki: Path, job) -> None:
    orchestrator, creds = job
    ca = (pki / "ca.crt").read_bytes()
    stub = rpc.OrchestratorServiceStub(channel(f"127.0.0.1:{orchestrator.port}", ca, *creds["dev-b"]))
    assert agent(pki, orchestrator, creds, "dev-b", JOB_BASE).run_round(wait_s=0.2) is None
    before = unavailable("bad_data")
    stub.ReportUnavailable(
        pb.ReportUnavailableRequest(reason=pb.UNAVAILABLE_REASON_BAD_DATA, detail="train.jsonl line 3: not JSON"),
        timeout=10,
    )
    assert unavailable("bad_data") == before + 1
    assert orchestrator.coordinator._available() == []
    assert "line 3" in orchestrator.coordinator.unavailable_devices["dev-b"]
    for request, field in (
        (pb.ReportUnavailableRequest(detail="why"), "reason"),
        (pb.ReportUnavailableRequest(reason=pb.UNAVAILABLE_REASON_BAD_DATA, detail="x" * 1001), "detail"),
    ):
        with pytest.raises(grpc.RpcError) as bad:
            stub.ReportUnavailable(request, timeout=10)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in (bad.value.details() or "")
    assert unavailable("bad_data") == before + 1


class TaskFor:
    """An orchestrator stub whose one task names ``base`` and that records what the device reports."""

    def __init__(self, base: str) -> None:
        self.base, self.reported = base, []

    def GetTask(self, request: Any, timeout: float) -> Iterator[pb.GetTaskResponse]:  # noqa: N802
        yield pb.GetTaskResponse(header=pb.TaskHeader(round_id=7, rank=2, base_model_fingerprint=self.base))

    def ReportUnavailable(self, request: Any, timeout: float) -> pb.ReportUnavailableResponse:  # noqa: N802
        self.reported.append(request)
        return pb.ReportUnavailableResponse()


def test_a_device_refuses_a_task_for_another_base_and_says_so() -> None:
    orchestrator = TaskFor(OTHER_BASE)
    device = DeviceAgent(orchestrator, lambda _: None, torch.nn.Linear(2, 2), None, fingerprint=JOB_BASE)  # type: ignore[arg-type]
    with pytest.raises(BaseModelMismatchError, match="base model mismatch"):
        device.run_round(wait_s=0.1)
    (report,) = orchestrator.reported
    assert report.reason == pb.UNAVAILABLE_REASON_BASE_MODEL
    assert OTHER_BASE in report.detail and JOB_BASE in report.detail


def test_a_device_with_bad_data_says_why_and_trains_nothing(pki: Path, job, tmp_path: Path, capsys) -> None:
    """``hetlora device run`` checks its data before checking in; the orchestrator hears the reason."""
    from services.cli import main

    orchestrator, creds = job
    home = tmp_path / "dev-a"
    home.mkdir()
    cert, key = creds["dev-a"]
    (home / "device.crt").write_bytes(cert)
    (home / "device.key").write_bytes(key)
    (home / "ca.crt").write_bytes((pki / "ca.crt").read_bytes())
    (home / "enrollment.json").write_text('{"device_id": "dev-a", "rank": 2}')
    bad = tmp_path / "mine.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": broken\n')
    before = unavailable("bad_data")
    argv = ["device", "run", "--dir", str(home), "--orchestrator", f"127.0.0.1:{orchestrator.port}"]
    assert main([*argv, "--model", "tiny", "--data", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "cannot train on" in err and "mine.jsonl:2: malformed JSON line" in err
    assert unavailable("bad_data") == before + 1
    assert "mine.jsonl:2" in orchestrator.coordinator.unavailable_devices["dev-a"]
