"""gRPC face of the aggregator (``grpc.aio``): identities from the mTLS peer, chunked uploads under a cap.

Waiting calls (a device's ``AwaitStage``, the orchestrator's ``GetRoundResult``) are coroutines that hold no
thread; the few steps that do CPU work (verifying and folding in a stage message) run in a worker thread so
they never stall the event loop for the devices that are waiting.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import grpc
import numpy as np

from secure_agg import Stage
from services import errors
from services.aggregator.handler import AggregatorHandler, Member
from services.api.hetlora.v1 import aggregator_pb2 as pb
from services.api.hetlora.v1 import aggregator_pb2_grpc as rpc
from services.auth import peer_identity
from services.errors import aio_grpc_errors
from services.pki import Identity

STAGE_FROM_WIRE: dict[pb.Stage.ValueType, Stage] = {
    pb.STAGE_ADVERTISE_KEYS: Stage.ADVERTISE_KEYS,
    pb.STAGE_SHARE_KEYS: Stage.SHARE_KEYS,
    pb.STAGE_MASKED_INPUT: Stage.MASKED_INPUT,
    pb.STAGE_CONSISTENCY_CHECK: Stage.CONSISTENCY_CHECK,
    pb.STAGE_UNMASK: Stage.UNMASK,
}
STAGE_TO_WIRE = {v: k for k, v in STAGE_FROM_WIRE.items()}


def _stage(value: pb.Stage.ValueType) -> Stage:
    if value not in STAGE_FROM_WIRE:
        raise errors.invalid("stage", f"unknown stage {value}; use one of STAGE_ADVERTISE_KEYS .. STAGE_UNMASK")
    return STAGE_FROM_WIRE[value]


class AggregatorServicer(rpc.AggregatorServiceServicer):
    def __init__(self, handler: AggregatorHandler) -> None:
        self.handler = handler
        self._calls = itertools.count()

    @aio_grpc_errors
    async def OpenRound(self, request: pb.OpenRoundRequest, context: grpc.aio.ServicerContext) -> pb.OpenRoundResponse:
        members = [Member(m.device_id, m.client_id, m.signing_public_key) for m in request.members]
        self.handler.open_round(
            peer_identity(context), request.round_id, request.round_config, members, request.stage_timeout_ms / 1000
        )
        return pb.OpenRoundResponse()

    @aio_grpc_errors
    async def GetRoundResult(
        self, request: pb.GetRoundResultRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetRoundResultResponse:
        result = await self.handler.result_async(peer_identity(context), request.round_id, request.wait_ms / 1000)
        return pb.GetRoundResultResponse(
            survivors=result.survivors,
            dropped=result.dropped,
            buckets=[
                pb.BucketResult(
                    index=o.index,
                    cohort=o.cohort,
                    status=str(o.status),
                    merged_into=o.merged_into,
                    ring_sum=np.asarray(result.ring_sums[o.index], dtype="<u4").tobytes()
                    if o.index in result.ring_sums
                    else b"",
                )
                for o in result.outcomes
            ],
        )

    @aio_grpc_errors
    async def AwaitStage(
        self, request: pb.AwaitStageRequest, context: grpc.aio.ServicerContext
    ) -> pb.AwaitStageResponse:
        payload, client, keys = await self.handler.await_stage_async(
            peer_identity(context), request.round_id, _stage(request.stage), request.wait_ms / 1000
        )
        return pb.AwaitStageResponse(
            payload=payload,
            client_id=client,
            signing_keys=[pb.SigningKey(client_id=c, public_key=k) for c, k in sorted(keys.items())],
        )

    @aio_grpc_errors
    async def SubmitStage(
        self, request: AsyncIterator[pb.SubmitStageRequest], context: grpc.aio.ServicerContext
    ) -> pb.SubmitStageResponse:
        caller = peer_identity(context)
        round_id, stage, payload = await self._received(caller, request)
        await asyncio.to_thread(self.handler.submit, caller, round_id, stage, payload)
        return pb.SubmitStageResponse(received_bytes=len(payload))

    @aio_grpc_errors
    async def ExcludeMembers(
        self, request: pb.ExcludeMembersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExcludeMembersResponse:
        summed = self.handler.exclude(
            peer_identity(context), request.round_id, list(request.client_ids), request.reason
        )
        return pb.ExcludeMembersResponse(already_summed=summed)

    async def _received(
        self, caller: Identity, request: AsyncIterator[pb.SubmitStageRequest]
    ) -> tuple[int, Stage, bytes]:
        """One upload's chunks, joined. While they arrive the buffer is counted in ``handler.uploads``; it goes
        with the call however the call ends (a stream idle past its timeout ends inside the ``async for``)."""
        parts: list[bytes] = []
        size, key, call, limit = 0, None, next(self._calls), 0
        try:
            async for chunk in request:
                if key is None:
                    key = (chunk.round_id, chunk.stage)
                    # A non-member's upload costs no buffer, and a member's may not pass what its stage needs.
                    limit = self.handler.admit(caller, chunk.round_id, _stage(chunk.stage))
                elif key != (chunk.round_id, chunk.stage):
                    raise errors.invalid(
                        "round_id/stage", "every chunk of one upload must name the same round and stage"
                    )
                size += len(chunk.chunk)
                if size > limit:
                    raise errors.exhausted(f"upload exceeds the {limit} bytes this device may send in this stage")
                parts.append(chunk.chunk)
                self.handler.uploads[call] = size
            if key is None:
                raise errors.invalid("chunk", "empty upload: send at least one chunk")
            return key[0], _stage(key[1]), b"".join(parts)
        finally:
            self.handler.uploads.pop(call, None)
