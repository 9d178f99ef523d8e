"""(ε, δ) bookkeeping with Opacus' accountants, in a form that survives restarts.

An accountant's whole state is its history of (noise multiplier, sampling rate, steps): the ledger keeps that
list (JSON-friendly) and asks Opacus for ε whenever it is needed, so a device can persist its ledger between
rounds and the orchestrator can rebuild the federation's from the records of committed versions. Asking what
one more round *would* cost is how a budget is enforced before the round runs, not after.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

ACCOUNTANTS = ("rdp", "prv")  # Opacus' RDP (moments) and PRV (numerical composition, tighter) accountants


def _epsilon(accountant: str, history: list[tuple[float, float, int]], delta: float) -> float:
    if not history:
        return 0.0
    from opacus.accountants import create_accountant  # opacus imports torch: only when ε is actually needed

    acc = create_accountant(accountant)
    acc.history = [(float(s), float(q), int(n)) for s, q, n in history]
    with warnings.catch_warnings():  # PRV warns about its own numerical error bounds on every call
        warnings.simplefilter("ignore")
        return float(acc.get_epsilon(delta=delta))


@dataclass
class PrivacyLedger:
    """The (σ, q, steps) a mechanism has run with so far, and the ε it adds up to at ``delta``."""

    delta: float
    accountant: str = "prv"
    history: list[tuple[float, float, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.accountant not in ACCOUNTANTS:
            raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {self.accountant!r}")
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}")

    def spend(self, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Record ``steps`` runs of the subsampled Gaussian mechanism (consecutive equal runs are merged)."""
        _check_step(noise_multiplier, sample_rate, steps)
        if self.history and self.history[-1][:2] == (noise_multiplier, sample_rate):
            self.history[-1] = (noise_multiplier, sample_rate, self.history[-1][2] + steps)
        else:
            self.history.append((noise_multiplier, sample_rate, steps))

    def epsilon(self) -> float:
        return _epsilon(self.accountant, self.history, self.delta)

    def epsilon_after(self, noise_multiplier: float, sample_rate: float, steps: int = 1) -> float:
        """ε if ``steps`` more runs happened: the check before a round, so a budget is never overrun."""
        _check_step(noise_multiplier, sample_rate, steps)
        return _epsilon(self.accountant, [*self.history, (noise_multiplier, sample_rate, steps)], self.delta)

    def to_json(self) -> dict[str, Any]:
        return {"accountant": self.accountant, "delta": self.delta, "history": [list(h) for h in self.history]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PrivacyLedger:
        history = [(float(s), float(q), int(n)) for s, q, n in data.get("history", [])]
        return cls(float(data["delta"]), str(data["accountant"]), history)


def _check_step(noise_multiplier: float, sample_rate: float, steps: int) -> None:
    if not (noise_multiplier > 0 and math.isfinite(noise_multiplier)):
        raise ValueError(f"accounting needs a positive finite noise multiplier, got {noise_multiplier}")
    if not 0 < sample_rate <= 1 or steps < 1:
        raise ValueError(f"need 0 < sample_rate ≤ 1 and steps ≥ 1, got q={sample_rate}, steps={steps}")


def noise_for_target(target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str) -> float:
    """The smallest noise multiplier whose ``steps`` runs at rate ``sample_rate`` stay within ``target_epsilon``."""
    if target_epsilon <= 0:
        raise ValueError(f"target ε must be positive, got {target_epsilon}")
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=accountant,
                epsilon_tolerance=0.005,
            )
        )
