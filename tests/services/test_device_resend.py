"""A device sends a stage message again when the aggregator dropped it as stalled, and stops at its deadline."""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest

from secure_agg import Stage
from services.device.secure_upload import send_stage


class Status(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code


class Aggregator:
    """Answers SubmitStage with the scripted statuses, then OK; keeps every upload it read whole."""

    def __init__(self, *statuses: grpc.StatusCode) -> None:
        self.statuses, self.uploads = list(statuses), list[bytes]()

    def SubmitStage(self, requests: Any, timeout: float) -> Any:  # noqa: N802 - the gRPC method name
        self.uploads.append(b"".join(r.chunk for r in requests))
        if self.statuses:
            raise Status(self.statuses.pop(0))
        return None


def test_a_stalled_upload_is_sent_again_whole() -> None:
    aggregator = Aggregator(grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.DEADLINE_EXCEEDED)
    send_stage(aggregator, 3, Stage.ADVERTISE_KEYS, b"advert", time.monotonic() + 60)  # type: ignore[arg-type]
    assert aggregator.uploads == [b"advert"] * 3


def test_an_earlier_attempt_that_landed_counts_as_sent() -> None:
    aggregator = Aggregator(grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ALREADY_EXISTS)
    send_stage(aggregator, 3, Stage.SHARE_KEYS, b"shares", time.monotonic() + 60)  # type: ignore[arg-type]
    assert len(aggregator.uploads) == 2


@pytest.mark.parametrize("code", [grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.PERMISSION_DENIED])
def test_a_refusal_on_the_first_attempt_is_raised(code: grpc.StatusCode) -> None:
    with pytest.raises(grpc.RpcError):
        send_stage(Aggregator(code), 3, Stage.UNMASK, b"x", time.monotonic() + 60)  # type: ignore[arg-type]


def test_no_resend_past_the_devices_deadline() -> None:
    aggregator = Aggregator(grpc.StatusCode.DEADLINE_EXCEEDED)
    with pytest.raises(grpc.RpcError):
        send_stage(aggregator, 3, Stage.MASKED_INPUT, b"x", time.monotonic() + 0.5)  # type: ignore[arg-type]
    assert len(aggregator.uploads) == 1
