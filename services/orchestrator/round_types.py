"""What the coordinator works with: a round's settings, what devices are trusted with, and the records it keeps.

Plain data, so the servicer, the server wiring and the tests can build them without the round loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from secure_agg import SecAggRequirements
from services.orchestrator.report_check import ReportLimits
from services.secure_sum import SecureSumConfig


@dataclass(frozen=True)
class RoundSettings:
    rounds: int
    per_round: int
    overselect: float = 1.3
    min_devices: int = 2  # SecAgg needs at least two; below this a round waits
    checkin_window_s: float = 30.0  # how long a round waits for enough devices before trying again
    presence_s: float = 15.0  # a device counts as available this long after its last poll
    round_deadline_s: float = 600.0  # training + secure aggregation, per round
    stage_timeout_s: float = 60.0
    report_grace_s: float = 10.0
    attempts_per_round: int = 4  # a round whose secure aggregation fails is re-run (backoff 2, 4, 8 s)
    requirements: SecAggRequirements = field(default_factory=lambda: SecAggRequirements(0.05, 0.2))
    secure: SecureSumConfig = field(default_factory=SecureSumConfig)


@dataclass(frozen=True)
class DeviceTrust:
    """How far the coordinator trusts what devices say: revocation is re-read at every step, reports are checked.

    ``revoked(device)`` reads the registry: the orchestrator's servicer checks it when a call starts, but a
    long poll or a round outlives that check. ``revoked_now()`` lists every revoked device. ``exclude(round_id,
    client_ids, why)`` tells the aggregator to treat those members as dropouts from now on, and returns the
    ones whose masked input it had already summed.
    """

    revoked: Callable[[str], bool] = lambda device: False
    revoked_now: Callable[[], frozenset[str]] = frozenset
    exclude: Callable[[int, list[int], str], tuple[int, ...]] = lambda round_id, clients, why: ()
    limits: ReportLimits = field(default_factory=ReportLimits)


@dataclass(frozen=True)
class Assignment:
    """What one device receives for one round (the servicer turns it into a header plus chunks)."""

    round_id: int
    round_index: int
    version: int
    rank: int
    seed: int
    factors: bytes
    edges: tuple[int, ...]
    max_clients: int
    component_cohorts: tuple[int, ...] = ()
    signing_key: bytes = b""  # what the secure round was opened with for this device


@dataclass
class RoundRecord:
    round_id: int
    round_index: int
    state: str = "planned"
    version: int = 0
    cohort: tuple[str, ...] = ()
    reported: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    detail: str = ""
    wall_s: float = 0.0  # from planning to commit (or failure)
