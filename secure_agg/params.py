"""Choosing (k, t): the smallest Harary degree whose failure and privacy-loss probabilities are small enough.

This follows the analysis behind Google's production SecAgg+ parameter finder (Bell et al. 2020, fcp's
``graph_parameter_finder``): for each even degree k = 2, 4, … it bounds

* the probability that removing the adversarial and dropped clients disconnects the random Harary graph
  (a union bound over pairs of k/2-long gaps in the ring), which must be below 2^-(σ+1);
* the threshold t from two hypergeometric tails over a client's k neighbours: fewer than t adversarial
  neighbours except with probability 2^-(σ+1)/n (privacy), and at least t surviving neighbours except with
  probability 2^-η/n (correctness, η = 20 by default).

The first k for which such a t exists wins. It reproduces the published (n, rates) → (k, t) table, which the
tests pin. When no Harary degree below n − 1 qualifies (small cohorts), :func:`choose_parameters` falls back to
the complete graph (Bonawitz 2017), as fcp does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from secure_agg.errors import ConfigError

_SMALL = 1e-14  # keeps float rounding from moving a count in the insecure direction


class AdversaryClass(StrEnum):
    """Who the privacy guarantee is against."""

    NONE = "none"
    CURIOUS_SERVER = "curious_server"
    SEMI_MALICIOUS_SERVER = "semi_malicious_server"


@dataclass(frozen=True)
class SecAggRequirements:
    """Expected adversarial and dropout fractions, and the security/correctness targets in bits."""

    adversarial_rate: float = 0.05
    dropout_rate: float = 0.05
    adversary_class: AdversaryClass = AdversaryClass.CURIOUS_SERVER
    security_bits: float = 40.0
    correctness_bits: float = 20.0

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.adversarial_rate < 1:
            problems.append(f"adversarial_rate must be in [0, 1), got {self.adversarial_rate}")
        if not 0 <= self.dropout_rate < 1:
            problems.append(f"dropout_rate must be in [0, 1), got {self.dropout_rate}")
        if self.adversary_class == AdversaryClass.NONE and self.adversarial_rate > 0:
            problems.append("adversary_class NONE needs adversarial_rate == 0")
        if self.adversary_class == AdversaryClass.SEMI_MALICIOUS_SERVER:
            if self.adversarial_rate + 2 * self.dropout_rate > 0.9:
                problems.append("semi-malicious needs adversarial_rate + 2*dropout_rate <= 0.9")
        elif self.adversarial_rate + self.dropout_rate > 0.9:
            problems.append("needs adversarial_rate + dropout_rate <= 0.9")
        if problems:
            raise ConfigError("; ".join(problems))


@dataclass(frozen=True)
class GraphParameters:
    """Degree k (neighbours per client, self excluded) and Shamir threshold t for n clients."""

    n_clients: int
    degree: int
    threshold: int

    @property
    def complete(self) -> bool:
        return self.degree >= self.n_clients - 1


class _Hypergeometric:
    """Number of marked items in ``sampled`` draws without replacement from ``total`` with ``marked``."""

    def __init__(self, total: int, marked: int, sampled: int) -> None:
        self.total, self.marked, self.sampled = total, marked, sampled
        lo, hi = max(0, sampled + marked - total), min(sampled, marked)
        self.lo, self.hi = lo, hi
        base = math.lgamma(marked + 1) + math.lgamma(total - marked + 1) + math.lgamma(sampled + 1)
        base += math.lgamma(total - sampled + 1) - math.lgamma(total + 1)
        self.pmf = {
            x: math.exp(
                base
                - math.lgamma(x + 1)
                - math.lgamma(marked - x + 1)
                - math.lgamma(sampled - x + 1)
                - math.lgamma(total - marked - sampled + x + 1)
            )
            for x in range(lo, hi + 1)
        }

        xs = range(lo, hi + 1)
        # Cumulative tails, each summed from its far end so tiny probabilities keep their precision.
        self._lower: dict[int, float] = {}
        acc = 0.0
        for x in xs:
            acc += self.pmf[x]
            self._lower[x] = acc
        self._upper: dict[int, float] = {}
        acc = 0.0
        for x in reversed(xs):
            self._upper[x - 1] = acc + self.pmf[x]
            acc += self.pmf[x]

    def cdf(self, x: int) -> float:
        """P(X <= x)."""
        if x < self.lo:
            return 0.0
        return self._lower[min(x, self.hi)]

    def sf(self, x: int) -> float:
        """P(X > x)."""
        if x >= self.hi:
            return 0.0
        return self._upper[max(x, self.lo - 1)]

    def smallest_with_sf_below(self, q: float) -> int:
        """min{x : P(X > x) < q}."""
        x = self.lo - 1
        while self.sf(x) >= q:
            x += 1
        return x

    def smallest_with_cdf_at_least(self, q: float) -> int:
        """min{x : P(X <= x) >= q}."""
        x = self.lo
        while x < self.hi and self.cdf(x) < q:
            x += 1
        return x


def _log_prob_disconnected(n: int, k: int, bad: int) -> float:
    if k > bad:
        return -math.inf
    log_gap_pairs = math.log(n) + math.log(n - k - 1) - math.log(2)
    return log_gap_pairs + math.lgamma(bad + 1) + math.lgamma(n - k + 1) - math.lgamma(n + 1) - math.lgamma(bad - k + 1)


def _threshold_for(n: int, k: int, req: SecAggRequirements) -> int | None:
    sigma = req.security_bits + 1  # split evenly over the two bad events
    n_adv = math.floor((req.adversarial_rate + _SMALL) * n)
    n_drop = math.floor((req.dropout_rate + _SMALL) * n)
    if _log_prob_disconnected(n, k, n_adv + n_drop) >= -sigma * math.log(2):
        return None
    n_survive = math.ceil((1 - req.dropout_rate - _SMALL) * n)
    adv = _Hypergeometric(n, n_adv, k)
    surv = _Hypergeometric(n, n_survive, k)
    t1 = float(adv.smallest_with_sf_below(2.0**-sigma / n))
    t2 = surv.smallest_with_cdf_at_least(2.0**-req.correctness_bits / n)
    if req.adversary_class == AdversaryClass.SEMI_MALICIOUS_SERVER:
        t1 = math.ceil((t1 + k - 1.25) / 2)
    if t2 <= t1:
        return None
    return max(int(t1) + 1, 2)


def harary_parameters(n_clients: int, req: SecAggRequirements | None = None) -> GraphParameters:
    """Smallest even degree k < n − 1 (and its threshold) meeting ``req``; ConfigError if none exists."""
    req = req or SecAggRequirements()
    if n_clients <= 0:
        raise ConfigError(f"need at least one client, got {n_clients}")
    for k in range(2, n_clients - 1, 2):
        t = _threshold_for(n_clients, k, req)
        if t is not None:
            return GraphParameters(n_clients, k, t)
    raise ConfigError(
        f"no Harary degree below {n_clients - 1} meets the requirements for {n_clients} clients "
        f"(adversarial {req.adversarial_rate}, dropout {req.dropout_rate})"
    )


def choose_parameters(n_clients: int, req: SecAggRequirements | None = None) -> GraphParameters:
    """:func:`harary_parameters`, falling back to the complete graph for cohorts too small for SecAgg+.

    The fallback threshold keeps privacy against the expected corrupt clients (t > corrupt neighbours) and
    correctness under the expected dropout (t <= survivors), preferring the privacy side when they clash.
    """
    req = req or SecAggRequirements()
    if n_clients < 2:
        raise ConfigError(f"secure aggregation needs at least 2 clients, got {n_clients}")
    try:
        return harary_parameters(n_clients, req)
    except ConfigError:
        pass
    corrupt = math.floor((req.adversarial_rate + _SMALL) * n_clients)
    if req.adversary_class == AdversaryClass.SEMI_MALICIOUS_SERVER:
        t = math.floor((n_clients + corrupt) / 2) + 1
    else:
        t = corrupt + 1
    return GraphParameters(n_clients, n_clients - 1, min(max(t, 2), n_clients))
