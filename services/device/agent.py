"""The device agent's round: fetch the task, train with self-pruning, mask and upload, report metadata.

Training is ``trainer.device.run_task``, the same function the in-process simulation calls; the update then
leaves the device only as a masked SecAgg+ input (``secure_upload``), and the orchestrator hears only the
rank after pruning, the training loss and the example count.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import torch

from secure_agg import Ed25519Signer, FixedPointCodec
from services.api.hetlora.v1 import aggregator_pb2_grpc as agg_rpc
from services.api.hetlora.v1 import orchestrator_pb2 as pb
from services.api.hetlora.v1 import orchestrator_pb2_grpc as rpc
from services.device.secure_upload import LeftRoundError, WireBytes, secure_upload
from services.device.watchdog import WATCHDOG
from services.errors import BASE_MODEL_MISMATCH
from services.orchestrator.task_codec import factors_from_bytes
from services.privacy_settings import example_dp_from, spend_message, user_dp_from
from services.secure_sum import SecureSumConfig, encode_dense, encode_factors
from services.settings import strategy_config
from services.transport import channel
from trainer.data.types import ClientDataset
from trainer.device import Task, run_task
from trainer.local_train import TrainConfig
from trainer.privacy import PrivacyLedger
from trainer.privacy.device_side import DevicePrivacy
from trainer.strategies import make_strategy
from trainer.targets import linear_layers, task_shapes

MAX_TASK_BYTES = 4 << 30
# How long one check-in waits for a task: a waiting poll holds no server thread, and a task answers it at once,
# so a long wait only saves calls (2,000 idle devices polling every 10 s cost the orchestrator ~0.2 CPU-s/s).
CHECK_IN_WAIT_S = 40.0
WATCHDOG_GRACE_S = 15.0  # past a call's deadline, the device cancels it itself
log = logging.getLogger("hetlora.device")
# Statuses after which a device simply checks in again: a service restarting or a connection cut mid-call
# (SIGKILL of a server surfaces as UNAVAILABLE, CANCELLED, UNKNOWN or INTERNAL), or a round that ended
# without it. Anything else (PERMISSION_DENIED, INVALID_ARGUMENT, ...) needs a person.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.FAILED_PRECONDITION,
    }
)


def all_rounds_finished(error: grpc.RpcError) -> bool:
    return error.code() == grpc.StatusCode.FAILED_PRECONDITION and "rounds are finished" in (error.details() or "")


class BaseModelMismatchError(RuntimeError):
    """This device's base model is not the job's: it must not train (its factors would fit other weights)."""


@dataclass(frozen=True)
class RoundDone:
    round_id: int
    rank_before: int
    rank_after: int
    train_loss: float
    wire: WireBytes | None  # None when the device fell out of the secure-aggregation round


def report_unavailable(
    orchestrator: rpc.OrchestratorServiceStub, reason: pb.UnavailableReason.ValueType, detail: str
) -> None:
    """Tell the orchestrator why this device cannot train, so the operator sees it (best effort)."""
    request = pb.ReportUnavailableRequest(reason=reason, detail=detail[:1000])
    with contextlib.suppress(grpc.RpcError):  # the device stops either way; its own log has the reason
        orchestrator.ReportUnavailable(request, timeout=30)


class DeviceAgent:
    def __init__(
        self,
        orchestrator: rpc.OrchestratorServiceStub,
        aggregator_for: Callable[[str], agg_rpc.AggregatorServiceStub],
        model: torch.nn.Module,
        data: ClientDataset,
        ledger_path: Path | None = None,
        fingerprint: str = "",
    ) -> None:
        self.orchestrator, self.aggregator_for, self.model, self.data = orchestrator, aggregator_for, model, data
        self.fingerprint = fingerprint  # trainer.fingerprint of the base model this device loaded
        self.run_task = run_task  # what trains; the load harness (bench/load.py) swaps in a synthetic update
        self.layers = linear_layers(model)  # the task names the layers to adapt; these are what this model has
        # The key a pending check-in advertised: kept across polls until a task comes, because the orchestrator
        # may open a round with the key of a poll that then expires; a fresh key on the next poll would make
        # the aggregator refuse this device's signed advertisement. A new key for every round it trains.
        self._pending_signer: Ed25519Signer | None = None
        # The device's example-level ledger: kept across rounds (and across restarts when there is a path).
        self.ledger_path = ledger_path
        self.ledger: PrivacyLedger | None = None
        if ledger_path is not None and ledger_path.exists():
            self.ledger = PrivacyLedger.from_json(json.loads(ledger_path.read_text()))

    @classmethod
    def connect(
        cls,
        orchestrator: str,
        ca_pem: bytes,
        cert_pem: bytes,
        key_pem: bytes,
        model: torch.nn.Module,
        data: ClientDataset,
        ledger_path: Path | None = None,
        fingerprint: str = "",
    ) -> DeviceAgent:
        """An agent whose calls to the orchestrator and to the aggregator a task names use its enrolled cert."""

        def aggregator_for(target: str) -> agg_rpc.AggregatorServiceStub:
            return agg_rpc.AggregatorServiceStub(channel(target, ca_pem, cert_pem, key_pem, max_message_bytes=1 << 30))

        return cls(
            rpc.OrchestratorServiceStub(channel(orchestrator, ca_pem, cert_pem, key_pem)),
            aggregator_for,
            model,
            data,
            ledger_path,
            fingerprint,
        )

    def fetch(self, signer: Ed25519Signer, wait_s: float) -> tuple[pb.TaskHeader, bytes] | None:
        """Check in and wait for a task; None when there is none yet."""
        request = pb.GetTaskRequest(
            wait_ms=int(wait_s * 1000), signing_public_key=signer.public_bytes, base_model_fingerprint=self.fingerprint
        )
        header: pb.TaskHeader | None = None
        parts: list[bytes] = []
        guard: int | None = None
        try:
            call = self.orchestrator.GetTask(request, timeout=wait_s + 30)
            # The call's own deadline can fail to fire (seen at 500 channels in one process: a stream that
            # stalled once waited forever); the watchdog cancels it, and the next check-in gets the task again.
            guard = WATCHDOG.arm(wait_s + 30 + WATCHDOG_GRACE_S, getattr(call, "cancel", lambda: None))
            for message in call:
                if message.HasField("header"):
                    header = message.header
                    if header.factors_bytes > MAX_TASK_BYTES:
                        raise ValueError(f"task of {header.factors_bytes} bytes exceeds this device's limit")
                parts.append(message.factors_chunk)
        except grpc.RpcError as e:
            if (guard is not None and WATCHDOG.disarm(guard)) or e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return None  # no task yet, or a hung call the watchdog ended
            if e.code() == grpc.StatusCode.FAILED_PRECONDITION and BASE_MODEL_MISMATCH in (e.details() or ""):
                raise BaseModelMismatchError(e.details()) from None
            raise
        finally:
            if guard is not None:
                WATCHDOG.disarm(guard)
        if header is None:
            raise ValueError("task stream carried no header")
        if header.base_model_fingerprint and header.base_model_fingerprint != self.fingerprint:
            why = f"the task is for base model {header.base_model_fingerprint}, this device loaded {self.fingerprint}"
            self.report_unavailable(pb.UNAVAILABLE_REASON_BASE_MODEL, why)
            raise BaseModelMismatchError(f"{BASE_MODEL_MISMATCH}: {why}")
        data = b"".join(parts)
        if len(data) != header.factors_bytes:
            raise ValueError(f"task stream carried {len(data)} bytes, the header announced {header.factors_bytes}")
        return header, data

    def run_round(self, wait_s: float = 30.0, crash_before: str | None = None) -> RoundDone | None:
        """One check-in; trains and uploads when a task comes. ``crash_before`` (a stage) simulates a crash."""
        from secure_agg import Stage

        signer = self._pending_signer or Ed25519Signer.generate()
        self._pending_signer = signer
        fetched = self.fetch(signer, wait_s)
        if fetched is None:
            return None
        self._pending_signer = None  # this round uses it; the next check-in advertises a new key
        header, payload = fetched
        if header.signing_public_key and header.signing_public_key != signer.public_bytes:
            # The round was opened with a key this process never advertised (it restarted while an earlier
            # poll was pending): the aggregator would refuse its signature. Sit this round out as a dropout.
            log.warning(
                "round %d: opened with another signing key than this device holds; skipping it", header.round_id
            )
            return None
        strategy = make_strategy(header.strategy.name, strategy_config(header.strategy))
        task = Task(
            header.round_id,
            header.version,
            header.rank,
            factors_from_bytes(payload),
            header.seed,
            tuple(header.component_cohorts),
        )
        shapes = task_shapes(self.layers, task.factors)
        train = TrainConfig(steps=header.train.steps, batch_size=header.train.batch_size, lr=header.train.lr)
        report = self.run_task(strategy, self.model, self.data, task, train, self._privacy(header))
        self.save_ledger()  # spent once trained, whether or not the upload makes it into a sum
        assert report.contribution is not None
        sa = header.secure_agg
        edges = tuple(sa.bucket_edges)
        secure = SecureSumConfig(sa.weight_bound, sa.value_bound)
        if strategy.dense_upload:
            vector = encode_dense(report.contribution, shapes, secure)
        else:
            vector = encode_factors(report.contribution, shapes, edges, secure)
        # Report first: the orchestrator checks the report against the task and can still put the device out of
        # the secure round (a dropout, its masks removed) before its masked input is summed.
        self._report(
            pb.ReportTrainingRequest(
                round_id=header.round_id,
                rank_before=report.rank_before,
                rank_after=report.rank,
                train_loss=report.train_loss,
                num_examples=report.num_examples,
                upload_floats=report.upload_floats,
                example_privacy=spend_message(report.example_privacy) if report.example_privacy else None,
            ),
        )
        codec = FixedPointCodec(sa.value_bound, 1.0, sa.max_clients)
        stub = self.aggregator_for(sa.aggregator_target)
        try:
            wire: WireBytes | None = secure_upload(
                stub,
                header.round_id,
                signer,
                vector,
                1.0,
                codec,
                sa.deadline_ms / 1000,
                stop_before=Stage(crash_before) if crash_before else None,
            )
        except LeftRoundError:
            wire = None
        return RoundDone(header.round_id, report.rank_before, report.rank, report.train_loss, wire)

    def _privacy(self, header: pb.TaskHeader) -> DevicePrivacy:
        """The task's DP settings with this device's own ledger (BudgetExhaustedError when it is spent)."""
        example = example_dp_from(header.train)
        ledger = self.ledger
        if (
            example is not None
            and ledger is not None
            and (ledger.delta, ledger.accountant)
            != (
                example.delta,
                example.accountant,
            )
        ):
            raise ValueError(
                f"this device's ledger accounts at δ={ledger.delta} with {ledger.accountant}; the deployment "
                f"now asks δ={example.delta} with {example.accountant}: its ε would not add up"
            )
        privacy = DevicePrivacy(example, user_dp_from(header), self.ledger)
        self.ledger = privacy.ledger
        return privacy

    def save_ledger(self) -> None:
        if self.ledger_path is not None and self.ledger is not None:
            tmp = self.ledger_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.ledger.to_json()))
            tmp.replace(self.ledger_path)

    def report_unavailable(self, reason: pb.UnavailableReason.ValueType, detail: str) -> None:
        report_unavailable(self.orchestrator, reason, detail)

    def _report(self, request: pb.ReportTrainingRequest) -> None:
        """Plain metadata before the masked upload; a round the orchestrator no longer runs (it restarted) is
        not an error for the device: its masked update goes into the aggregator's sum or into nobody's."""
        try:
            self.orchestrator.ReportTraining(request, timeout=30)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise
