"""ExcludeMembers: the orchestrator puts a member out of a running secure round (a revoked device, a refused
report); from then on its calls are refused and it is a dropout whose masks SecAgg+ removes."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from secure_agg import Ed25519Signer, RoundConfig, SecAggRequirements, Stage
from services.aggregator.client import exclude_members, open_round, round_sums
from services.aggregator.servicer import STAGE_TO_WIRE
from services.api.hetlora.v1 import aggregator_pb2 as pb
from services.device.secure_upload import LeftRoundError, secure_upload
from tests.services.test_aggregator_service import (
    CODEC,
    EDGES,
    LAYOUT,
    RANKS,
    assert_unmasked_sums_match,
    code_of,
    stub_for,
)

pytestmark = pytest.mark.timeout(120)
STAGE_TIMEOUT_S = 30.0


def round_with_exclusion(pki: Path, aggregator, round_id: int, victim: int, leaves_before: Stage):
    """Every device runs the round; ``victim`` leaves before ``leaves_before`` and is then excluded."""
    rng = np.random.default_rng(round_id)
    values = {c: rng.uniform(-1, 1, LAYOUT.dim).astype(np.float32) for c in range(len(RANKS))}
    weights = {c: float(rng.uniform(0.2, 1.0)) for c in values}
    levels = {c: EDGES.index(r) for c, r in enumerate(RANKS)}
    config = RoundConfig.create(round_id, list(values), LAYOUT, levels, SecAggRequirements(0.05, 0.34))
    signers = {c: Ed25519Signer.generate() for c in values}
    orchestrator = stub_for(pki, aggregator.port, "service", "service")
    open_round(orchestrator, config, {c: (f"dev-{c}", s.public_bytes) for c, s in signers.items()}, STAGE_TIMEOUT_S)

    def device(c: int) -> None:
        stub = stub_for(pki, aggregator.port, f"dev-{c}", "device")
        stop = leaves_before if c == victim else None
        with contextlib.suppress(LeftRoundError):  # the victim leaves on purpose
            secure_upload(stub, round_id, signers[c], values[c], weights[c], CODEC, 60, stop)

    threads = {c: threading.Thread(target=device, args=(c,)) for c in values}
    for t in threads.values():
        t.start()
    threads[victim].join(timeout=60)  # it has done everything it will do this round
    started = time.monotonic()
    summed = exclude_members(orchestrator, round_id, [victim], "revoked")
    sums, survivors = round_sums(orchestrator, config, CODEC, deadline_s=60)
    elapsed = time.monotonic() - started
    for t in threads.values():
        t.join(timeout=60)
    victim_stub = stub_for(pki, aggregator.port, f"dev-{victim}", "device")
    return values, weights, levels, sums, survivors, summed, elapsed, victim_stub


def test_a_member_excluded_after_sharing_keys_is_a_dropout_whose_masks_are_removed(pki: Path, aggregator) -> None:
    values, weights, levels, sums, survivors, summed, elapsed, victim = round_with_exclusion(
        pki, aggregator, 201, victim=3, leaves_before=Stage.MASKED_INPUT
    )
    assert summed == () and 3 not in survivors
    assert_unmasked_sums_match(values, weights, levels, sums, survivors)
    assert elapsed < STAGE_TIMEOUT_S  # the stage closed without waiting for the excluded member's deadline
    ask = pb.AwaitStageRequest(round_id=201, stage=STAGE_TO_WIRE[Stage.MASKED_INPUT], wait_ms=100)
    with pytest.raises(grpc.RpcError) as refused:
        victim.AwaitStage(ask, timeout=10)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "out of this round: revoked" in (refused.value.details() or "")


def test_excluding_a_member_whose_input_is_summed_says_so(pki: Path, aggregator) -> None:
    *_, survivors, summed, elapsed, _ = round_with_exclusion(pki, aggregator, 202, victim=4, leaves_before=Stage.UNMASK)
    assert summed == (4,) and 4 in survivors  # nothing can take it out: the orchestrator will not commit this
    assert elapsed < STAGE_TIMEOUT_S


def test_exclude_members_validates_its_caller_and_input(pki: Path, aggregator) -> None:
    config = RoundConfig.create(203, [0, 1, 2], LAYOUT, None, SecAggRequirements(0.05, 0.1))
    members = {c: (f"x-{c}", Ed25519Signer.generate().public_bytes) for c in range(3)}
    orchestrator = stub_for(pki, aggregator.port, "service", "service")
    open_round(orchestrator, config, members, 5)
    device = stub_for(pki, aggregator.port, "x-0", "device")
    assert code_of(lambda: exclude_members(device, 203, [1], "no")) == grpc.StatusCode.PERMISSION_DENIED
    assert code_of(lambda: exclude_members(orchestrator, 404, [1], "no")) == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: exclude_members(orchestrator, 203, [7], "no")) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: exclude_members(orchestrator, 203, [], "no")) == grpc.StatusCode.INVALID_ARGUMENT
    long = pb.ExcludeMembersRequest(round_id=203, client_ids=[1], reason="x" * 201)
    assert code_of(lambda: orchestrator.ExcludeMembers(long, timeout=10)) == grpc.StatusCode.INVALID_ARGUMENT
    assert exclude_members(orchestrator, 203, [1], "revoked") == ()
