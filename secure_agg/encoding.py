"""Fixed-point encoding into the uint32 ring: clip to a public bound, scale, stochastic rounding.

Values are encoded as signed integers in two's complement mod 2^32, so a sum of clients' values decodes by
reinterpreting the ring sum as int32 — no offsets, no widening to int64 (Flower ships int64, 8 bytes per
element). The scale is the largest power of two for which ``max_clients`` clipped values stay below
2^(31 − headroom_bits), so an honest sum never wraps and never reaches the headroom: a decoded sum outside
the cohort's range can only come from a client that did not encode honestly (see :mod:`secure_agg.bounds`).
Stochastic rounding makes every encoded value an unbiased estimate of the clipped input; the error of a
decoded sum is below ``max_clients / scale`` per element.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from secure_agg.errors import ConfigError

RING_BITS = 32
HEADROOM_BITS = 1
_INT32_MAX = (1 << 31) - 1


def _power_of_two_scale(bound: float, max_clients: int, headroom_bits: int = HEADROOM_BITS) -> float:
    # Each client contributes at most bound*scale + 1 after rounding; n of them must stay below the headroom.
    room = (_INT32_MAX >> headroom_bits) / max_clients - 1
    if room < bound:
        raise ConfigError(f"bound {bound} with {max_clients} clients leaves less than 1 bit of precision")
    return float(2 ** math.floor(math.log2(room / bound)))


@dataclass(frozen=True)
class FixedPointCodec:
    """Public encoding parameters: elementwise clip bound, weight bound and the largest cohort summed.

    ``value_bound`` clips each element of x, ``weight_bound`` clips the weight s; weighted entries s·x are
    bounded by their product. Both scales are powers of two, derived here so client and server always agree.
    ``headroom_bits`` top bits of the int32 range are never reached by an honest cohort's sum.
    """

    value_bound: float = 8.0
    weight_bound: float = 1.0
    max_clients: int = 1024
    headroom_bits: int = HEADROOM_BITS

    def __post_init__(self) -> None:
        problems = []
        if not (self.value_bound > 0 and math.isfinite(self.value_bound)):
            problems.append(f"value_bound must be a positive finite number, got {self.value_bound}")
        if not (self.weight_bound > 0 and math.isfinite(self.weight_bound)):
            problems.append(f"weight_bound must be a positive finite number, got {self.weight_bound}")
        if self.max_clients < 1:
            problems.append(f"max_clients must be >= 1, got {self.max_clients}")
        if not 0 <= self.headroom_bits <= 8:
            problems.append(f"headroom_bits must be in [0, 8], got {self.headroom_bits}")
        if problems:
            raise ConfigError("; ".join(problems))
        _power_of_two_scale(self.value_bound * self.weight_bound, self.max_clients, self.headroom_bits)

    @property
    def value_scale(self) -> float:
        """Ring units per unit of a weighted value s·x."""
        return _power_of_two_scale(self.value_bound * self.weight_bound, self.max_clients, self.headroom_bits)

    @property
    def weight_scale(self) -> float:
        """Ring units per unit of weight s."""
        return _power_of_two_scale(self.weight_bound, self.max_clients, self.headroom_bits)

    def sum_error_bound(self, n_clients: int) -> float:
        """Worst-case absolute error of a decoded Σ s·x per element (stochastic rounding moves < 1 unit)."""
        return n_clients / self.value_scale


def stochastic_round(scaled: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """floor(v + u), u ~ U[0, 1): unbiased integer rounding of float64 values (|v| < 2^31), as int32."""
    out: np.ndarray = rng.random((scaled.shape[0],))
    np.add(out, scaled, out=out)  # reuses the random buffer: no extra allocation
    np.floor(out, out=out)
    return out.astype(np.int32)


def encode_values(values: np.ndarray, scale: float, bound: float, rng: np.random.Generator) -> np.ndarray:
    """Clip to [-bound, bound], scale and stochastically round into the uint32 ring."""
    scaled = np.asarray(values, dtype=np.float64).reshape(-1) * scale
    limit = bound * scale
    np.clip(scaled, -limit, limit, out=scaled)
    if np.isnan(scaled.sum()):
        raise ValueError("cannot encode NaN values")
    return stochastic_round(scaled, rng).view(np.uint32)


def decode_values(ring_sum: np.ndarray, scale: float) -> np.ndarray:
    """Ring sum (uint32) → float32, reading the ring as two's complement int32."""
    return (ring_sum.view(np.int32).astype(np.float64) / scale).astype(np.float32)
