"""The orchestrator's side of user-level DP: the budget check before a round, noise and accounting after.

The federation's ledger is charged once per committed round with the noise the released sums actually
carried (distributed noise shrinks when devices drop out or prune components away) at the round's sampling
rate (cohort size over the devices it was drawn from: uniform sampling without replacement, which the
accountant treats as Poisson sampling at that rate, the usual DP-FedAvg approximation). The ledger goes into
every committed version's record, so a restarted orchestrator continues from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trainer.privacy.accounting import PrivacyLedger
from trainer.privacy.settings import UserDP
from trainer.privacy.user_dp import add_central_noise, effective_noise_multiplier, noise_cohorts
from trainer.strategies.base import AggregateSums


class PrivacyBudgetExceededError(RuntimeError):
    """Running the next round would take the federation past its configured ε."""


@dataclass
class FederationPrivacy:
    user: UserDP
    ledger: PrivacyLedger = field(init=False)
    unbounded: bool = False  # a round ran without noise: no finite ε holds any more

    def __post_init__(self) -> None:
        self.ledger = PrivacyLedger(self.user.delta, self.user.accountant)

    def check(self, sample_rate: float) -> float:
        """ε after one more round at full noise; raises when that passes the budget."""
        sigma = self.user.noise_multiplier
        after = math.inf if self.unbounded or sigma == 0 else self.ledger.epsilon_after(sigma, sample_rate)
        if after > self.user.epsilon_budget:
            raise PrivacyBudgetExceededError(
                f"user-level privacy budget ε={self.user.epsilon_budget:g} (δ={self.user.delta:g}, "
                f"{self.user.accountant}) would be exceeded: ε={self.spent():.3f} spent, {after:.3f} after one "
                f"more round at σ={self.user.noise_multiplier:g}, q={sample_rate:.3f}. No more rounds run; to "
                "continue, a person must raise the budget (weakening the guarantee) or add noise"
            )
        return after

    def release(self, sums: AggregateSums, rng: np.random.Generator | None = None) -> AggregateSums:
        """Central mode adds the noise here; distributed mode's sums already carry it."""
        if self.user.mode != "central" or self.user.noise_multiplier == 0:
            return sums
        return add_central_noise(sums, self.user.noise_std, rng if rng is not None else np.random.default_rng())

    def noise_shares(self, planned: np.ndarray) -> np.ndarray:
        """What each device divides its noise by, per component (sent with the task in distributed mode)."""
        return noise_cohorts(planned, self.user.dropout_tolerance)

    def charge(self, planned: np.ndarray, realised: np.ndarray, sample_rate: float) -> dict[str, Any]:
        """Account one committed round; returns what goes into the version's record."""
        sigma = self.user.noise_multiplier
        if self.user.mode == "distributed":
            sigma = effective_noise_multiplier(sigma, self.noise_shares(planned), realised)
        if sigma > 0:
            self.ledger.spend(sigma, sample_rate)
        else:
            self.unbounded = True  # the sums went out without noise: no ε holds from here on
        return {
            "unit": "user",
            "mode": self.user.mode,
            "dropout_tolerance": self.user.dropout_tolerance,
            "clip_norm": self.user.clip_norm,
            "noise_multiplier": self.user.noise_multiplier,
            "effective_noise_multiplier": sigma,
            "sample_rate": sample_rate,
            "epsilon": self.spent(),
            "delta": self.user.delta,
            "accountant": self.user.accountant,
            "ledger": self.ledger.to_json(),
            "unbounded": self.unbounded,
        }

    def spent(self) -> float:
        """ε the federation has spent so far (∞ once a round ran without noise)."""
        return math.inf if self.unbounded else self.ledger.epsilon()

    def restore(self, record: dict[str, Any]) -> None:
        """Continue from the ledger recorded with the newest committed version (after a restart)."""
        saved = record.get("privacy") or {}
        if saved.get("ledger"):
            self.ledger = PrivacyLedger.from_json(saved["ledger"])
            self.unbounded = bool(saved.get("unbounded", False))
