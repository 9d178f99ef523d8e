"""Rounds in real time: who is checked in, which cohort trains, when a round gives up on a device.

Transport-free: the servicer calls :meth:`Coordinator.check_in` (a device long-polling for a task) and
:meth:`Coordinator.report` (its plain metadata); a thread runs rounds through :class:`RoundEngine` and asks
the aggregator for the unmasked bucket sums. Nothing here ever holds one device's update in the clear.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable

import grpc
import numpy as np

from secure_agg import FixedPointCodec, RoundConfig, SecAggError, SumOutOfRangeError, check_sums
from services import errors
from services.orchestrator.listeners import RoundListener, RoundListeners, RoundSummary
from services.orchestrator.report_check import check_report
from services.orchestrator.round_guard import RoundGuard
from services.orchestrator.round_types import Assignment, DeviceTrust, RoundRecord, RoundSettings
from services.orchestrator.task_codec import task_payloads
from services.secure_sum import (
    DENSE_EDGES,
    bucket_edges,
    decode_dense,
    decode_factors,
    dense_layout,
    factor_layout,
)
from services.wakeups import Wakeups
from trainer.device import Report
from trainer.factors import ModuleShape
from trainer.privacy.federation import PrivacyBudgetExceededError
from trainer.round_engine import RoundEngine, RoundOutcome, RoundPlan
from trainer.strategies import AggregateSums

__all__ = ["Assignment", "Coordinator", "DeviceTrust", "RoundRecord", "RoundSettings"]
log = logging.getLogger("hetlora.orchestrator")
HISTORY_ROUNDS = 64  # round attempts kept for GetStatus and the metrics; older ones live in the store's records


class Coordinator:
    def __init__(
        self,
        engine: RoundEngine,
        shapes: dict[str, ModuleShape],
        settings: RoundSettings,
        device_rank: Callable[[str], int],
        open_secure_round: Callable[[RoundConfig, dict[int, tuple[str, bytes]], float], None],
        secure_sums: Callable[[RoundConfig, FixedPointCodec, float], tuple[tuple, tuple[int, ...]]],
        clock: Callable[[], float] = time.monotonic,
        first_round: int = 1,
        listener: RoundListener | None = None,
        trust: DeviceTrust | None = None,
    ) -> None:
        self.listener: RoundListener = listener or RoundListeners()
        self.trust = trust or DeviceTrust()
        self.engine, self.shapes, self.settings = engine, shapes, settings
        self._device_rank, self._open, self._sums, self._clock = device_rank, open_secure_round, secure_sums, clock
        self._cond = threading.Condition()
        self._wake = Wakeups(self._cond)  # the round thread and asyncio check-ins both wait on _cond
        self._seen: dict[str, tuple[float, bytes]] = {}  # device -> (last poll, signing key)
        self._assigned: dict[str, Assignment] = {}  # tasks waiting for their device's check-in
        # Every task of the running round, by device: a device whose download failed (a stalled stream, a
        # call that hung) checks in again with the same signing key and gets the same task again.
        self._handed: dict[str, Assignment] = {}
        self._polls: dict[str, int] = {}  # device -> number of its outstanding poll (one per device)
        self._reports: dict[str, Report] = {}
        self._refused: dict[str, int] = {}  # field -> reports refused for it in the running round
        self._round_ranks: dict[str, int] = {}  # the running round's cohort and the ranks it was assigned
        self._blocked: dict[int, set[str]] = {}  # round index -> devices its re-runs leave out
        self.guard = RoundGuard(self.trust.revoked_now, self.trust.exclude)
        self._current: RoundRecord | None = None
        # Bounded: memory grows with the cohort, not with the rounds run (the store keeps every version).
        self.history: deque[RoundRecord] = deque(maxlen=HISTORY_ROUNDS)
        self.outcomes: deque[RoundOutcome] = deque(maxlen=HISTORY_ROUNDS)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rounds", daemon=True)
        self._next_id = int(time.time() * 1000) * 1000  # unique across restarts: the aggregator never reuses ids
        self._index = first_round  # the next round to run; after a restart, the one after the last committed
        self.refusal: str | None = None  # why no more rounds run although some are left (the privacy budget)
        self.unavailable_devices: dict[str, str] = {}  # device -> why it said it cannot train (until it checks in)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._wake.notify_all()
        self._thread.join(timeout=30)
        self.guard.close()

    def join(self, timeout_s: float) -> bool:
        """Wait (bounded) for every round to finish; True when they did."""
        self._thread.join(timeout=timeout_s)
        return not self._thread.is_alive()

    @property
    def finished_all(self) -> bool:
        return self._index > self.settings.rounds or self.refusal is not None

    # device side ---------------------------------------------------------------------------------------
    def check_in(self, device_id: str, signing_key: bytes, wait_s: float) -> Assignment:
        """Mark the device available and wait for its task; DEADLINE_EXCEEDED when none came in ``wait_s``."""
        poll = self._register(device_id, signing_key)
        with self._cond:
            self._cond.wait_for(self._answerable(device_id, poll), timeout=wait_s)
            return self._hand_out(device_id, poll)

    async def check_in_async(self, device_id: str, signing_key: bytes, wait_s: float) -> Assignment:
        """``check_in`` for an asyncio handler: a waiting device is a registered waker, not a thread."""
        poll = self._register(device_id, signing_key)
        try:
            await self._wake.wait_for(self._answerable(device_id, poll), wait_s, key=device_id)
        except asyncio.CancelledError:  # the device cancelled, or the call hit its server-side cap
            with self._cond:
                self._drop_poll(device_id, poll)
            raise
        with self._cond:
            return self._hand_out(device_id, poll)

    def _drop_poll(self, device_id: str, poll: int) -> None:
        """Forget a cancelled poll at once (condition held), unless a newer one of the device replaced it.

        A task assigned meanwhile stays assigned: the device's next check-in receives it."""
        if self._polls.get(device_id) == poll:
            del self._polls[device_id]
            self._wake.notify(device_id)

    def _register(self, device_id: str, signing_key: bytes) -> int:
        """Validate a check-in and mark the device available; returns the number of its (one) outstanding poll."""
        if len(signing_key) != 32:
            raise errors.invalid("signing_public_key", "must be a raw 32-byte Ed25519 public key")
        if self.refusal is not None:
            raise errors.precondition(f"rounds are finished early: {self.refusal}")
        if self.finished_all:
            raise errors.precondition(f"all {self.settings.rounds} rounds are finished; nothing left to train")
        if device_id not in self.engine.device_ranks:
            self.engine.device_ranks[device_id] = self._device_rank(device_id)
        with self._cond:
            self.unavailable_devices.pop(device_id, None)
            # One outstanding poll per device: a newer one replaces it, and the older returns at once.
            poll = self._polls[device_id] = self._polls.get(device_id, 0) + 1
            self._hand_again(device_id, signing_key)
            if device_id not in self._assigned:
                self._seen[device_id] = (self._clock(), signing_key)
            self._wake.notify(device_id)  # the round thread, and this device's older poll (replaced)
        return poll

    def _hand_again(self, device_id: str, signing_key: bytes) -> None:
        """Re-issue this round's task to a cohort member that checks in again before reporting, with the key
        the round was opened with (condition held): its download failed, and it must not be a dropout for it.
        A new key means a restarted device that cannot sign for this round: it sits the round out."""
        task = self._handed.get(device_id)
        if task is None or device_id in self._assigned or device_id in self._reports:
            return
        if task.signing_key != signing_key or self.guard.excluded(device_id):
            return
        self._assigned[device_id] = task
        log.info("round_id=%d device=%s: checked in again before reporting; task sent again", task.round_id, device_id)

    def _answerable(self, device_id: str, poll: int) -> Callable[[], bool]:
        """When a waiting poll has its answer: a task, the end of the rounds, or a newer poll of the device."""
        return lambda: (
            device_id in self._assigned
            or self._stop.is_set()
            or self.refusal is not None
            or self._polls.get(device_id) != poll
        )

    def _hand_out(self, device_id: str, poll: int) -> Assignment:
        """The poll's answer (called with the condition held after its wait)."""
        if self._polls.get(device_id) != poll:
            raise errors.not_yet("superseded by a newer check-in from this device")
        del self._polls[device_id]
        if device_id in self._assigned:
            assignment = self._assigned.pop(device_id)
            if self.guard.excluded(device_id) or self.trust.revoked(device_id):
                # Revoked while its poll waited: no task, and out of the round.
                self.guard.exclude(device_id, "revoked")
                raise errors.device_revoked(device_id)
            return assignment
        if self.refusal is not None:
            raise errors.precondition(f"rounds are finished early: {self.refusal}")
        if self._stop.is_set():
            raise errors.unavailable("the orchestrator is shutting down")
        raise errors.not_yet("no task for this device yet; ask again")

    def report(self, device_id: str, round_id: int, report: Report) -> None:
        with self._cond:
            current = self._current
            if current is None or current.round_id != round_id or device_id not in current.cohort:
                raise errors.precondition(f"round {round_id} is not running with {device_id!r} in its cohort")
            if device_id in self._reports:
                raise errors.already(f"{device_id!r} already reported for round {round_id}")
            why = self.guard.excluded(device_id)
            if why is not None:
                raise errors.precondition(f"{device_id!r} is out of round {round_id}: {why}")
            dense = self.engine.strategy.dense_upload
            try:
                check_report(report, self._round_ranks[device_id], self.shapes, dense, self.trust.limits)
            except errors.ServiceError as e:
                field_name = e.message.split(":", 1)[0]
                log.warning("round_id=%d device=%s: report refused, out of the round: %s", round_id, device_id, e)
                self._refused[field_name] = self._refused.get(field_name, 0) + 1
                self.guard.exclude(device_id, f"report refused ({field_name})")
                raise
            self._reports[device_id] = report
            self._cond.notify_all()  # the round thread counts reports; no device waits on them

    def unavailable(self, device_id: str, why: str) -> None:
        """The device says it cannot train: it is not sampled again until it checks in anew."""
        with self._cond:
            self._seen.pop(device_id, None)
            self.unavailable_devices[device_id] = why

    # round loop ----------------------------------------------------------------------------------------
    def _present(self) -> list[str]:
        """Devices waiting in a poll now or that polled lately, less those left out of the next attempt (cheap:
        no registry read). A long poll outlasts ``presence_s``: its device is present for as long as it waits."""
        now = self._clock()
        blocked = self._blocked.get(self._index, set())
        return sorted(
            d
            for d, (t, _) in self._seen.items()
            if (d in self._polls or now - t <= self.settings.presence_s) and d not in blocked
        )

    def _available(self) -> list[str]:
        """The present devices that are not revoked: what a cohort is sampled from (one registry read)."""
        revoked = self.trust.revoked_now()
        return [d for d in self._present() if d not in revoked]

    def _run(self) -> None:
        s = self.settings
        while self._index <= s.rounds and not self._stop.is_set():
            index = self._index
            with self._cond:
                end = self._clock() + s.checkin_window_s
                while len(self._present()) < max(s.per_round, s.min_devices) and not self._stop.is_set():
                    left = end - self._clock()
                    if left <= 0:
                        break
                    self._cond.wait(timeout=min(left, 1.0))
                available = self._available()
            if self._stop.is_set():
                return
            if len(available) < s.min_devices:
                log.warning("round %d: only %d devices checked in; waiting for more", index, len(available))
                continue
            committed = False
            try:
                committed = self._round(index, available)
            except PrivacyBudgetExceededError as e:
                self.refusal = str(e)
                log.error("round %d refused: %s", index, e)
                with self._cond:
                    self._wake.notify_all()  # devices waiting for a task hear it now
                return
            except Exception:
                log.exception("round %d failed; the committed version is unchanged", index)
                if self.history and self.history[-1].round_index == index:
                    self.history[-1].state, self.history[-1].detail = "failed", "internal error (see log)"
            attempts = sum(r.round_index == index for r in self.history)
            if committed or attempts >= s.attempts_per_round:
                self._index = index + 1
                self._blocked.pop(index, None)
            else:  # re-run the round with a fresh cohort and a new secure round, after backing off
                self._stop.wait(min(30.0, 2.0**attempts))

    def _round(self, index: int, available: list[str]) -> bool:
        """Run one attempt at round ``index``; True when it committed a new version."""
        s = self.settings
        started = self._clock()
        size = min(len(available), max(s.min_devices, math.ceil(s.per_round * s.overselect)))
        plan = self.engine.plan(index, available, size)
        tasks = self.engine.tasks(plan)
        cohort = sorted(plan.cohort)
        dense = self.engine.strategy.dense_upload
        edges = DENSE_EDGES if dense else bucket_edges(list(plan.ranks.values()))
        layout = dense_layout(self.shapes) if dense else factor_layout(self.shapes, edges)
        ids = {d: i for i, d in enumerate(cohort)}
        levels = {ids[d]: 1 if dense else edges.index(plan.ranks[d]) for d in cohort}
        self._next_id += 1
        round_id = self._next_id
        config = RoundConfig.create(round_id, list(ids.values()), layout, levels, s.requirements)
        with self._cond:
            keys = {ids[d]: (d, self._seen[d][1]) for d in cohort}
        record = RoundRecord(round_id, index, "training", plan.version, tuple(cohort))
        self.history.append(record)
        try:
            self._open(config, keys, s.stage_timeout_s)
        except grpc.RpcError as e:
            self._finish_empty(record, plan, cohort, f"could not open the secure round: {e.code().name}: {e.details()}")
            return False
        self.guard.begin(round_id, ids)
        payloads = task_payloads(tasks)  # once per rank, outside the lock: check-ins are never held behind it
        with self._cond:
            self._current, self._reports, self._refused, self._handed = record, {}, {}, {}
            self._round_ranks = dict(plan.ranks)
            for d in cohort:
                t = tasks[d]
                self._assigned[d] = self._handed[d] = Assignment(
                    round_id,
                    index,
                    t.version,
                    t.rank,
                    t.seed,
                    payloads[d],
                    edges,
                    len(cohort),
                    t.component_cohorts,
                    keys[ids[d]][1],
                )
                self._seen.pop(d, None)  # busy until it polls again
            self._wake.notify_keys(cohort)  # the cohort's polls answer now; the others keep waiting
        log.info("round %d (id %d): cohort %s, ranks %s", index, round_id, cohort, dict(plan.ranks))
        self.listener.round_started(index, list(plan.ranks.values()))
        codec = FixedPointCodec(s.secure.value_bound, 1.0, len(cohort))
        try:
            sums, survivors = self._sums(config, codec, s.round_deadline_s)
            check_sums(sums, codec)
        except SumOutOfRangeError as e:
            log.error("round %d (id %d): %s; not committed, the round is re-run", index, round_id, e)
            self._finish_empty(record, plan, cohort, f"rejected: {e}", rejected="sum_out_of_range")
            return False
        except (SecAggError, TimeoutError, errors.ServiceError) as e:
            self._finish_empty(record, plan, cohort, f"secure aggregation failed: {e}")
            return False
        except grpc.RpcError as e:  # the aggregator said ABORTED, or went away
            self._finish_empty(record, plan, cohort, f"secure aggregation failed: {e.code().name}: {e.details()}")
            return False
        survived = {cohort[i] for i in survivors}
        excluded, tainted = self.guard.end()
        tainted |= survived & set(excluded)
        if tainted:
            who = ", ".join(f"{d} ({excluded.get(d, 'excluded')})" for d in sorted(tainted))
            log.error("round %d (id %d): sums include devices put out of the round: %s; re-run", index, round_id, who)
            self._blocked.setdefault(index, set()).update(excluded, tainted)
            self._finish_empty(record, plan, cohort, f"rejected: sums include {who}", rejected="excluded_device")
            return False
        with self._cond:
            end = self._clock() + s.report_grace_s
            while not survived <= set(self._reports) and self._clock() < end:
                self._cond.wait(timeout=end - self._clock())
            reports = [
                self._reports.get(d) or Report(d, plan.ranks[d], plan.ranks[d], None, float("nan"), 0)
                for d in sorted(survived)
            ]
            self._end_assignments(cohort)
            refused = tuple(sorted(self._refused.items()))
        if dense:
            products, product_weight = decode_dense(sums, self.shapes)
            component = AggregateSums({}, products, product_weight, len(survived))
        else:
            factor_sums = decode_factors(sums, self.shapes, edges, self.engine.strategy.global_rank)
            component = AggregateSums(factor_sums, {}, {}, len(survived))
        dropped = [d for d in cohort if d not in survived]
        outcome = self.engine.finish(plan, reports, dropped, component)
        self.outcomes.append(outcome)
        record.state, record.version = "committed", outcome.version
        record.reported, record.dropped = tuple(sorted(survived)), tuple(dropped)
        losses = [r.train_loss for r in reports if np.isfinite(r.train_loss)]
        record.detail = f"mean train loss {np.mean(losses):.4f}" if losses else ""
        record.wall_s = self._clock() - started
        upload = 4 * sum(r.upload_floats for r in reports)
        after = [r.rank for r in reports]
        self.listener.round_finished(
            RoundSummary(
                True,
                outcome.version,
                len(survived),
                len(dropped),
                record.wall_s,
                tuple(after),
                upload,
                outcome.extra,
                refused_reports=refused,
            )
        )
        log.info(
            "round %d committed version %d (%d reported, %d dropped)",
            index,
            outcome.version,
            len(survived),
            len(dropped),
        )
        return True

    def _end_assignments(self, cohort: list[str]) -> None:
        """The round is over (condition held): tasks nobody fetched are void, and none is handed out again."""
        self._current, self._handed = None, {}
        for d in cohort:
            self._assigned.pop(d, None)

    def _finish_empty(
        self, record: RoundRecord, plan: RoundPlan, cohort: list[str], why: str, rejected: str = ""
    ) -> None:
        """End an attempt without committing; devices put out of it are left out of the round's re-runs."""
        excluded, tainted = self.guard.end()
        self._blocked.setdefault(record.round_index, set()).update(excluded, tainted)
        with self._cond:
            self._end_assignments(cohort)
            refused = tuple(sorted(self._refused.items()))
        outcome = self.engine.finish(plan, [], cohort)
        self.outcomes.append(outcome)
        record.state, record.dropped, record.detail = "rejected" if rejected else "failed", tuple(cohort), why
        summary = RoundSummary(False, outcome.version, dropped=len(cohort), rejected=rejected, refused_reports=refused)
        self.listener.round_finished(summary)
        log.warning("round %d failed, version %d kept: %s", record.round_index, outcome.version, why)
