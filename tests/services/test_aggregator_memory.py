"""The aggregator's memory: a non-member's upload is refused on its first chunk, and finished rounds are
forgotten past a bound (a forgotten round id still counts as used)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from secure_agg import BucketLayout, Ed25519Signer, RoundConfig, SecAggRequirements, Stage
from services.aggregator.handler import KEEP_FINISHED_ROUNDS, AggregatorHandler, Member
from services.aggregator.servicer import STAGE_TO_WIRE, AggregatorServicer
from services.api.hetlora.v1 import aggregator_pb2 as pb
from services.pki import CertificateAuthority, init_pki

LAYOUT = BucketLayout.for_rank_edges((0, 2), component_size=4)


class AbortedError(Exception):
    pass


class PeerContext:
    """What the servicer reads from a gRPC context: the peer's certificate, and abort."""

    def __init__(self, cert_pem: bytes) -> None:
        self.cert_pem = cert_pem
        self.code: grpc.StatusCode | None = None

    def auth_context(self) -> dict:
        return {"x509_pem_cert": [self.cert_pem]}

    async def abort(self, code: grpc.StatusCode, message: str) -> None:
        self.code = code
        raise AbortedError(message)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    pki = tmp_path_factory.mktemp("pki")
    init_pki(pki)
    ca = CertificateAuthority.load(pki)
    named = (("service", "service"), ("m-0", "device"), ("x", "device"))
    return {name: ca.issue(name, role)[0] for name, role in named}


def open_one(handler: AggregatorHandler, certs: dict[str, bytes], round_id: int) -> None:
    from services.pki import identity_of

    config = RoundConfig.create(round_id, [0, 1], LAYOUT, None, SecAggRequirements(0.05, 0.1))
    members = [Member(f"m-{c}", c, Ed25519Signer.generate().public_bytes) for c in (0, 1)]
    handler.open_round(identity_of(certs["service"]), round_id, config.to_bytes(), members, 5.0)


def test_a_non_members_upload_is_refused_on_its_first_chunk(certs: dict[str, bytes]) -> None:
    handler = AggregatorHandler(max_message_bytes=1 << 20)
    open_one(handler, certs, 1)
    pulled: list[int] = []

    async def upload() -> AsyncIterator[pb.SubmitStageRequest]:
        for i in range(1000):  # 1,000 chunks of 64 KiB a stranger would like the aggregator to buffer
            pulled.append(i)
            yield pb.SubmitStageRequest(round_id=1, stage=STAGE_TO_WIRE[Stage.MASKED_INPUT], chunk=b"\0" * 65536)

    context = PeerContext(certs["x"])
    with pytest.raises(AbortedError, match="not in round 1"):
        asyncio.run(AggregatorServicer(handler).SubmitStage(upload(), context))  # type: ignore[arg-type]
    assert context.code == grpc.StatusCode.PERMISSION_DENIED and pulled == [0]


def test_a_members_upload_past_what_its_stage_needs_is_refused_as_it_streams(certs: dict[str, bytes]) -> None:
    handler = AggregatorHandler(max_message_bytes=1 << 30)  # the transport would allow a GiB
    open_one(handler, certs, 2)
    run, _ = handler._round(2)
    limit = run.max_upload_bytes(0, Stage.MASKED_INPUT)
    assert limit == 45 + 4 * LAYOUT.total  # its level's prefix, exactly, plus the header
    pulled: list[int] = []

    async def upload() -> AsyncIterator[pb.SubmitStageRequest]:
        for i in range(1000):
            pulled.append(i)
            yield pb.SubmitStageRequest(round_id=2, stage=STAGE_TO_WIRE[Stage.MASKED_INPUT], chunk=b"\0" * 64)

    context = PeerContext(certs["m-0"])
    with pytest.raises(AbortedError, match=f"{limit} bytes"):
        asyncio.run(AggregatorServicer(handler).SubmitStage(upload(), context))  # type: ignore[arg-type]
    assert context.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(pulled) == limit // 64 + 1 and not handler.uploads  # stopped at the limit, nothing kept


def test_finished_rounds_are_forgotten_past_the_bound_and_their_ids_stay_used(certs: dict[str, bytes]) -> None:
    handler = AggregatorHandler(max_message_bytes=1 << 20)
    for round_id in range(1, 40):
        open_one(handler, certs, round_id)
        run, _ = handler._round(round_id)
        run.abort("the test finishes it")  # a finished round, as after its result was read
        run._driver.join(timeout=10)
        assert run._server is None and not run._outgoing  # it keeps its outcome, not the masked sum or bundles
    assert handler.rounds_held <= KEEP_FINISHED_ROUNDS + 1
    with pytest.raises(Exception, match="never reused"):
        open_one(handler, certs, 2)  # forgotten, yet still a reuse


def test_one_waiting_stage_call_per_client_a_newer_one_replaces_the_older(certs: dict[str, bytes]) -> None:
    import threading

    from services.errors import ServiceError

    handler = AggregatorHandler(max_message_bytes=1 << 20)
    open_one(handler, certs, 1)
    run, _ = handler._round(1)
    outcome: list[BaseException] = []

    def older_wait() -> None:
        try:
            run.message_for(0, Stage.SHARE_KEYS, wait_s=30)  # opens only after every client advertised
        except ServiceError as e:
            outcome.append(e)

    older = threading.Thread(target=older_wait)
    older.start()
    for _ in range(1000):  # bounded (10 s): the first wait registers as soon as its thread runs
        if 0 in run._waiting:
            break
        older.join(timeout=0.01)
    with pytest.raises(ServiceError, match="has not opened yet"):
        run.message_for(0, Stage.SHARE_KEYS, wait_s=0.05)
    older.join(timeout=10)
    assert not older.is_alive() and "superseded by a newer wait" in str(outcome[0])
    run.abort("done")
