"""Transport-free aggregator logic: open rounds for the orchestrator, map device identities to round ids.

Only a ``service`` certificate (the orchestrator) may open rounds and read results; a device may act only as
the client id the orchestrator assigned to its certificate's name in that round.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from secure_agg import AggregateResult, ConfigError, MalformedMessageError, RoundConfig, Stage, StageListener
from services import errors
from services.aggregator.stage_round import StageRound
from services.deadlines import MAX_POLL_S
from services.pki import Identity

log = logging.getLogger("hetlora.aggregator")
MAX_STAGE_TIMEOUT_S = 3600.0
MAX_WAIT_S = MAX_POLL_S  # a long poll's longest wait; its server-side cap is a little longer
MAX_OPEN_ROUNDS = 64
MAX_REASON_CHARS = 200
# Finished rounds are kept only so a retried GetRoundResult still finds its sums; beyond this many the oldest
# is forgotten, so memory grows with the rounds in flight, not with the rounds ever run.
KEEP_FINISHED_ROUNDS = 4


@dataclass(frozen=True)
class Member:
    device_id: str
    client_id: int
    signing_public_key: bytes


class AggregatorHandler:
    def __init__(self, max_message_bytes: int, listener: StageListener | None = None) -> None:
        self.max_message_bytes = max_message_bytes
        self.listener = listener
        self._rounds: dict[int, tuple[StageRound, dict[str, int]]] = {}
        self._forgotten_up_to = -1  # round ids are increasing: an id at or below a forgotten one is a reuse
        self._lock = threading.Lock()
        # In-flight uploads (call number -> bytes buffered so far): what stalled peers could hold. Each entry
        # lives only while its call does; the stream idle timeout (services.deadlines) ends a stalled one.
        self.uploads: dict[int, int] = {}

    def open_round(
        self, caller: Identity, round_id: int, config_bytes: bytes, members: list[Member], timeout_s: float
    ) -> None:
        _require_service(caller)
        try:
            config = RoundConfig.from_bytes(config_bytes)
        except (MalformedMessageError, ConfigError, ValueError) as e:
            raise errors.invalid("round_config", f"not a secure_agg round config ({e})") from None
        if config.round_id != round_id:
            raise errors.invalid("round_id", f"{round_id} differs from the config's round id {config.round_id}")
        if not 0 < timeout_s <= MAX_STAGE_TIMEOUT_S:
            raise errors.invalid("stage_timeout_ms", f"must be in (0, {MAX_STAGE_TIMEOUT_S:g}] seconds")
        by_client = {m.client_id: m for m in members}
        if sorted(by_client) != list(config.clients) or len({m.device_id for m in members}) != len(members):
            raise errors.invalid("members", "need exactly one member per client id in the config, distinct devices")
        if any(len(m.signing_public_key) != 32 for m in members):
            raise errors.invalid("members.signing_public_key", "must be a raw 32-byte Ed25519 public key")
        with self._lock:
            if round_id in self._rounds or round_id <= self._forgotten_up_to:
                raise errors.already(f"round {round_id} was already opened; round ids are never reused")
            self._forget_finished()
            live = sum(not r.finished for r, _ in self._rounds.values())
            if live >= MAX_OPEN_ROUNDS:
                raise errors.exhausted(f"{live} rounds are still running; finish or abort some first")
            keys = {m.client_id: m.signing_public_key for m in members}
            self._rounds[round_id] = (
                StageRound(config, keys, timeout_s, listener=self.listener),
                {m.device_id: m.client_id for m in members},
            )
        log.info("opened secure round %d: %d devices, %d rank buckets", round_id, len(members), config.layout.n_buckets)

    def result(self, caller: Identity, round_id: int, wait_s: float) -> AggregateResult:
        _require_service(caller)
        run, _ = self._round(round_id)
        run.wait(min(wait_s, MAX_WAIT_S))
        return _finished(run, round_id)

    async def result_async(self, caller: Identity, round_id: int, wait_s: float) -> AggregateResult:
        """``result`` for an asyncio handler: the wait holds no thread."""
        _require_service(caller)
        run, _ = self._round(round_id)
        await run.wait_async(min(wait_s, MAX_WAIT_S))
        return _finished(run, round_id)

    def await_stage(
        self, caller: Identity, round_id: int, stage: Stage, wait_s: float
    ) -> tuple[bytes, int, dict[int, bytes]]:
        run, client = self._member(caller, round_id)
        payload = run.message_for(client, stage, min(wait_s, MAX_WAIT_S))
        return payload, client, run.signing_keys if stage == Stage.ADVERTISE_KEYS else {}

    async def await_stage_async(
        self, caller: Identity, round_id: int, stage: Stage, wait_s: float
    ) -> tuple[bytes, int, dict[int, bytes]]:
        """``await_stage`` for an asyncio handler: a waiting device is a registered waker, not a thread."""
        run, client = self._member(caller, round_id)
        payload = await run.message_for_async(client, stage, min(wait_s, MAX_WAIT_S))
        return payload, client, run.signing_keys if stage == Stage.ADVERTISE_KEYS else {}

    def submit(self, caller: Identity, round_id: int, stage: Stage, payload: bytes) -> None:
        run, client = self._member(caller, round_id)
        run.submit(client, stage, payload)

    def exclude(self, caller: Identity, round_id: int, clients: list[int], why: str) -> tuple[int, ...]:
        """The orchestrator puts members out of a running round; returns those already in the sum."""
        _require_service(caller)
        run, _ = self._round(round_id)
        unknown = sorted(set(clients) - set(run.config.clients))
        if not clients or unknown:
            raise errors.invalid("client_ids", f"must name members of round {round_id}; unknown: {unknown[:10]}")
        if len(why) > MAX_REASON_CHARS:
            raise errors.invalid("reason", f"at most {MAX_REASON_CHARS} characters")
        summed = run.exclude(clients, why)
        log.warning("round_id=%d: clients %s put out of the round (%s)", round_id, sorted(clients), why)
        return summed

    def admit(self, caller: Identity, round_id: int, stage: Stage) -> int:
        """On an upload's first chunk, before any of it is buffered: refuse a non-member, and return the most
        bytes this member may send in ``stage`` (the upload is refused as soon as it passes it)."""
        run, client = self._member(caller, round_id)
        return min(self.max_message_bytes, run.max_upload_bytes(client, stage))

    @property
    def rounds_held(self) -> int:
        with self._lock:
            return len(self._rounds)

    def _forget_finished(self) -> None:
        """Drop the oldest finished rounds past ``KEEP_FINISHED_ROUNDS`` (called with the lock held)."""
        finished = sorted(rid for rid, (run, _) in self._rounds.items() if run.finished)
        for rid in finished[: max(0, len(finished) - KEEP_FINISHED_ROUNDS)]:
            del self._rounds[rid]
            self._forgotten_up_to = max(self._forgotten_up_to, rid)

    def _round(self, round_id: int) -> tuple[StageRound, dict[str, int]]:
        with self._lock:
            found = self._rounds.get(round_id)
        if found is None:
            raise errors.not_found(f"no secure aggregation round {round_id} here")
        return found

    def _member(self, caller: Identity, round_id: int) -> tuple[StageRound, int]:
        if caller.role != "device":
            raise errors.denied("stage calls are for enrolled devices (client certificates from enrollment)")
        run, members = self._round(round_id)
        if caller.common_name not in members:
            raise errors.denied(f"device {caller.common_name!r} is not in round {round_id}'s cohort")
        return run, members[caller.common_name]


def _finished(run: StageRound, round_id: int) -> AggregateResult:
    """The round's sums, or why there are none."""
    if run.abort_reason is not None:
        raise errors.aborted(f"round {round_id} aborted: {run.abort_reason}")
    if run.result is None:
        raise errors.precondition(f"round {round_id} is still running; ask again")
    return run.result


def _require_service(caller: Identity) -> None:
    if caller.role != "service":
        raise errors.denied("only the orchestrator (a service certificate) may open rounds and read sums")
