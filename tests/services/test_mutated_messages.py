"""Mutated valid requests: the mutations the services' fuzz loops send, and the transport's answers to them.

The loops in test_round_fuzz and test_enrollment_fuzz start from a valid request for every method and send it
mutated (``mutate``, ``mutate_stream``); every answer must be a precise status. The tests here pin the transport
layer itself on small stand-in servicers: an undecodable chunk inside a stream, and a call that sends no request
message (or two), are INVALID_ARGUMENT with a message naming the type or method, on both server kinds, with
one warning line and no traceback in the log.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest

from services.aio_transport import AioServer
from services.api.hetlora.v1 import aggregator_pb2 as apb
from services.api.hetlora.v1 import aggregator_pb2_grpc as agg_rpc
from services.api.hetlora.v1 import orchestrator_pb2 as opb
from services.api.hetlora.v1 import orchestrator_pb2_grpc as orch_rpc
from services.errors import aio_grpc_errors, aio_stream_errors, grpc_errors
from services.transport import MAX_MESSAGE_BYTES, add_servicer, bind, new_server
from tests.services.mutations import KINDS, STREAM_KINDS, mutate, mutate_stream, no_tracebacks

pytestmark = pytest.mark.timeout(60)


class SyncUploads(agg_rpc.AggregatorServiceServicer):
    """A thread-pool servicer with a client stream, the shape that answered INTERNAL for a bad chunk."""

    @grpc_errors
    def SubmitStage(self, request: Iterator[apb.SubmitStageRequest], context: grpc.ServicerContext) -> object:  # noqa: N802 (names fixed by the .proto)
        return apb.SubmitStageResponse(received_bytes=sum(len(c.chunk) for c in request))

    @grpc_errors
    def AwaitStage(self, request: apb.AwaitStageRequest, context: grpc.ServicerContext) -> object:  # noqa: N802 (names fixed by the .proto)
        return apb.AwaitStageResponse(client_id=request.round_id % 7)


class AioUploads(agg_rpc.AggregatorServiceServicer):
    @aio_grpc_errors
    async def SubmitStage(self, request: AsyncIterator[apb.SubmitStageRequest], context: object) -> object:  # noqa: N802 (names fixed by the .proto)
        return apb.SubmitStageResponse(received_bytes=sum([len(c.chunk) async for c in request]))

    @aio_grpc_errors
    async def AwaitStage(self, request: apb.AwaitStageRequest, context: object) -> object:  # noqa: N802 (names fixed by the .proto)
        return apb.AwaitStageResponse(client_id=request.round_id % 7)


class AioTasks(orch_rpc.OrchestratorServiceServicer):
    @aio_stream_errors
    async def GetTask(self, request: opb.GetTaskRequest, context: object) -> AsyncIterator[opb.GetTaskResponse]:  # noqa: N802 (names fixed by the .proto)
        for part in (b"a", b"b"):
            yield opb.GetTaskResponse(factors_chunk=part)


@pytest.fixture(scope="module")
def ports() -> Iterator[dict[str, int]]:
    """A thread-pool server and a grpc.aio server (plaintext, loopback) with the stand-in servicers."""
    sync = new_server()
    add_servicer(sync, apb.DESCRIPTOR.services_by_name["AggregatorService"], SyncUploads())
    aio = AioServer(MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES, "fuzz-standin")
    aio.add_servicer(apb.DESCRIPTOR.services_by_name["AggregatorService"], AioUploads())
    aio.add_servicer(opb.DESCRIPTOR.services_by_name["OrchestratorService"], AioTasks())
    found = {"sync": bind(sync, "127.0.0.1:0", None), "aio": aio.bind("127.0.0.1:0", None)}
    sync.start()
    aio.start()
    yield found
    sync.stop(None).wait()
    aio.stop(None)


def _code(call: object, *args: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        answer = call(*args, timeout=5)  # type: ignore[operator]
        if not isinstance(answer, bytes):
            list(answer)  # a response stream: its status comes at its end
    return info.value.code(), info.value.details() or ""


@pytest.mark.parametrize("server", ["sync", "aio"])
def test_an_undecodable_chunk_after_a_valid_one_is_invalid_argument_naming_the_type(
    ports: dict[str, int], server: str, caplog: pytest.LogCaptureFixture
) -> None:
    upload = grpc.insecure_channel(f"127.0.0.1:{ports[server]}").stream_unary(
        "/hetlora.v1.AggregatorService/SubmitStage"
    )
    valid = apb.SubmitStageRequest(round_id=1, stage=apb.STAGE_MASKED_INPUT, chunk=b"x" * 10).SerializeToString()
    assert upload(iter([valid, valid]), timeout=5) == apb.SubmitStageResponse(received_bytes=20).SerializeToString()
    code, details = _code(upload, iter([valid, b"\xff\xff", valid]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("request could not be decoded as hetlora.v1.SubmitStageRequest: "), details
    assert "(message 2 of the stream)" in details
    code, details = _code(upload, iter([b"\x0a\x05ab"]))  # truncated: field 1 claims 5 bytes, 2 follow
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "(message 1 of the stream)" in details
    no_tracebacks(caplog)
    refusals = [r for r in caplog.records if r.getMessage().startswith("refused a request")]
    assert len(refusals) == 2 and all(r.levelno == logging.WARNING for r in refusals)


@pytest.mark.parametrize("server", ["sync", "aio"])
def test_a_call_without_its_request_message_is_answered_at_once(
    ports: dict[str, int], server: str, caplog: pytest.LogCaptureFixture
) -> None:
    """gRPC alone answers UNIMPLEMENTED (thread pool) or nothing at all until the client's deadline (grpc.aio)."""
    ch = grpc.insecure_channel(f"127.0.0.1:{ports[server]}")
    paths = ["/hetlora.v1.AggregatorService/AwaitStage"] + (
        ["/hetlora.v1.OrchestratorService/GetTask"] * (server == "aio")
    )
    started = time.monotonic()
    for path in paths:
        code, details = _code(ch.stream_stream(path), iter([]))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (path, code, details)
        assert details == f"{path} takes exactly one request message; this call sent none"
    assert time.monotonic() - started < 2  # not held until the 5 s client deadline
    body = apb.AwaitStageRequest(round_id=9).SerializeToString()
    answer = ch.stream_unary(paths[0])(iter([body]), timeout=5)
    assert apb.AwaitStageResponse.FromString(answer).client_id == 2
    if server == "aio":  # it can wait for the end of the stream without holding a thread
        code, details = _code(ch.stream_unary(paths[0]), iter([body, body]))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.endswith("sent more than one"), details
        tasks = ch.unary_stream("/hetlora.v1.OrchestratorService/GetTask")(b"", timeout=5)
        assert [opb.GetTaskResponse.FromString(r).factors_chunk for r in tasks] == [b"a", b"b"]
    no_tracebacks(caplog)


def test_mutations_are_seeded_and_cover_every_kind() -> None:
    """Same seed, same mutants (the fuzz loops are reproducible), and each kind is drawn in 1500 mutants."""
    bases = [
        opb.ReportTrainingRequest(round_id=3, rank_before=8, rank_after=4, train_loss=1.5, num_examples=10),
        opb.ReportUnavailableRequest(reason=opb.UNAVAILABLE_REASON_BAD_DATA, detail="disk"),
        apb.ExcludeMembersRequest(round_id=3, client_ids=[1, 2], reason="r"),
    ]
    ids = {"round_id": (0, 2**64 - 1)}
    first = [mutate(bases[0], random.Random(5), ids) for _ in range(3)]
    assert first == [mutate(bases[0], random.Random(5), ids) for _ in range(3)]
    rng = random.Random(7)
    kinds = {mutate(bases[i % 3], rng, ids).kind for i in range(1500)}
    assert kinds == set(KINDS)
    chunk = apb.SubmitStageRequest(round_id=1, stage=apb.STAGE_ADVERTISE_KEYS, chunk=b"abc")
    stream_kinds = {mutate_stream([chunk, chunk], rng, {"stage": (5,)}).kind.split("/")[0] for _ in range(200)}
    assert stream_kinds == set(STREAM_KINDS)
