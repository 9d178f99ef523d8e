"""The round: plan → distribute → (devices train and upload) → aggregate → commit a new global version.

This class is the one code path for a round. The in-process simulation calls it with reports from local
function calls and sums computed in the clear; the orchestrator service calls it with tasks sent over gRPC and
sums unmasked by the aggregator. Dropped devices are named explicitly; a round in which nobody reports keeps
the committed version.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from trainer.device import Report, Task
from trainer.privacy.federation import FederationPrivacy
from trainer.privacy.user_dp import component_cohorts
from trainer.store import VersionStore
from trainer.strategies import update_strategy_names
from trainer.strategies.base import AggregateSums, Strategy, sum_contributions


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any labels (round, client id, ...), identical across processes."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass(frozen=True)
class RoundPlan:
    round: int
    version: int
    cohort: tuple[str, ...]
    ranks: Mapping[str, int]
    sample_rate: float = 1.0  # cohort size over the devices it was drawn from (the accountant's q)


@dataclass(frozen=True)
class RoundOutcome:
    round: int
    version: int
    committed: bool
    reported: tuple[str, ...]
    dropped: tuple[str, ...]
    ranks_trained: Mapping[str, int]
    ranks_after: Mapping[str, int]
    upload_floats: int
    train_loss: float
    extra: dict = field(default_factory=dict)


class RoundEngine:
    """Sequences the strategy's pure steps and owns the per-device rank state (self-pruning persists)."""

    def __init__(
        self,
        strategy: Strategy,
        store: VersionStore,
        device_ranks: Mapping[str, int],
        per_round: int,
        seed: int,
        privacy: FederationPrivacy | None = None,
    ) -> None:
        if privacy is not None and not strategy.uploads_update:
            raise ValueError(
                f"user-level DP clips each device's update, and {strategy.name!r} uploads "
                f"{'full products' if strategy.dense_upload else 'factors'}, not updates: "
                f"use one of {', '.join(update_strategy_names())}"
            )
        if per_round < 1 or (device_ranks and per_round > len(device_ranks)):
            raise ValueError(f"per_round must be in [1, {len(device_ranks)}], got {per_round}")
        self.strategy = strategy
        self.store = store
        self.device_ranks = dict(device_ranks)
        self.per_round = per_round
        self.seed = seed
        self.privacy = privacy
        if privacy is not None:
            version, _ = store.latest()
            privacy.restore(store.record(version))  # after a restart: the ledger of the newest version

    def plan(self, round_index: int, available: Sequence[str] | None = None, size: int | None = None) -> RoundPlan:
        """A seeded sample of the devices; the same seed gives every strategy the same cohorts.

        The services pass the devices checked in right now (``available``) and an over-selected ``size``. With
        user-level DP, a round that would pass the privacy budget is refused here, before anyone trains.
        """
        ids = sorted(self.device_ranks if available is None else available)
        k = min(size or self.per_round, len(ids))
        if k < 1 or any(i not in self.device_ranks for i in ids):
            raise ValueError("a cohort needs at least one device, and every device needs a rank")
        rng = np.random.default_rng(derive_seed(self.seed, "cohort", round_index))
        cohort = tuple(ids[i] for i in sorted(rng.choice(len(ids), k, replace=False)))
        if self.privacy is not None:
            self.privacy.check(k / len(ids))
        version, _ = self.store.latest()
        ranks = {c: self.strategy.client_rank(self.device_ranks[c]) for c in cohort}
        return RoundPlan(round_index, version, cohort, ranks, k / len(ids))

    def tasks(self, plan: RoundPlan) -> dict[str, Task]:
        """Each device's starting factors, sliced from the committed version at its rank."""
        _, current = self.store.latest()
        by_rank = {r: self.strategy.distribute(current, r) for r in sorted(set(plan.ranks.values()))}
        shares = self.privacy.noise_shares(self.planned_cohorts(plan)) if self.privacy is not None else ()
        cohorts = tuple(int(n) for n in shares)
        return {
            c: Task(
                plan.round,
                plan.version,
                plan.ranks[c],
                by_rank[plan.ranks[c]],
                derive_seed(self.seed, plan.round, c),
                cohorts,
            )
            for c in plan.cohort
        }

    def planned_cohorts(self, plan: RoundPlan) -> np.ndarray:
        """How many planned devices cover each rank component (distributed DP splits its noise by this)."""
        return component_cohorts(plan.ranks.values(), self.strategy.global_rank)

    def finish(
        self,
        plan: RoundPlan,
        reports: Sequence[Report],
        dropped: Sequence[str],
        sums: AggregateSums | None = None,
    ) -> RoundOutcome:
        """Aggregate the reports (or the securely computed ``sums``) and commit, or keep the version if empty."""
        reported = tuple(r.client_id for r in reports)
        unknown = (set(reported) | set(dropped)) - set(plan.cohort)
        if unknown or set(reported) & set(dropped):
            raise ValueError(f"reports and drops must partition the cohort; unexpected: {sorted(unknown)}")
        for r in reports:
            if self.strategy.prune is not None:
                self.device_ranks[r.client_id] = min(self.device_ranks[r.client_id], r.rank)
        upload = sum(r.upload_floats for r in reports)
        loss = float(np.mean([r.train_loss for r in reports])) if reports else float("nan")
        trained = {r.client_id: r.rank_before for r in reports}
        after = {r.client_id: r.rank for r in reports}
        if not reports:
            version, _ = self.store.latest()
            return RoundOutcome(plan.round, version, False, (), tuple(dropped), {}, {}, 0, loss)
        if sums is None:
            clear = [r.contribution for r in reports if r.contribution is not None]
            if len(clear) != len(reports):
                raise ValueError("reports without contributions (secure aggregation) need the securely computed sums")
            sums = sum_contributions(clear, self.strategy.global_rank)
        _, current = self.store.latest()
        record: dict = {"round": plan.round, "reported": list(reported), "dropped": list(dropped), "ranks": after}
        # What `hetlora export --rank R` needs to rebuild a rank-R device's adapter from this version.
        scaling = self.strategy.config.scaling
        record["strategy"] = self.strategy.name
        record["scaling"] = {"mode": scaling.mode, "value": scaling.value}
        if self.privacy is not None:
            sums = self.privacy.release(sums)
            realised = component_cohorts(after.values(), self.strategy.global_rank)
            record["privacy"] = self.privacy.charge(self.planned_cohorts(plan), realised, plan.sample_rate)
        spent = {
            r.client_id: {"epsilon": e.epsilon, "delta": e.delta, "accountant": e.accountant, "unit": e.unit}
            for r in reports
            if (e := r.example_privacy) is not None
        }
        if spent:
            record["example_privacy"] = spent
        new = self.strategy.aggregate(current, sums)
        version = self.store.commit(new, record)
        privacy = {k: record[k] for k in ("privacy", "example_privacy") if k in record}
        return RoundOutcome(plan.round, version, True, reported, tuple(dropped), trained, after, upload, loss, privacy)
