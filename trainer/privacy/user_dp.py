"""User-level DP-FedAvg arithmetic: clip a device's update, add Gaussian noise, account the noise that was.

Pure functions on the values a strategy uploads. A device's update is clipped as one vector (every module,
both factors) to L2 norm S and carries weight 1 per module, so the only private thing in a round's sums is
the clipped values; the per-component counts are the cohort's ranks, which the server assigned. Noise of
std σS per released coordinate makes the sums a Gaussian mechanism with sensitivity S.

Under secure aggregation the noise is split across the devices (``distributed``): for rank component j the
n_j devices whose rank covers j each add std σS/√m_j with m_j = ⌊n_j·(1 − tolerated dropout)⌋
(:func:`noise_cohorts`), so the sum carries at least σS while at most that fraction drops out, and the
orchestrator never sees a noiseless sum. Devices that drop out or prune away a component add nothing there:
:func:`effective_noise_multiplier` is the noise the sums really carried, and what the accountant is charged.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from trainer.factors import LoraFactors
from trainer.strategies.base import AggregateSums, Contribution


def update_norm(update: Contribution) -> float:
    """L2 norm of everything the device uploads besides weights (all modules, B and A together)."""
    if update.dense:
        raise ValueError("user-level DP clips factor updates; dense (FlexLoRA) uploads are not supported")
    total = sum(float(np.sum(np.square(f.B, dtype=np.float64)) + np.sum(np.square(f.A, dtype=np.float64)))
                for f in update.factors.values())  # fmt: skip
    return float(np.sqrt(total))


def clip_update(update: Contribution, clip_norm: float) -> tuple[Contribution, float]:
    """(the update scaled to norm ≤ ``clip_norm`` with weight 1 per module, its norm before clipping)."""
    norm = update_norm(update)
    factor = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    factors = {m: LoraFactors(f.B * factor, f.A * factor) for m, f in update.factors.items()}
    return Contribution(weight=dict.fromkeys(update.factors, 1.0), factors=factors), norm


def component_cohorts(ranks: Iterable[int], width: int) -> np.ndarray:
    """n_j: how many of the devices (at these ranks) cover rank component j, for j < ``width``."""
    counts = np.zeros(width, dtype=np.int64)
    for r in ranks:
        counts[: min(r, width)] += 1
    return counts


def add_distributed_noise(
    update: Contribution, noise_std: float, cohorts: np.ndarray, rng: np.random.Generator
) -> Contribution:
    """This device's share of the noise: std ``noise_std``/√n_j on each coordinate of component j it uploads."""
    noisy = {}
    for m, f in update.factors.items():
        r = f.rank
        if np.any(cohorts[:r] < 1):
            raise ValueError("a component this device uploads has no planned cohort: the plan and task disagree")
        share = noise_std / np.sqrt(cohorts[:r].astype(np.float64))
        B = f.B + rng.standard_normal(f.B.shape) * share[None, :]
        A = f.A + rng.standard_normal(f.A.shape) * share[:, None]
        noisy[m] = LoraFactors(B.astype(np.float32), A.astype(np.float32))
    return Contribution(weight=dict(update.weight), factors=noisy)


def add_central_noise(sums: AggregateSums, noise_std: float, rng: np.random.Generator) -> AggregateSums:
    """The orchestrator's noise: std ``noise_std`` on every released coordinate (components someone trained)."""
    noisy = {}
    for m, s in sums.factor_sums.items():
        live = s.weight > 0
        B, A = s.B.copy(), s.A.copy()
        B[:, live] += rng.standard_normal((B.shape[0], int(live.sum()))) * noise_std
        A[live, :] += rng.standard_normal((int(live.sum()), A.shape[1])) * noise_std
        noisy[m] = type(s)(B, A, s.weight.copy())
    return AggregateSums(noisy, sums.dense_sums, sums.dense_weight, sums.num_clients)


def noise_cohorts(planned: np.ndarray, dropout_tolerance: float) -> np.ndarray:
    """m_j: how many shares the noise of component j is split into, ⌊n_j·(1 − tolerance)⌋ but at least 1."""
    shares = np.floor(planned * (1.0 - dropout_tolerance)).astype(np.int64)
    return np.where(planned > 0, np.maximum(shares, 1), 0)


def effective_noise_multiplier(noise_multiplier: float, shares: np.ndarray, realised: np.ndarray) -> float:
    """σ the released sums actually carry in distributed mode: the least-noised released component decides.

    Component j's noise was split into ``shares[j]`` and ``realised[j]`` devices uploaded it, so its std is
    σS·√(realised/shares): above σS when fewer than the tolerated share dropped out. Components nobody
    uploaded release nothing and do not count.
    """
    released = realised > 0
    if not np.any(released):
        return noise_multiplier
    if np.any(shares[released] < 1):
        raise ValueError("a component was uploaded that no device was asked to add noise to")
    return float(noise_multiplier * np.sqrt(np.min(realised[released] / shares[released])))


def value_headroom(clip_norm: float, noise_std: float, smallest_cohort: int, stddevs: float = 4.0) -> float:
    """How large one uploaded coordinate can get: the clip plus ``stddevs`` of this device's noise share.

    Secure aggregation clips each coordinate to its public value bound; clipping the noise would void the
    guarantee, so the bound must be at least this (4σ: clipped with probability ~6e-5 per coordinate).
    """
    return clip_norm + stddevs * noise_std / np.sqrt(max(1, smallest_cohort))
