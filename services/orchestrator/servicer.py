"""gRPC face of the coordinator (``grpc.aio``): device identity from mTLS + the registry, tasks in chunks.

A device's long poll for a task is a coroutine waiting on the coordinator's wakeups, so waiting devices hold
no thread: a device that only wants to report is never queued behind hundreds that wait.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from services import errors
from services.api.hetlora.v1 import orchestrator_pb2 as pb
from services.api.hetlora.v1 import orchestrator_pb2_grpc as rpc
from services.auth import peer_identity, require_device
from services.deadlines import MAX_POLL_S
from services.errors import BASE_MODEL_MISMATCH, aio_grpc_errors, aio_stream_errors
from services.metrics import DEVICES_UNAVAILABLE, DOWNLOAD_BYTES
from services.orchestrator.coordinator import Coordinator
from services.orchestrator.task_codec import chunks
from services.privacy_settings import spend_from
from services.registry import DeviceRegistry
from trainer.device import Report

MAX_WAIT_S = MAX_POLL_S  # a long poll's longest wait; its server-side cap is a little longer
MAX_DETAIL_CHARS = 1000
REASONS = {pb.UNAVAILABLE_REASON_BAD_DATA: "bad_data", pb.UNAVAILABLE_REASON_BASE_MODEL: "base_model"}
log = logging.getLogger("hetlora.orchestrator")


@dataclass(frozen=True)
class TaskTemplate:
    """The parts of every task header that do not change between rounds."""

    strategy: pb.StrategySettings
    train: pb.TrainSettings
    aggregator_target: str
    deadline_ms: int
    user_dp: pb.UserDpSettings | None = None
    base_model_fingerprint: str = ""  # empty: not checked (tests that build a bare orchestrator)


class OrchestratorServicer(rpc.OrchestratorServiceServicer):
    def __init__(self, coordinator: Coordinator, registry: DeviceRegistry, template: TaskTemplate) -> None:
        self.coordinator, self.registry, self.template = coordinator, registry, template

    @aio_stream_errors
    async def GetTask(
        self, request: pb.GetTaskRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GetTaskResponse]:
        device = require_device(peer_identity(context), self.registry)
        self._require_base_model(device, request.base_model_fingerprint)
        task = await self.coordinator.check_in_async(
            device, request.signing_public_key, min(request.wait_ms / 1000, MAX_WAIT_S)
        )
        secure = self.coordinator.settings.secure
        header = pb.TaskHeader(
            round_id=task.round_id,
            version=task.version,
            rank=task.rank,
            seed=task.seed,
            strategy=self.template.strategy,
            train=self.template.train,
            secure_agg=pb.SecureAggSettings(
                aggregator_target=self.template.aggregator_target,
                bucket_edges=list(task.edges),
                value_bound=secure.value_bound,
                weight_bound=secure.weight_bound,
                max_clients=task.max_clients,
                deadline_ms=self.template.deadline_ms,
            ),
            factors_bytes=len(task.factors),
            user_dp=self.template.user_dp,
            component_cohorts=list(task.component_cohorts),
            base_model_fingerprint=self.template.base_model_fingerprint,
            signing_public_key=task.signing_key,
        )
        size = len(task.factors)
        log.info("round_id=%d device=%s: task sent (rank %d, %d bytes)", task.round_id, device, task.rank, size)
        for i, part in enumerate(chunks(task.factors)):
            yield pb.GetTaskResponse(header=header if i == 0 else None, factors_chunk=part)
            DOWNLOAD_BYTES.inc(len(part))

    @aio_grpc_errors
    async def ReportTraining(
        self, request: pb.ReportTrainingRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReportTrainingResponse:
        device = require_device(peer_identity(context), self.registry)
        report = Report(
            device,
            request.rank_before,
            request.rank_after,
            None,
            request.train_loss,
            request.num_examples,
            declared_upload_floats=request.upload_floats,
            example_privacy=spend_from(request),
        )
        self.coordinator.report(device, request.round_id, report)
        log.info(
            "round_id=%d device=%s: reported rank %d->%d, %d examples",
            request.round_id,
            device,
            request.rank_before,
            request.rank_after,
            request.num_examples,
        )
        return pb.ReportTrainingResponse()

    def _require_base_model(self, device: str, fingerprint: str) -> None:
        """Refuse a device whose base model is not the job's before it is ever sampled, and say so in the log."""
        expected = self.template.base_model_fingerprint
        if not expected or fingerprint == expected:
            return
        DEVICES_UNAVAILABLE.labels("base_model").inc()
        log.warning("device=%s refused: base model %r, the job trains %r", device, fingerprint, expected)
        raise errors.precondition(
            f"{BASE_MODEL_MISMATCH}: this device loaded {fingerprint or '(none reported)'}, the job trains "
            f"{expected}; start the device with the job's [model] path (same file, same target_modules)"
        )

    @aio_grpc_errors
    async def ReportUnavailable(
        self, request: pb.ReportUnavailableRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReportUnavailableResponse:
        device = require_device(peer_identity(context), self.registry)
        reason = REASONS.get(request.reason)
        if reason is None:
            raise errors.invalid("reason", f"must be one of {', '.join(pb.UnavailableReason.keys()[1:])}")
        if len(request.detail) > MAX_DETAIL_CHARS:
            raise errors.invalid("detail", f"at most {MAX_DETAIL_CHARS} characters")
        DEVICES_UNAVAILABLE.labels(reason).inc()
        log.warning("device=%s cannot train (%s): %r", device, reason, request.detail)
        self.coordinator.unavailable(device, f"{reason}: {request.detail}")
        return pb.ReportUnavailableResponse()

    @aio_grpc_errors
    async def GetStatus(self, request: pb.GetStatusRequest, context: grpc.aio.ServicerContext) -> pb.GetStatusResponse:
        caller = peer_identity(context)
        if caller.role not in ("admin", "service"):
            raise errors.denied("round status is for the operator (admin certificate) and services")
        version, _ = self.coordinator.engine.store.latest()
        return pb.GetStatusResponse(
            committed_version=version,
            rounds=[
                pb.RoundStatus(
                    round_id=r.round_id,
                    state=r.state,
                    version=r.version,
                    cohort=r.cohort,
                    reported=r.reported,
                    dropped=r.dropped,
                    detail=r.detail,
                )
                for r in self.coordinator.history
            ],
        )
