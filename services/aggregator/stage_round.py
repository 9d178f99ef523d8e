"""One SecAgg+ round driven in real time: stages open, collect device messages, and close on a deadline.

``secure_agg.SecAggServer`` is a pure state machine; this class adds what a network needs: a condition
variable devices wait on for each stage's server message, a driver thread that closes a stage once every
expected device answered or its deadline passed (the missing ones are dropouts), and the checks that tie a
protocol message to the authenticated device that sent it. Transport-free: the servicer maps its errors.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from secure_agg import (
    AbortedError,
    AdvertiseKeys,
    AggregateResult,
    ConsistencySignature,
    Ed25519Directory,
    MaskedInput,
    RoundConfig,
    SecAggError,
    SecAggServer,
    ShareKeys,
    Stage,
    StageListener,
    UnmaskResponse,
)
from secure_agg.errors import MalformedMessageError
from services import errors
from services.wakeups import Wakeups

log = logging.getLogger("hetlora.aggregator")

STAGES = (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.CONSISTENCY_CHECK, Stage.UNMASK)
MASKED_HEADER_BYTES = 1 + 4 + 32 + 8  # type tag, client id, session id, length
SHARE_BYTES = 40  # a Shamir share (33 bytes) and its framing

_PARSERS: dict[Stage, Callable[[bytes], Any]] = {
    Stage.ADVERTISE_KEYS: AdvertiseKeys.from_bytes,
    Stage.SHARE_KEYS: ShareKeys.from_bytes,
    Stage.MASKED_INPUT: MaskedInput.from_bytes,
    Stage.CONSISTENCY_CHECK: ConsistencySignature.from_bytes,
    Stage.UNMASK: UnmaskResponse.from_bytes,
}


class StageRound:
    def __init__(
        self,
        config: RoundConfig,
        signing_keys: Mapping[int, bytes],
        stage_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
        listener: StageListener | None = None,
    ) -> None:
        self.config = config
        self.signing_keys = dict(signing_keys)
        self._server: SecAggServer | None = SecAggServer.start(config, Ed25519Directory(self.signing_keys), listener)
        self._summed: frozenset[int] = frozenset()  # whose masked input the sum holds, kept once the state is freed
        self._timeout = stage_timeout_s
        self._clock = clock
        self._cond = threading.Condition()
        self._wake = Wakeups(self._cond)  # threads and asyncio handlers both wait on _cond
        self._stage = 0  # index into STAGES; len(STAGES) once finished
        self._outgoing: dict[Stage, bytes | dict[int, bytes]] = {Stage.ADVERTISE_KEYS: config.to_bytes()}
        self._expected: dict[Stage, frozenset[int]] = {Stage.ADVERTISE_KEYS: frozenset(config.clients)}
        self._arrived: set[int] = set()
        self._waiting: dict[int, int] = {}  # client -> number of its one waiting message_for call
        self._excluded: dict[int, str] = {}  # client -> why the orchestrator put it out of the round
        self._deadline = clock() + stage_timeout_s
        self.result: AggregateResult | None = None
        self.abort_reason: str | None = None
        self._driver = threading.Thread(target=self._drive, name=f"secagg-round-{config.round_id}", daemon=True)
        self._driver.start()

    @property
    def finished(self) -> bool:
        return self.result is not None or self.abort_reason is not None

    def message_for(self, client: int, stage: Stage, wait_s: float) -> bytes:
        """The server message that opens ``stage`` for ``client``, waiting up to ``wait_s`` for it."""
        with self._cond:
            poll, ready = self._wait_registered(client, stage)
            self._cond.wait_for(ready, timeout=wait_s)
            return self._message(client, stage, poll)

    async def message_for_async(self, client: int, stage: Stage, wait_s: float) -> bytes:
        """``message_for`` for an asyncio handler: the wait holds no thread."""
        with self._cond:
            poll, ready = self._wait_registered(client, stage)
        try:
            await self._wake.wait_for(ready, wait_s, key=client)
        except asyncio.CancelledError:  # the client cancelled, or the call hit its server-side cap
            with self._cond:
                self._drop_wait(client, poll)
            raise
        with self._cond:
            return self._message(client, stage, poll)

    def _drop_wait(self, client: int, poll: int) -> None:
        """Forget a cancelled wait at once (condition held), unless a newer one of the client replaced it."""
        if self._waiting.get(client) == poll:
            del self._waiting[client]
            self._wake.notify(client)

    def _wait_registered(self, client: int, stage: Stage) -> tuple[int, Callable[[], bool]]:
        """Register ``client``'s wait (one per client: a newer one replaces the older, which returns at once);
        returns its number and when it may stop waiting. Called with the condition held."""
        index = STAGES.index(stage)
        poll = self._waiting[client] = self._waiting.get(client, 0) + 1
        self._wake.notify(client)  # its older wait (replaced) returns; the cohort's other waits need not wake
        return (
            poll,
            lambda: (
                self._stage >= index or self.finished or self._waiting.get(client) != poll or client in self._excluded
            ),
        )

    def _message(self, client: int, stage: Stage, poll: int) -> bytes:
        """After a wait (condition held): the message, or why there is none."""
        if self._waiting.get(client) != poll:
            raise errors.not_yet(f"superseded by a newer wait for {stage} from this client")
        del self._waiting[client]
        self._refuse_excluded(client)
        if self.abort_reason is not None:
            raise errors.aborted(f"secure aggregation round aborted: {self.abort_reason}")
        if self.result is not None:
            raise errors.precondition(f"the round completed without this client's {stage}")
        if stage not in self._outgoing:
            raise errors.not_yet(f"{stage} has not opened yet; ask again")
        if client not in self._expected[stage]:
            raise errors.precondition(f"client {client} was dropped before {stage} (it missed a deadline)")
        message = self._outgoing[stage]
        return message[client] if isinstance(message, dict) else message

    def submit(self, client: int, stage: Stage, payload: bytes) -> None:
        """Hand ``client``'s message for the open stage to the state machine."""
        with self._cond:
            if self.finished:
                raise errors.aborted(f"round already {'completed' if self.result else 'aborted'}")
            self._refuse_excluded(client)
            current = STAGES[self._stage]
            if stage != current:
                raise errors.precondition(f"stage {stage} is not open (the round is at {current})")
            if client not in self._expected[stage]:
                raise errors.precondition(f"client {client} is not expected in {stage} (dropped earlier)")
            if client in self._arrived:
                raise errors.already(f"{stage} already received from client {client} (replayed message)")
            try:
                message = _PARSERS[stage](payload)
            except (MalformedMessageError, ValueError) as e:
                raise errors.invalid("chunk", f"not a {stage} message ({e})") from None
            if message.client_id != client:
                raise errors.denied(f"message claims client {message.client_id}, but the caller is client {client}")
            try:
                assert self._server is not None  # freed only once finished, refused above
                _receive(self._server, stage, message)
            except SecAggError as e:
                raise errors.denied(f"{stage} message refused: {e}") from None
            self._arrived.add(client)
            if self._stage_complete(stage):
                self._wake.notify_all()

    def max_upload_bytes(self, client: int, stage: Stage) -> int:
        """The most bytes an honest ``client`` sends in ``stage``: an upload past it is refused as it streams.

        A masked input is exactly its level's prefix of the layout (plus a 48-byte header); the other messages
        are keys, signatures and shares, bounded by the cohort and the number of buckets."""
        cfg = self.config
        if stage == Stage.MASKED_INPUT:
            return MASKED_HEADER_BYTES + 4 * cfg.layout.prefix(cfg.level_of.get(client, 0))
        per_peer = 96 + SHARE_BYTES * (cfg.layout.n_buckets + 1)  # one sealed bundle or one owner's shares
        return 4096 + len(cfg.clients) * per_peer

    def exclude(self, clients: Iterable[int], why: str) -> tuple[int, ...]:
        """Put members out of the round: refused from now on, dropouts from the next stage close.

        Returns the ones whose masked input is already in the sum: nothing can take it out again."""
        with self._cond:
            for c in clients:
                self._excluded.setdefault(c, why)
            summed = self._summed if self._server is None else set(self._server.state.masked_from)
            self._wake.notify_all()  # their waits end now, and a stage no longer waits for them
            return tuple(sorted(c for c in clients if c in summed))

    def _refuse_excluded(self, client: int) -> None:
        if client in self._excluded:
            raise errors.denied(f"client {client} is out of this round: {self._excluded[client]}")

    def _stage_complete(self, stage: Stage) -> bool:
        """Everyone expected in ``stage`` has answered, except members put out of the round."""
        return self._arrived >= self._expected[stage] - self._excluded.keys()

    def abort(self, reason: str) -> None:
        with self._cond:
            if not self.finished and self._server is not None:
                self._server.abort(reason)
                self.abort_reason = reason
                self._wake.notify_all()

    def wait(self, timeout_s: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.finished, timeout=timeout_s)

    async def wait_async(self, timeout_s: float) -> bool:
        return await self._wake.wait_for(lambda: self.finished, timeout_s)

    def _drive(self) -> None:
        try:
            self._run_stages()
        finally:
            with self._cond:
                self._release()

    def _release(self) -> None:
        """A finished round keeps only its result: the state machine (the masked sum, every bundle and share)
        and the stage messages go at once, so memory grows with the rounds running, not with those run."""
        if self._server is not None:
            self._summed = frozenset(self._server.state.masked_from)
        self._server = None
        self._outgoing.clear()
        self._wake.notify_all()

    def _run_stages(self) -> None:
        for index, stage in enumerate(STAGES):
            with self._cond:
                while not (self.finished or self._stage_complete(stage)):
                    left = self._deadline - self._clock()
                    if left <= 0:
                        break  # the stage closes without the devices that did not answer in time
                    self._cond.wait(timeout=left)
                if self.finished:
                    return
                missing = sorted(self._expected[stage] - self._arrived - self._excluded.keys())
                if missing:
                    log.info(
                        "round_id=%d %s: closed on its deadline without clients %s",
                        self.config.round_id,
                        stage,
                        missing,
                    )
                try:
                    self._close(index, stage)
                except AbortedError as e:
                    self.abort_reason = str(e) or "aborted"
                finally:
                    self._wake.notify_all()
                if self.finished:
                    return

    def _close(self, index: int, stage: Stage) -> None:
        server = self._server
        assert server is not None
        if stage == Stage.UNMASK:
            self.result = server.finalize()
            self._stage = len(STAGES)
            return
        nxt = STAGES[index + 1]
        if stage == Stage.ADVERTISE_KEYS:
            self._outgoing[nxt] = server.close_advertise_keys().to_bytes()
            expected = set(server.state.adverts)
        elif stage == Stage.SHARE_KEYS:
            relays = server.close_share_keys()
            self._outgoing[nxt] = {c: m.to_bytes() for c, m in relays.items()}
            expected = set(relays)
        elif stage == Stage.MASKED_INPUT:
            self._outgoing[nxt] = server.close_masked_input().to_bytes()
            expected = set(server.state.survivors)
        else:
            self._outgoing[nxt] = server.close_consistency_check().to_bytes()
            expected = set(server.state.signers)
        self._expected[nxt] = frozenset(expected)
        self._arrived = set()
        self._deadline = self._clock() + self._timeout
        self._stage = index + 1


def _receive(server: SecAggServer, stage: Stage, message: Any) -> None:
    receivers: dict[Stage, Callable[[Any], None]] = {
        Stage.ADVERTISE_KEYS: server.receive_advertisement,
        Stage.SHARE_KEYS: server.receive_shares,
        Stage.MASKED_INPUT: server.receive_masked_input,
        Stage.CONSISTENCY_CHECK: server.receive_consistency,
        Stage.UNMASK: server.receive_unmask,
    }
    receivers[stage](message)
