"""In-memory driver: one full round between a server and n clients, with dropouts injected by stage.

Every message goes through ``to_bytes``/``from_bytes`` as it would over a transport, so byte counts are
real and parsing is exercised. CPU time is charged per role with ``time.process_time`` around each call
(the driver is single-threaded), which is what the benchmark reports.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

import numpy as np

from secure_agg.buckets import BucketSum, decode_sum, encode_weighted
from secure_agg.client import SecAggClient
from secure_agg.config import RoundConfig, Stage
from secure_agg.encoding import FixedPointCodec
from secure_agg.errors import AbortedError
from secure_agg.identity import Ed25519Directory, Ed25519Signer
from secure_agg.messages import (
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    KeyDirectory,
    MaskedInput,
    ShareKeys,
    ShareRelay,
    UnmaskRequest,
    UnmaskResponse,
)
from secure_agg.server import AggregateResult, SecAggServer

R = TypeVar("R")
_ORDER = (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.CONSISTENCY_CHECK, Stage.UNMASK)


@dataclass(frozen=True)
class ClientInput:
    """A client's float update (layout.dim elements, by rank bucket) and its aggregation weight."""

    values: np.ndarray
    weight: float = 1.0


@dataclass
class RoundReport:
    """What happened in a simulated round, and what it cost each role."""

    result: AggregateResult | None
    sums: tuple[BucketSum, ...] | None
    abort_reason: str | None
    server_cpu_s: float = 0.0
    client_cpu_s: dict[int, float] = field(default_factory=dict)
    upload_bytes: dict[int, int] = field(default_factory=dict)
    download_bytes: dict[int, int] = field(default_factory=dict)

    @property
    def completed(self) -> bool:
        return self.result is not None


class _Clock:
    def __init__(self, timer: Callable[[], float]) -> None:
        self.timer = timer
        self.server = 0.0
        self.clients: dict[int, float] = {}

    def run_server(self, fn: Callable[[], R]) -> R:
        t0 = self.timer()
        try:
            return fn()
        finally:
            self.server += self.timer() - t0

    def run_client(self, cid: int, fn: Callable[[], R]) -> R:
        t0 = self.timer()
        try:
            return fn()
        finally:
            self.clients[cid] = self.clients.get(cid, 0.0) + self.timer() - t0


def simulate_round(
    config: RoundConfig,
    inputs: Mapping[int, ClientInput] | Mapping[int, np.ndarray],
    codec: FixedPointCodec | None = None,
    drop_at: Mapping[int, Stage] | None = None,
    rng: np.random.Generator | None = None,
    timer: Callable[[], float] = time.process_time,
) -> RoundReport:
    """Run one round. With ``codec``, inputs are :class:`ClientInput` floats encoded inside the client's
    timed work and the report carries decoded bucket sums; without it, inputs are ready uint32 vectors.
    ``drop_at[c] = stage`` makes client c vanish before sending its message of that stage."""
    drop_at = drop_at or {}
    rng = rng or np.random.default_rng()
    signers = {c: Ed25519Signer.generate() for c in config.clients}
    verifier = Ed25519Directory({c: s.public_bytes for c, s in signers.items()})
    clock = _Clock(timer)
    server = SecAggServer.start(config, verifier)
    clients = {c: SecAggClient.start(c, config, signers[c], verifier) for c in config.clients}
    report = RoundReport(None, None, None)
    up = dict.fromkeys(config.clients, 0)
    down = dict.fromkeys(config.clients, 0)

    def alive(c: int, stage: Stage) -> bool:
        return c not in drop_at or _ORDER.index(drop_at[c]) > _ORDER.index(stage)

    def to_server(c: int, payload: bytes, parse: Callable[[bytes], object], handle: Callable[..., None]) -> None:
        up[c] += len(payload)
        clock.run_server(lambda: handle(parse(payload)))

    def exchange(
        c: int,
        stage: Stage,
        payload: bytes,
        client_fn: Callable[[int, bytes], bytes],
        parse: Callable[[bytes], object],
        handle: Callable[..., None],
    ) -> None:
        """Deliver one server message to client c and its answer back, unless c has dropped by ``stage``.

        A client that gives up on its own (``AbortedError``, e.g. no mask neighbour left in a bucket) drops out.
        """
        if alive(c, stage):
            down[c] += len(payload)
            try:
                answer = clock.run_client(c, partial(client_fn, c, payload))
            except AbortedError:
                return
            to_server(c, answer, parse, handle)

    def encode_input(c: int) -> np.ndarray:
        item = inputs[c]
        if codec is None:
            assert isinstance(item, np.ndarray)
            return item
        assert isinstance(item, ClientInput)
        return encode_weighted(item.values, item.weight, config.level_of[c], config.layout, codec, rng)

    def advertise(c: int) -> bytes:
        return clients[c].advertise_keys().to_bytes()

    def share(c: int, directory: bytes) -> bytes:
        return clients[c].share_keys(KeyDirectory.from_bytes(directory)).to_bytes()

    def mask(c: int, relay: bytes) -> bytes:
        return clients[c].masked_input(ShareRelay.from_bytes(relay), encode_input(c)).to_bytes()

    def check(c: int, request: bytes) -> bytes:
        return clients[c].consistency_check(ConsistencyRequest.from_bytes(request)).to_bytes()

    def reveal(c: int, request: bytes) -> bytes:
        return clients[c].unmask(UnmaskRequest.from_bytes(request)).to_bytes()

    try:
        for c in config.clients:
            if alive(c, Stage.ADVERTISE_KEYS):
                data = clock.run_client(c, partial(advertise, c))
                to_server(c, data, AdvertiseKeys.from_bytes, server.receive_advertisement)
        directory = clock.run_server(lambda: server.close_advertise_keys().to_bytes())
        for c in server.state.adverts:
            if alive(c, Stage.SHARE_KEYS):
                down[c] += len(directory)
                data = clock.run_client(c, partial(share, c, directory))
                to_server(c, data, ShareKeys.from_bytes, server.receive_shares)
        relays = clock.run_server(lambda: {r: m.to_bytes() for r, m in server.close_share_keys().items()})
        for c, relay in relays.items():
            exchange(c, Stage.MASKED_INPUT, relay, mask, MaskedInput.from_bytes, server.receive_masked_input)
        request = clock.run_server(lambda: server.close_masked_input().to_bytes())
        for c in server.state.survivors:
            exchange(
                c, Stage.CONSISTENCY_CHECK, request, check, ConsistencySignature.from_bytes, server.receive_consistency
            )
        unmask = clock.run_server(lambda: server.close_consistency_check().to_bytes())
        for c in server.state.signers:
            exchange(c, Stage.UNMASK, unmask, reveal, UnmaskResponse.from_bytes, server.receive_unmask)
        result = clock.run_server(server.finalize)
        report.result = result
        if codec is not None:
            report.sums = decode_sum(result.ring_sums, result.outcomes, config.layout, codec)
    except AbortedError as exc:
        report.abort_reason = exc.reason
    report.server_cpu_s = clock.server
    report.client_cpu_s = clock.clients
    report.upload_bytes = up
    report.download_bytes = down
    return report
