"""The server state machine: the same five stages as the client, plus COMPLETED and ABORTED.

``receive_*`` methods take one client's message; ``close_*`` methods end a stage when the caller decides
(everyone answered, or a deadline passed) and return what to send next. Clients missing at a close are
dropped: before masked input they are removed from the graph (their neighbours never mask with them);
after it, their pairwise masks are removed with their reconstructed masking key. The round aborts, with a
reason, only when fewer than t clients remain or a needed secret has fewer than t shares.

Each client uploads the prefix of regions it trains; bucket j's cohort masks with its own graph
(:mod:`secure_agg.cohorts`). Masked inputs are summed into one vector as they arrive (uint32 adds wrap mod
2^32), so the server holds one vector, not n. At the end it re-expands only what it must: each survivor's self
mask per unmasked bucket it uploaded and, for each dropped client, its pairwise masks with surviving
neighbours in each unmasked bucket.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np

from secure_agg import keys as kx
from secure_agg import prg, shamir
from secure_agg.buckets import BucketOutcome, BucketStatus, bucket_outcomes
from secure_agg.client import seed_commitment
from secure_agg.cohorts import RoundGraphs, contact_map
from secure_agg.config import RoundConfig, Stage, session_id
from secure_agg.errors import AbortedError, ProtocolViolationError, ReplayError, VerificationError, WrongStageError
from secure_agg.identity import Verifier
from secure_agg.keys import PUBLIC_KEY_BYTES
from secure_agg.listener import NullListener, StageListener
from secure_agg.messages import (
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    KeyDirectory,
    MaskedInput,
    ShareKeys,
    ShareRelay,
    UnmaskRequest,
    UnmaskResponse,
    consistency_payload,
)


@dataclass
class ServerState:
    """Everything the server must remember between stages (no client secrets until unmasking)."""

    config: RoundConfig
    stage: Stage = Stage.ADVERTISE_KEYS
    adverts: dict[int, AdvertiseKeys] = field(default_factory=dict)
    session_id: bytes = b""
    neighbours: dict[int, tuple[int, ...]] = field(default_factory=dict)  # share graph
    mask_neighbours: tuple[dict[int, tuple[int, ...]], ...] = ()  # per bucket: member -> mask peers
    contacts: dict[int, tuple[int, ...]] = field(default_factory=dict)  # share and mask neighbours
    commitments: dict[int, tuple[bytes, ...]] = field(default_factory=dict)
    ciphertexts: dict[int, dict[int, bytes]] = field(default_factory=dict)  # sender -> recipient -> bundle
    masked_sum: np.ndarray | None = None
    masked_from: tuple[int, ...] = ()
    survivors: tuple[int, ...] = ()
    outcomes: tuple[BucketOutcome, ...] = ()
    signatures: dict[int, bytes] = field(default_factory=dict)
    signers: tuple[int, ...] = ()
    seed_shares: dict[int, dict[int, tuple[bytes, ...]]] = field(default_factory=dict)  # owner -> holder -> shares
    key_shares: dict[int, dict[int, bytes]] = field(default_factory=dict)  # owner -> holder -> share
    responders: tuple[int, ...] = ()
    abort_reason: str = ""


@dataclass(frozen=True, eq=False)
class AggregateResult:
    """The unmasked ring sums of every unmasked bucket region, and who is in them."""

    session_id: bytes
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    outcomes: tuple[BucketOutcome, ...]
    ring_sums: dict[int, np.ndarray]  # bucket -> uint32 region (weight slot first)


class SecAggServer:
    """The server's side of one round."""

    def __init__(self, state: ServerState, verifier: Verifier, listener: StageListener | None = None) -> None:
        self.state = state
        self._verifier = verifier
        self._listener: StageListener = listener or NullListener()

    @staticmethod
    def start(config: RoundConfig, verifier: Verifier, listener: StageListener | None = None) -> SecAggServer:
        return SecAggServer(ServerState(config), verifier, listener)

    # helpers ---------------------------------------------------------------------------------------------
    def _expect(self, stage: Stage) -> None:
        if self.state.stage != stage:
            raise WrongStageError(f"server is in {self.state.stage}, not {stage}")

    def _check_session(self, sid: bytes) -> None:
        if sid != self.state.session_id:
            raise ReplayError("message belongs to another session (old round or different key set)")

    def _abort(self, reason: str) -> AbortedError:
        stage = self.state.stage
        self.state = dataclasses.replace(self.state, stage=Stage.ABORTED, abort_reason=reason)
        self._listener.aborted(stage, reason)
        return AbortedError(reason)

    def _close(self, expected: tuple[int, ...] | list[int], arrived: tuple[int, ...]) -> None:
        dropped = sorted(set(expected) - set(arrived))
        self._listener.stage_closed(self.state.stage, len(arrived), dropped)
        if len(arrived) < self.state.config.threshold:
            raise self._abort(
                f"{self.state.stage}: {len(arrived)} clients left, fewer than the threshold "
                f"{self.state.config.threshold}"
            )

    def abort(self, reason: str) -> None:
        """Abort from outside (operator request, global deadline)."""
        self._abort(reason)

    # Stage 0 ---------------------------------------------------------------------------------------------
    def receive_advertisement(self, msg: AdvertiseKeys) -> None:
        self._expect(Stage.ADVERTISE_KEYS)
        cfg = self.state.config
        if msg.config_digest != cfg.digest():
            raise ReplayError(f"advertisement of client {msg.client_id} is for another round config")
        if msg.client_id not in cfg.clients:
            raise ProtocolViolationError(f"client {msg.client_id} is not in this round's cohort")
        if msg.client_id in self.state.adverts:
            raise ReplayError(f"client {msg.client_id} already advertised keys")
        if len(msg.enc_public) != PUBLIC_KEY_BYTES or len(msg.mask_public) != PUBLIC_KEY_BYTES:
            raise ProtocolViolationError("public keys must be 32-byte X25519 keys")
        if not self._verifier.verify(msg.client_id, msg.signed_payload(), msg.signature):
            raise VerificationError(f"advertisement of client {msg.client_id} has a bad signature")
        self.state.adverts = {**self.state.adverts, msg.client_id: msg}

    def close_advertise_keys(self) -> KeyDirectory:
        """Freeze U1, derive the session id and the graph; broadcast the directory to every member of U1."""
        self._expect(Stage.ADVERTISE_KEYS)
        st = self.state
        members = tuple(sorted(st.adverts))
        self._close(st.config.clients, members)
        keys = {c: (st.adverts[c].enc_public, st.adverts[c].mask_public) for c in members}
        sid = session_id(st.config.digest(), keys)
        cfg = st.config
        graphs = RoundGraphs.build(members, cfg.level_of, cfg.degree, cfg.mask_degrees(), sid)
        adjacency, buckets = graphs.shares.adjacency(), graphs.bucket_adjacency()
        self.state = dataclasses.replace(
            st,
            stage=Stage.SHARE_KEYS,
            session_id=sid,
            neighbours=adjacency,
            mask_neighbours=buckets,
            contacts=contact_map(adjacency, buckets),
        )
        return KeyDirectory(st.config.digest(), tuple(st.adverts[c] for c in members))

    # Stage 1 ---------------------------------------------------------------------------------------------
    def receive_shares(self, msg: ShareKeys) -> None:
        self._expect(Stage.SHARE_KEYS)
        st = self.state
        self._check_session(msg.session_id)
        if msg.client_id not in st.neighbours:
            raise ProtocolViolationError(f"client {msg.client_id} did not advertise keys")
        if msg.client_id in st.ciphertexts:
            raise ReplayError(f"client {msg.client_id} already shared keys")
        if set(msg.ciphertexts) != set(st.contacts[msg.client_id]):
            raise ProtocolViolationError(f"client {msg.client_id} must send one bundle per contact")
        if len(msg.seed_commitments) != st.config.level_of[msg.client_id]:
            raise ProtocolViolationError(f"client {msg.client_id} must commit to one seed per bucket it trains")
        st.ciphertexts = {**st.ciphertexts, msg.client_id: dict(msg.ciphertexts)}
        st.commitments = {**st.commitments, msg.client_id: msg.seed_commitments}

    def close_share_keys(self) -> dict[int, ShareRelay]:
        """Freeze U2 and route each bundle to its recipient (only between members of U2)."""
        self._expect(Stage.SHARE_KEYS)
        st = self.state
        u2 = tuple(sorted(st.ciphertexts))
        self._close(tuple(st.neighbours), u2)
        relays = {
            r: ShareRelay(r, st.session_id, {s: st.ciphertexts[s][r] for s in st.contacts[r] if s in st.ciphertexts})
            for r in u2
        }
        zero = np.zeros(st.config.layout.total, dtype=np.uint32)
        self.state = dataclasses.replace(st, stage=Stage.MASKED_INPUT, masked_sum=zero)
        return relays

    # Stage 2 ---------------------------------------------------------------------------------------------
    def receive_masked_input(self, msg: MaskedInput) -> None:
        self._expect(Stage.MASKED_INPUT)
        st = self.state
        self._check_session(msg.session_id)
        if msg.client_id not in st.ciphertexts:
            raise ProtocolViolationError(f"client {msg.client_id} did not share keys")
        if msg.client_id in st.masked_from:
            raise ReplayError(f"client {msg.client_id} already sent its masked input")
        v = msg.vector
        words = st.config.layout.prefix(st.config.level_of[msg.client_id])
        if v.dtype != np.uint32 or v.shape != (words,):
            raise ProtocolViolationError(f"masked input of client {msg.client_id} must be uint32[{words}]")
        assert st.masked_sum is not None
        head = st.masked_sum[:words]
        np.add(head, v, out=head)
        st.masked_from = (*st.masked_from, msg.client_id)

    def close_masked_input(self) -> ConsistencyRequest:
        """Freeze U3 (whose inputs are in the sum) and decide which buckets may be unmasked."""
        self._expect(Stage.MASKED_INPUT)
        st = self.state
        u3 = tuple(sorted(st.masked_from))
        self._close(tuple(st.ciphertexts), u3)
        cfg = st.config
        outcomes = bucket_outcomes(cfg.layout.n_buckets, cfg.level_of, u3, cfg.min_cohort)
        self.state = dataclasses.replace(st, stage=Stage.CONSISTENCY_CHECK, survivors=u3, outcomes=outcomes)
        return ConsistencyRequest(st.session_id, u3)

    # Stage 3 ---------------------------------------------------------------------------------------------
    def receive_consistency(self, msg: ConsistencySignature) -> None:
        self._expect(Stage.CONSISTENCY_CHECK)
        st = self.state
        self._check_session(msg.session_id)
        if msg.client_id not in st.survivors:
            raise ProtocolViolationError(f"client {msg.client_id} is not a survivor")
        if msg.client_id in st.signatures:
            raise ReplayError(f"client {msg.client_id} already signed")
        if not self._verifier.verify(msg.client_id, consistency_payload(st.session_id, st.survivors), msg.signature):
            raise VerificationError(f"consistency signature of client {msg.client_id} does not verify")
        st.signatures = {**st.signatures, msg.client_id: msg.signature}

    def close_consistency_check(self) -> UnmaskRequest:
        self._expect(Stage.CONSISTENCY_CHECK)
        st = self.state
        signers = tuple(sorted(st.signatures))
        self._close(st.survivors, signers)
        self.state = dataclasses.replace(st, stage=Stage.UNMASK, signers=signers)
        return UnmaskRequest(st.session_id, st.survivors, dict(st.signatures))

    # Stage 4 ---------------------------------------------------------------------------------------------
    def receive_unmask(self, msg: UnmaskResponse) -> None:
        self._expect(Stage.UNMASK)
        st = self.state
        self._check_session(msg.session_id)
        holder = msg.client_id
        if holder not in st.signers:
            raise ProtocolViolationError(f"client {holder} did not sign the survivor set")
        if holder in st.responders:
            raise ReplayError(f"client {holder} already sent its unmasking shares")
        alive = set(st.survivors)
        may_hold = set(st.neighbours[holder]) | {holder}
        for owner, shares in msg.seed_shares.items():
            if owner not in alive or owner not in may_hold:
                raise ProtocolViolationError(f"client {holder} sent seed shares of {owner}, which it may not")
            n_open = len(self._open_buckets_of(owner))
            if len(shares) != n_open:
                raise ProtocolViolationError(f"client {holder} sent {len(shares)} seed shares, expected {n_open}")
        for owner in msg.key_shares:
            if owner in alive or owner not in may_hold or owner not in st.ciphertexts:
                raise ProtocolViolationError(f"client {holder} sent a key share of {owner}, which it may not")
        seed = {o: dict(h) for o, h in st.seed_shares.items()}
        for owner, shares in msg.seed_shares.items():
            seed.setdefault(owner, {})[holder] = shares
        key = {o: dict(h) for o, h in st.key_shares.items()}
        for owner, share in msg.key_shares.items():
            key.setdefault(owner, {})[holder] = share
        st.seed_shares, st.key_shares = seed, key
        st.responders = (*st.responders, holder)

    def _open_buckets_of(self, cid: int) -> list[int]:
        """The unmasked buckets this client uploaded (its self-mask seeds the server must reconstruct)."""
        level = self.state.config.level_of[cid]
        return [o.index for o in self.state.outcomes if o.status == BucketStatus.UNMASKED and o.index < level]

    def _needed(self) -> tuple[list[int], list[int]]:
        """Survivors whose self masks must be removed, and dropped clients whose pairwise masks must be."""
        st = self.state
        alive = set(st.survivors)
        open_buckets = [o.index for o in st.outcomes if o.status == BucketStatus.UNMASKED]
        dropped = [
            c
            for c in sorted(st.ciphertexts)
            if c not in alive and any(alive.intersection(st.mask_neighbours[j].get(c, ())) for j in open_buckets)
        ]
        return [c for c in st.survivors if self._open_buckets_of(c)], dropped

    def missing_shares(self) -> dict[int, int]:
        """Client id → shares still missing to reach t (empty when :meth:`finalize` can succeed)."""
        st = self.state
        t = st.config.threshold
        seeds, keys = self._needed()
        out = {c: t - len(st.seed_shares.get(c, {})) for c in seeds}
        out.update({c: t - len(st.key_shares.get(c, {})) for c in keys})
        return {c: m for c, m in out.items() if m > 0}

    def finalize(self) -> AggregateResult:
        """Reconstruct the needed secrets, remove all masks and return the unmasked bucket sums."""
        self._expect(Stage.UNMASK)
        st = self.state
        self._listener.stage_closed(Stage.UNMASK, len(st.responders), sorted(set(st.signers) - set(st.responders)))
        t0 = time.perf_counter()
        missing = self.missing_shares()
        if missing:
            worst = ", ".join(f"client {c}: {t_left} short" for c, t_left in sorted(missing.items())[:5])
            raise self._abort(f"unmask: secrets without {st.config.threshold} shares ({worst})")
        cfg, layout = st.config, st.config.layout
        open_buckets = [o.index for o in st.outcomes if o.status == BucketStatus.UNMASKED]
        seeds_of, dropped = self._needed()
        plus: dict[int, list[bytes]] = {j: [] for j in open_buckets}
        minus: dict[int, list[bytes]] = {j: [] for j in open_buckets}
        try:
            for c in seeds_of:
                buckets = self._open_buckets_of(c)
                own = self._reconstruct_seeds(c, st.seed_shares[c], buckets, cfg.threshold)
                for j, seed in zip(buckets, own, strict=True):
                    minus[j].append(seed)
            for d in dropped:
                sk = shamir.combine(st.key_shares[d], cfg.threshold)
                if kx.public_from_private(sk) != st.adverts[d].mask_public:
                    raise VerificationError(f"reconstructed masking key of client {d} does not match its advert")
                alive = set(st.survivors)
                peers = sorted({v for j in open_buckets for v in st.mask_neighbours[j].get(d, ()) if v in alive})
                for v in peers:
                    shared = [j for j in open_buckets if v in st.mask_neighbours[j].get(d, ())]
                    pair = kx.pairwise_seeds(sk, st.adverts[v].mask_public, st.session_id, d, v, shared)
                    for j, seed in pair.items():
                        (minus if v < d else plus)[j].append(seed)
        except (AbortedError, VerificationError) as exc:
            raise self._abort(f"unmask: {exc}") from exc
        assert st.masked_sum is not None
        sums: dict[int, np.ndarray] = {}
        for j in open_buckets:
            region = st.masked_sum[layout.region(j)].copy()
            prg.add_masks(region, plus=plus[j], minus=minus[j])
            sums[j] = region
        result = AggregateResult(
            st.session_id, st.survivors, tuple(sorted(set(st.ciphertexts) - set(st.survivors))), st.outcomes, sums
        )
        self.state = dataclasses.replace(st, stage=Stage.COMPLETED)
        self._listener.completed(len(st.survivors), st.outcomes, time.perf_counter() - t0)
        return result

    def _reconstruct_seeds(
        self, owner: int, by_holder: dict[int, tuple[bytes, ...]], buckets: list[int], t: int
    ) -> list[bytes]:
        out = []
        for pos, j in enumerate(buckets):
            seed = shamir.combine({h: shares[pos] for h, shares in by_holder.items()}, t)
            if seed_commitment(self.state.session_id, owner, j, seed) != self.state.commitments[owner][j]:
                raise VerificationError(f"reconstructed self-mask seed of client {owner} fails its commitment")
            out.append(seed)
        return out
