"""Round configuration, protocol stages and the session id that binds every seed to one round.

The config is public: the server sends it with the task, and its digest is signed into every key
advertisement. The session id hashes the digest together with every advertised key, so pairwise seeds, share
keys and the ring order all change whenever anything about the round changes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from secure_agg.buckets import BucketLayout
from secure_agg.errors import ConfigError, MalformedMessageError
from secure_agg.params import SecAggRequirements, choose_parameters
from secure_agg.wire import Reader, Writer

PROTOCOL_TAG = b"hetlora/secagg/v1"


class Stage(StrEnum):
    """Protocol stages, shared by client and server state machines."""

    ADVERTISE_KEYS = "advertise_keys"
    SHARE_KEYS = "share_keys"
    MASKED_INPUT = "masked_input"
    CONSISTENCY_CHECK = "consistency_check"
    UNMASK = "unmask"
    COMPLETED = "completed"
    ABORTED = "aborted"


@dataclass(frozen=True)
class RoundConfig:
    """Everything both sides must agree on before keys are exchanged.

    ``clients`` are round-local integer ids (the caller maps them to enrolled devices); ``levels[i]`` is the
    number of rank buckets client ``clients[i]`` trains. ``degree`` and ``threshold`` are the share graph's
    (every client); ``bucket_degrees[j]`` is the masking graph's degree over bucket j's cohort (the clients of
    level > j), empty for "``degree`` everywhere". ``context`` binds application state into the session
    (e.g. the hash of the global adapter every client trained on, against model-inconsistency attacks).
    """

    round_id: int
    clients: tuple[int, ...]
    levels: tuple[int, ...]
    layout: BucketLayout
    degree: int
    threshold: int
    min_cohort: int
    context: bytes = b""
    bucket_degrees: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.clients)
        problems = []
        if list(self.clients) != sorted(set(self.clients)) or any(not 0 <= c < 2**32 for c in self.clients):
            problems.append("clients must be sorted, distinct 32-bit ids")
        if len(self.levels) != n:
            problems.append(f"{len(self.levels)} levels for {n} clients")
        if any(not 0 <= lv <= self.layout.n_buckets for lv in self.levels):
            problems.append(f"levels must be in [0, {self.layout.n_buckets}]")
        if n < 2:
            problems.append(f"need at least 2 clients, got {n}")
        if self.degree < 1 or (self.degree < n - 1 and self.degree % 2):
            problems.append(f"degree must be even (Harary) or >= n-1 (complete), got {self.degree} for n={n}")
        if not 2 <= self.threshold <= min(self.degree + 1, n):
            problems.append(f"threshold must be in [2, min(degree+1, n)] = [2, {min(self.degree + 1, n)}]")
        if self.min_cohort < self.threshold:
            problems.append(f"min_cohort {self.min_cohort} must be >= threshold {self.threshold}")
        if not 0 <= self.round_id < 2**64:
            problems.append("round_id must fit in 64 bits")
        problems.extend(self._bucket_degree_problems())
        if problems:
            raise ConfigError("invalid RoundConfig: " + "; ".join(problems))

    def _bucket_degree_problems(self) -> list[str]:
        if not self.bucket_degrees:
            return []
        if len(self.bucket_degrees) != self.layout.n_buckets:
            return [f"{len(self.bucket_degrees)} bucket degrees for {self.layout.n_buckets} buckets"]
        problems = []
        for j, (k, n_j) in enumerate(zip(self.bucket_degrees, self.cohort_sizes, strict=True)):
            if k < 0 or (k < n_j - 1 and k % 2):
                problems.append(f"bucket {j} degree must be even (Harary) or >= {n_j - 1} (complete), got {k}")
        return problems

    @property
    def cohort_sizes(self) -> tuple[int, ...]:
        """Clients per bucket: bucket j's cohort is every client of level > j."""
        return tuple(sum(1 for lv in self.levels if lv > j) for j in range(self.layout.n_buckets))

    def mask_degrees(self) -> tuple[int, ...]:
        """Each bucket's masking-graph degree (``degree`` for every bucket when none were given)."""
        return self.bucket_degrees or (self.degree,) * self.layout.n_buckets

    @staticmethod
    def create(
        round_id: int,
        clients: Sequence[int],
        layout: BucketLayout,
        levels: Mapping[int, int] | None = None,
        requirements: SecAggRequirements | None = None,
        min_cohort: int | None = None,
        context: bytes = b"",
    ) -> RoundConfig:
        """A config with (k, t) from the parameter finder, for the round and for each bucket's own cohort;
        every client trains every bucket by default."""
        ids = tuple(sorted(clients))
        params = choose_parameters(len(ids), requirements)
        lv = tuple((levels or {}).get(c, layout.n_buckets) for c in ids)
        cohorts = [sum(1 for x in lv if x > j) for j in range(layout.n_buckets)]
        bucket_degrees = tuple(
            min(choose_parameters(n_j, requirements).degree, n_j - 1) if n_j >= 2 else 0 for n_j in cohorts
        )
        return RoundConfig(
            round_id=round_id,
            clients=ids,
            levels=lv,
            layout=layout,
            degree=min(params.degree, len(ids) - 1),
            threshold=params.threshold,
            min_cohort=params.threshold if min_cohort is None else min_cohort,
            context=context,
            bucket_degrees=bucket_degrees,
        )

    @property
    def level_of(self) -> dict[int, int]:
        return dict(zip(self.clients, self.levels, strict=True))

    def to_bytes(self) -> bytes:
        w = Writer().raw(PROTOCOL_TAG).u64(self.round_id).ids(self.clients).ids(self.levels)
        w.ids(self.layout.sizes).u32(self.degree).u32(self.threshold).u32(self.min_cohort)
        return w.blob(self.context).ids(self.bucket_degrees).getvalue()

    @staticmethod
    def from_bytes(data: bytes) -> RoundConfig:
        r = Reader(data)
        if r.fixed(len(PROTOCOL_TAG)) != PROTOCOL_TAG:
            raise MalformedMessageError("not a hetlora secagg v1 round config")
        round_id, clients, levels = r.u64(), r.ids(), r.ids()
        sizes = r.ids()
        degree, threshold, min_cohort = r.u32(), r.u32(), r.u32()
        context = r.blob(1 << 16)
        bucket_degrees = r.ids()
        r.done()
        layout = BucketLayout(sizes)
        return RoundConfig(round_id, clients, levels, layout, degree, threshold, min_cohort, context, bucket_degrees)

    def digest(self) -> bytes:
        """SHA-256 of the canonical encoding: what advertisements sign and the session id starts from."""
        return hashlib.sha256(self.to_bytes()).digest()


def session_id(config_digest: bytes, keys: Mapping[int, tuple[bytes, bytes]]) -> bytes:
    """SHA-256 over the config digest and every advertised (encryption, masking) public key, by client id."""
    h = hashlib.sha256(PROTOCOL_TAG + b"/session")
    h.update(config_digest)
    for cid in sorted(keys):
        enc_pk, mask_pk = keys[cid]
        h.update(cid.to_bytes(4, "little") + enc_pk + mask_pk)
    return h.digest()
