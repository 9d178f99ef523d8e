"""The orchestrator's side of the aggregator: open a round for a cohort, then read the decoded bucket sums."""

from __future__ import annotations

import time
from collections.abc import Mapping

import grpc
import numpy as np

from secure_agg import BucketOutcome, BucketStatus, BucketSum, FixedPointCodec, RoundConfig, decode_sum
from services.api.hetlora.v1 import aggregator_pb2 as pb
from services.api.hetlora.v1 import aggregator_pb2_grpc as rpc


def open_round(
    stub: rpc.AggregatorServiceStub,
    config: RoundConfig,
    members: Mapping[int, tuple[str, bytes]],
    stage_timeout_s: float,
) -> None:
    """``members``: client id → (device id, Ed25519 public key the device signs with this round)."""
    request = pb.OpenRoundRequest(
        round_id=config.round_id,
        round_config=config.to_bytes(),
        members=[pb.CohortMember(device_id=d, client_id=c, signing_public_key=k) for c, (d, k) in members.items()],
        stage_timeout_ms=int(stage_timeout_s * 1000),
    )
    stub.OpenRound(request, timeout=30)


def round_sums(
    stub: rpc.AggregatorServiceStub, config: RoundConfig, codec: FixedPointCodec, deadline_s: float
) -> tuple[tuple[BucketSum, ...], tuple[int, ...]]:
    """Wait (bounded) for the round, then decode Σ s·x and Σ s per bucket; also returns the survivors."""
    end = time.monotonic() + deadline_s
    while True:
        left = end - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"secure aggregation round {config.round_id} did not finish in {deadline_s:.0f} s")
        wait_ms = int(min(5000, left * 1000))
        try:
            reply = stub.GetRoundResult(
                pb.GetRoundResultRequest(round_id=config.round_id, wait_ms=wait_ms), timeout=wait_ms / 1000 + 10
            )
            break
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise
    outcomes = tuple(
        BucketOutcome(b.index, b.cohort, BucketStatus(b.status), b.merged_into if b.HasField("merged_into") else None)
        for b in reply.buckets
    )
    ring = {b.index: np.frombuffer(b.ring_sum, dtype="<u4").astype(np.uint32) for b in reply.buckets if b.ring_sum}
    return decode_sum(ring, outcomes, config.layout, codec), tuple(reply.survivors)


def exclude_members(stub: rpc.AggregatorServiceStub, round_id: int, clients: list[int], why: str) -> tuple[int, ...]:
    """Put members out of a running round; returns the ones whose masked input was already summed."""
    request = pb.ExcludeMembersRequest(round_id=round_id, client_ids=clients, reason=why[:200])
    return tuple(stub.ExcludeMembers(request, timeout=10).already_summed)
