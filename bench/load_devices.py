"""One load-harness worker process: many devices as threads, each the real device agent (gRPC, mTLS, SecAgg+).

Started by ``bench/load.py``. A device skips training and uploads a small random perturbation of the factors
its task handed it: the same shapes, masking, stages and bytes as a trained update, so hundreds of devices
load the control plane on 2 cores. Writes per-device bytes, rounds, kills and "training" seconds, and this
process's own thread/fd/RSS peaks, to ``--out`` when every round is done.

Fault injection (``fail_rate`` in the manifest): in every round, ``round(fail_rate × n)`` of the n cohort
members die, each at a random point: after training and before ``ReportTraining`` (the agent reports before
its masked upload), or after the server's message of one of the five SecAgg+ stages and before its answer.
A dying device sends nothing more, closes its connections (what the kernel does for a killed process) and
comes back as a fresh agent with new channels, like a restarted device: it checks in again and may be
sampled next round. Implemented around the agent, not in it: the aggregator stub the agent gets per round is
wrapped (:class:`MortalStub`), and so is the agent's ``_report``. Which cohort members die where is a function
of ``--seed`` and the attempt number only (:func:`kill_plan`), so every device computes the same plan on its
own and the run is reproducible. The plan needs the device's round-local id, which only the first stage's
message carries; so with faults a device asks for that message once before its report (one extra
``AwaitStage``, answered at once: the stage is open from the round's start) and reuses the channel for the
round.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil  # type: ignore[import-untyped]  # ships no stubs
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import grpc

from secure_agg import RoundConfig, SecAggError, Stage
from services.aggregator.servicer import STAGE_FROM_WIRE, STAGE_TO_WIRE
from services.api.hetlora.v1 import aggregator_pb2 as agg_pb
from services.api.hetlora.v1 import aggregator_pb2_grpc as agg_rpc
from services.api.hetlora.v1 import orchestrator_pb2 as pb
from services.api.hetlora.v1 import orchestrator_pb2_grpc as rpc
from services.device.agent import CHECK_IN_WAIT_S, RETRYABLE, DeviceAgent, all_rounds_finished
from services.device.secure_upload import LeftRoundError
from services.transport import channel
from trainer.data.types import ClientDataset, TokenBlocks
from trainer.device import Report, Task
from trainer.factors import LoraFactors
from trainer.fingerprint import model_fingerprint
from trainer.model import load_base_model
from trainer.strategies.base import Strategy

EXAMPLES = 100  # what a synthetic device claims to hold (its aggregation weight)
REPORT = "report"  # the kill point after training, before ReportTraining (and so before any SecAgg+ message)
SECAGG_STAGES = (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.CONSISTENCY_CHECK, Stage.UNMASK)
KILL_POINTS = (REPORT, *(s.value for s in SECAGG_STAGES))  # where a device can die, in the agent's order
POLL_MS = 5000  # the early ADVERTISE_KEYS ask (as secure_upload polls)
# The orchestrator numbers round attempts consecutively from (start time in ms) × 1000, so the id modulo 1000 is
# the attempt's ordinal in the run: the same in every run with the same outcomes, which a round id is not.
ATTEMPTS_PER_ID_BLOCK = 1000
SAMPLE_S = 2.0  # how often the worker samples its own threads, fds and RSS


def synthetic_task(strategy: Strategy, model: Any, data: ClientDataset, task: Task, *_: Any) -> Report:
    """``run_task`` without training: the task's factors plus bounded noise, uploaded as the strategy would."""
    rng = np.random.default_rng(task.seed)

    def nudged(x: np.ndarray) -> np.ndarray:  # float32 and in place: no temporaries of a whole factor
        noise = rng.standard_normal(x.shape, dtype=np.float32)
        noise *= 1e-3
        noise += x
        return noise

    moved = {name: LoraFactors(nudged(f.B), nudged(f.A)) for name, f in task.factors.items()}
    contribution = strategy.contribution(task.factors, moved, data.num_train_examples)
    return Report(data.client_id, task.rank, task.rank, contribution, 0.0, data.num_train_examples)


def no_data(client_id: str) -> ClientDataset:
    empty = TokenBlocks(*(torch.zeros((0, 8), dtype=torch.long) for _ in range(3)))
    return ClientDataset(client_id, empty, empty, num_train_examples=EXAMPLES)


def kill_plan(seed: int, round_id: int, clients: Iterable[int], fail_rate: float) -> dict[int, str]:
    """Round-local client id → where it dies, for ``round(fail_rate × n)`` of the round's n clients.

    Seeded by (``seed``, attempt ordinal), never by anything a device holds alone, so all devices of a round
    agree on it without talking to each other, and a re-run attempt (after an abort) draws a fresh plan.
    """
    ids = sorted(clients)
    k = min(len(ids), round(fail_rate * len(ids)))
    if k == 0:
        return {}
    rng = np.random.default_rng([seed, round_id % ATTEMPTS_PER_ID_BLOCK])
    victims = rng.permutation(ids)[:k]
    points = rng.integers(0, len(KILL_POINTS), size=k)
    return {int(c): KILL_POINTS[int(p)] for c, p in zip(victims, points, strict=True)}


class DeviceKilledError(Exception):
    """The harness killed this device mid-round (not a protocol outcome: nothing is sent, nothing caught)."""


class Fate:
    """Where (if anywhere) this device dies in its current round; set when the round's config arrives."""

    def __init__(self, seed: int, fail_rate: float) -> None:
        self.seed, self.fail_rate = seed, fail_rate
        self.round_id = 0
        self.point: str | None = None

    def decide(self, config: RoundConfig, me: int) -> None:
        self.round_id = config.round_id
        self.point = kill_plan(self.seed, config.round_id, config.clients, self.fail_rate).get(me)

    def check(self, point: str) -> None:
        """Die here if this round's plan says so."""
        if self.point == point:
            raise DeviceKilledError(f"round {self.round_id}: killed at {point}")


class ComputeSlot:
    """One device's claim on its worker's ``compute_slots``: at most that many of the worker's devices at once in
    the parts of a round that compute without waiting for anyone (synthetic training through the encoding of
    the update, and masking through the masked upload). 0 slots: no limit.

    Why: a device's transient arrays peak there (~60 MB at SmolLM2 shapes, the float64 layout of the whole
    cohort's buckets), and 200 devices on one box peaking at once need more memory than the box has, while
    2 cores run only two of them at a time anyway. Never held across a wait for the other devices (a stage
    opens only when every device answered the one before), so it cannot deadlock a round.
    """

    def __init__(self, pool: threading.Semaphore | None) -> None:
        self.pool, self.held = pool, False

    def take(self) -> None:
        if self.pool is not None and not self.held:
            self.pool.acquire()
            self.held = True

    def give(self) -> None:
        if self.pool is not None and self.held:
            self.held = False
            self.pool.release()


class MortalStub:
    """The aggregator stub a device's round runs against, with its planned death in it.

    ``secure_upload`` calls only ``AwaitStage`` and ``SubmitStage``. The first stage's message carries the round
    config and this device's round-local id, which is all :func:`kill_plan` needs; a submit of the stage the
    device is to die at raises before a byte of it is sent. It also notes when each stage's message reached
    the device, from which the harness times the stages (the aggregator logs only deadline closes), and
    gives back the device's compute slot while it waits.
    """

    def __init__(
        self, stub: agg_rpc.AggregatorServiceStub, fate: Fate, opened: dict[str, float], slot: ComputeSlot
    ) -> None:
        self._stub, self._fate, self._opened, self._slot = stub, fate, opened, slot

    def AwaitStage(self, request: agg_pb.AwaitStageRequest, timeout: float | None = None) -> Any:  # noqa: N802
        self._slot.give()  # waiting for the other devices
        reply = self._stub.AwaitStage(request, timeout=timeout)
        stage = STAGE_FROM_WIRE[request.stage]
        self._opened.setdefault(stage.value, time.time())  # when this device got the stage (wall clock: shared)
        if stage == Stage.ADVERTISE_KEYS and self._fate.fail_rate > 0 and self._fate.round_id != request.round_id:
            self._fate.decide(RoundConfig.from_bytes(reply.payload), reply.client_id)
        if stage == Stage.MASKED_INPUT:
            self._slot.take()  # masking and the masked upload follow
        return reply

    def SubmitStage(self, requests: Iterator[agg_pb.SubmitStageRequest], timeout: float | None = None) -> Any:  # noqa: N802
        first = next(iter(requests))
        try:
            self._fate.check(STAGE_FROM_WIRE[first.stage].value)
            return self._stub.SubmitStage(itertools.chain([first], requests), timeout=timeout)
        finally:
            self._slot.give()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stub, name)


class Device:
    """One enrolled device: its channels, the real agent on them, and (with faults) its planned deaths."""

    def __init__(
        self, spec: dict[str, Any], ca: bytes, targets: tuple[str, str], model: Any, fingerprint: str, fate: Fate,
        slot: ComputeSlot,
    ) -> None:  # fmt: skip
        self.name, self.rank, self.slot = spec["name"], spec["rank"], slot
        (self.target, self.aggregator), self._early_stub = targets, None
        self.cert, self.key = Path(spec["cert"]).read_bytes(), Path(spec["key"]).read_bytes()
        self.ca, self.model, self.fingerprint, self.fate = ca, model, fingerprint, fate
        self.log: dict[str, Any] = {
            "rank": self.rank, "rounds": 0, "up_bytes": [], "dropped": 0, "left": 0, "errors": [], "killed": [],
            "train_s": {}, "stage_at": {}, "secagg_errors": [],
        }  # fmt: skip
        self.opened: dict[str, float] = {}
        self._channels: list[grpc.Channel] = []
        self.agent = self._connect()

    def _connect(self) -> DeviceAgent:
        """A fresh agent on fresh channels, as ``DeviceAgent.connect`` builds it (and a restarted device has)."""
        orchestrator = channel(self.target, self.ca, self.cert, self.key)
        self._channels = [orchestrator]
        agent = DeviceAgent(
            rpc.OrchestratorServiceStub(orchestrator),
            self._aggregator_for,
            self.model,
            no_data(self.name),
            fingerprint=self.fingerprint,
        )
        agent.run_task = self._timed_task  # type: ignore[assignment]
        if self.fate.fail_rate > 0:
            report = agent._report

            def report_or_die(request: pb.ReportTrainingRequest) -> None:
                if self.fate.round_id != request.round_id:
                    self._learn_fate(request.round_id)
                self.fate.check(REPORT)
                report(request)

            agent._report = report_or_die  # type: ignore[method-assign]
        return agent

    def _learn_fate(self, round_id: int) -> None:
        """Ask for the first stage's message early (it holds this device's round-local id), so that the plan is
        known before the report; the agent's own ask for it follows on the same channel."""
        stub = self._early_stub = self._aggregator_for(self.aggregator)
        request = agg_pb.AwaitStageRequest(
            round_id=round_id, stage=STAGE_TO_WIRE[Stage.ADVERTISE_KEYS], wait_ms=POLL_MS
        )
        with contextlib.suppress(grpc.RpcError):  # not in the round after all: the agent finds out itself
            stub.AwaitStage(request, timeout=POLL_MS / 1000 + 10)

    def _aggregator_for(self, target: str) -> Any:
        """A new aggregator channel per round, as the agent's own ``connect`` does; the last round's is closed."""
        if self._early_stub is not None:  # opened for this round by _learn_fate
            stub, self._early_stub = self._early_stub, None
            return stub
        while len(self._channels) > 1:
            self._channels.pop().close()
        ch = channel(target, self.ca, self.cert, self.key, max_message_bytes=1 << 30)
        self._channels.append(ch)
        # run_task (before this, in the agent's round) made self.opened
        return MortalStub(agg_rpc.AggregatorServiceStub(ch), self.fate, self.opened, self.slot)

    def _timed_task(self, strategy: Strategy, model: Any, data: ClientDataset, task: Task, *rest: Any) -> Report:
        """The synthetic update, timed: the harness subtracts the slowest device's "training" from a round."""
        self.slot.take()  # held through the agent's encoding of the update, until its first AwaitStage
        t0 = time.perf_counter()
        report = synthetic_task(strategy, model, data, task, *rest)
        self.log["train_s"][str(task.round)] = time.perf_counter() - t0
        self.log["stage_at"][str(task.round)] = self.opened = {}  # the round's aggregator stub fills it
        return report

    def die(self, killed: bool = True) -> None:
        """Gone mid-round: every connection closes (outstanding calls with it); a fresh agent takes over."""
        if killed:
            self.log["killed"].append({"round_id": self.fate.round_id, "at": self.fate.point})
        for ch in self._channels:
            ch.close()
        self.fate.point, self._early_stub = None, None
        self.agent = self._connect()

    def run(self, stop: threading.Event) -> None:
        """Check in until every round is done, as ``hetlora device run`` does; bounded by the harness's stop."""
        log = self.log
        while not stop.is_set():
            try:
                done = self.agent.run_round(wait_s=CHECK_IN_WAIT_S)
            except DeviceKilledError:
                self.die()
                continue
            except (LeftRoundError, TimeoutError):
                log["left"] += 1
                continue
            except SecAggError as e:  # the device's own SecAgg+ checks refused to go on (raised past the agent)
                log["left"] += 1
                log["secagg_errors"].append(f"{type(e).__name__}: {e}"[:300])
                continue
            except grpc.RpcError as e:
                if all_rounds_finished(e):
                    break
                if e.code() not in RETRYABLE:
                    log["errors"].append(f"{e.code().name}: {e.details()}")
                    break
                stop.wait(0.5)  # back off before checking in again, as the device CLI does
                continue
            except Exception as e:  # anything else the agent raised: noted, and the device restarts
                log["errors"].append(f"{type(e).__name__}: {e}"[:300])
                self.die(killed=False)
                stop.wait(0.5)
                continue
            finally:
                self.slot.give()  # whatever ended the round
            if done is not None:
                log["rounds"] += 1
                log["up_bytes"].append(done.wire.up if done.wire else 0)
                log["dropped"] += done.wire is None
        for ch in self._channels:
            ch.close()


def sample(me: psutil.Process, peaks: dict[str, float]) -> None:
    """This worker's threads, open fds and RSS, kept as peaks: what 2,000 devices would run out of first."""
    peaks["threads"] = max(peaks.get("threads", 0), me.num_threads())
    peaks["fds"] = max(peaks.get("fds", 0), me.num_fds())
    peaks["rss_mib"] = max(peaks.get("rss_mib", 0.0), me.memory_info().rss / 2**20)


def peak_rss_mib() -> float:
    """This process's high-water RSS (VmHWM): the sampled peak misses the seconds a round's arrays live."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM"))
    return int(line.split()[1]) / 1024


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--manifest", type=Path, required=True,
        help="JSON: ca, orchestrator, aggregator, timeout_s, fail_rate, seed, compute_slots, "
        "devices [{name, rank, cert, key}]",
    )  # fmt: skip
    p.add_argument("--model", default="tiny", help="whose layer shapes the updates have (must be the job's)")
    p.add_argument("--out", type=Path, required=True, help="where the per-device and per-worker JSON goes")
    args = p.parse_args()
    manifest = json.loads(args.manifest.read_text())
    model = load_base_model(args.model)  # shared: synthetic devices only read its layer shapes
    fingerprint = model_fingerprint(args.model, model)
    ca = Path(manifest["ca"]).read_bytes()
    seed, fail_rate = int(manifest.get("seed", 0)), float(manifest.get("fail_rate", 0.0))
    slots = int(manifest.get("compute_slots", 0))
    pool = threading.Semaphore(slots) if slots > 0 else None
    targets = (manifest["orchestrator"], manifest.get("aggregator", ""))
    stop = threading.Event()
    devices = [
        Device(spec, ca, targets, model, fingerprint, Fate(seed, fail_rate), ComputeSlot(pool))
        for spec in manifest["devices"]
    ]
    threads = [threading.Thread(target=d.run, args=(stop,), name=d.name, daemon=True) for d in devices]
    # SIGTERM from the harness once the orchestrator is done: without it every device would first sit out the
    # rest of its check-in (up to CHECK_IN_WAIT_S) before it hears that no rounds are left.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    me, peaks = psutil.Process(), dict[str, float]()
    sample(me, peaks)
    base_rss = peaks["rss_mib"]
    print(f"READY devices={len(threads)}", flush=True)
    # Every worker's devices check in together once all are ready (the harness writes one line): the first
    # cohort is drawn from all workers, not from the one that loaded first (one process is one core).
    sys.stdin.readline()
    for t in threads:
        t.start()
    end = time.monotonic() + manifest.get("timeout_s", 900)
    while any(t.is_alive() for t in threads) and time.monotonic() < end and not stop.is_set():
        sample(me, peaks)
        stop.wait(SAMPLE_S)  # the devices run in their threads; this one only watches
    stop.set()
    grace = time.monotonic() + 2.0  # devices blocked in a poll are daemon threads: they end with the process
    for t in threads:
        t.join(timeout=max(0.0, grace - time.monotonic()))
    cpu = me.cpu_times()
    worker = {"devices": len(devices), "cpu_s": cpu.user + cpu.system, **peaks, "peak_rss_mib": peak_rss_mib()}
    worker["base_rss_mib"] = base_rss  # the model and the imports, before any device ran
    logs = {d.name: copy.deepcopy(d.log) for d in devices}  # a straggling thread may still append to its own
    args.out.write_text(json.dumps({"devices": logs, "worker": worker}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
