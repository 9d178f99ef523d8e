"""A device's side of one SecAgg+ round against the aggregator service.

For each stage: wait (long poll, bounded) for the server's message, compute the answer with
``secure_agg.SecAggClient`` and stream it back in chunks. The device's update leaves it only masked.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import numpy as np

from secure_agg import (
    ConsistencyRequest,
    Ed25519Directory,
    Ed25519Signer,
    FixedPointCodec,
    KeyDirectory,
    RoundConfig,
    SecAggClient,
    ShareRelay,
    Stage,
    UnmaskRequest,
    encode_weighted,
)
from services.aggregator.servicer import STAGE_TO_WIRE
from services.api.hetlora.v1 import aggregator_pb2 as pb
from services.api.hetlora.v1 import aggregator_pb2_grpc as rpc

CHUNK_BYTES = 1 << 20
POLL_MS = 5000


@dataclass(frozen=True)
class WireBytes:
    """Protocol message bytes a device sent and received in one round (gRPC framing excluded)."""

    up: int
    down: int


class LeftRoundError(Exception):
    """The device is no longer part of the round (dropped at a deadline, or the round aborted)."""


def secure_upload(
    stub: rpc.AggregatorServiceStub,
    round_id: int,
    signer: Ed25519Signer,
    values: np.ndarray,
    weight: float,
    codec: FixedPointCodec,
    deadline_s: float,
    stop_before: Stage | None = None,
    rng: np.random.Generator | None = None,
) -> WireBytes:
    """Run every stage for this device's ``values``; returns protocol bytes each way. ``stop_before`` simulates a
    crash."""
    end = time.monotonic() + deadline_s
    sent = received = 0

    def await_stage(stage: Stage) -> pb.AwaitStageResponse:
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"round {round_id}: {stage} did not open within the device's deadline")
            wait_ms = int(min(POLL_MS, left * 1000))
            try:
                request = pb.AwaitStageRequest(round_id=round_id, stage=STAGE_TO_WIRE[stage], wait_ms=wait_ms)
                reply: pb.AwaitStageResponse = stub.AwaitStage(request, timeout=wait_ms / 1000 + 10)
                nonlocal received
                received += reply.ByteSize()
                return reply
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    continue
                if e.code() in (grpc.StatusCode.ABORTED, grpc.StatusCode.FAILED_PRECONDITION):
                    raise LeftRoundError(e.details()) from None
                raise

    def submit(stage: Stage, payload: bytes) -> None:
        nonlocal sent
        if stop_before == stage:
            raise LeftRoundError(f"stopped before {stage} (simulated crash)")
        send_stage(stub, round_id, stage, payload, end)
        sent += len(payload)

    start = await_stage(Stage.ADVERTISE_KEYS)
    config = RoundConfig.from_bytes(start.payload)
    verifier = Ed25519Directory({k.client_id: k.public_key for k in start.signing_keys})
    me = start.client_id
    client = SecAggClient.start(me, config, signer, verifier)
    submit(Stage.ADVERTISE_KEYS, client.advertise_keys().to_bytes())
    directory = KeyDirectory.from_bytes(await_stage(Stage.SHARE_KEYS).payload)
    submit(Stage.SHARE_KEYS, client.share_keys(directory).to_bytes())
    relay = ShareRelay.from_bytes(await_stage(Stage.MASKED_INPUT).payload)
    vector = encode_weighted(values, weight, config.level_of[me], config.layout, codec, rng)
    submit(Stage.MASKED_INPUT, client.masked_input(relay, vector).to_bytes())
    check = ConsistencyRequest.from_bytes(await_stage(Stage.CONSISTENCY_CHECK).payload)
    submit(Stage.CONSISTENCY_CHECK, client.consistency_check(check).to_bytes())
    unmask = UnmaskRequest.from_bytes(await_stage(Stage.UNMASK).payload)
    submit(Stage.UNMASK, client.unmask(unmask).to_bytes())
    return WireBytes(sent, received)


def send_stage(stub: rpc.AggregatorServiceStub, round_id: int, stage: Stage, payload: bytes, end: float) -> None:
    """Upload one stage message, again from its first chunk when the server dropped it as stalled (its idle
    timeout answers DEADLINE_EXCEEDED: "send it again"), until ``end`` (monotonic)."""
    for attempt in itertools.count():
        try:
            stub.SubmitStage(_chunks(round_id, stage, payload), timeout=max(1.0, end - time.monotonic()))
            return
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.ALREADY_EXISTS and attempt > 0:
                return  # an earlier attempt landed and only its answer was lost
            if e.code() != grpc.StatusCode.DEADLINE_EXCEEDED or end - time.monotonic() <= 1.0:
                raise


def _chunks(round_id: int, stage: Stage, payload: bytes) -> Iterator[pb.SubmitStageRequest]:
    wire = STAGE_TO_WIRE[stage]
    for start in range(0, max(len(payload), 1), CHUNK_BYTES):
        yield pb.SubmitStageRequest(round_id=round_id, stage=wire, chunk=payload[start : start + CHUNK_BYTES])
