"""The client state machine: advertise keys → share keys → masked input → consistency check → unmask.

One method per stage. Each method checks the stage, validates the server's message completely, computes its
answer, and only then commits the new state, so an error (typed, see :mod:`secure_agg.errors`) leaves the
client exactly where it was. :class:`ClientState` holds everything needed to resume after a restart
(it contains private keys: persist it encrypted).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from secure_agg import keys as kx
from secure_agg import prg, shamir
from secure_agg.buckets import BucketStatus, bucket_outcomes
from secure_agg.cohorts import RoundGraphs
from secure_agg.config import RoundConfig, Stage, session_id
from secure_agg.errors import (
    AbortedError,
    MalformedMessageError,
    ProtocolViolationError,
    ReplayError,
    VerificationError,
    WrongStageError,
)
from secure_agg.identity import Signer, Verifier
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
    advertise_payload,
    consistency_payload,
)
from secure_agg.wire import Reader, Writer


def seed_commitment(session: bytes, owner: int, bucket: int, seed: bytes) -> bytes:
    """Binding commitment to a self-mask seed, so the server can detect a wrong reconstruction."""
    return hashlib.sha256(b"hetlora/secagg/v1/seed" + session + struct.pack("<II", owner, bucket) + seed).digest()


def pack_bundle(sender: int, recipient: int, key_share: bytes | None, seed_shares: tuple[bytes, ...] = ()) -> bytes:
    """A bundle for one contact: the shares it holds (share neighbours) or none (mask-only contacts)."""
    w = Writer().u32(sender).u32(recipient).u8(0 if key_share is None else 1)
    if key_share is not None:
        w.raw(key_share).u32(len(seed_shares))
        for s in seed_shares:
            w.raw(s)
    return w.getvalue()


def unpack_bundle(data: bytes) -> tuple[int, int, bytes | None, tuple[bytes, ...]]:
    r = Reader(data)
    sender, recipient, carries = r.u32(), r.u32(), r.u8()
    if carries not in (0, 1):
        raise MalformedMessageError(f"share bundle has flag {carries}")
    if not carries:
        r.done()
        return sender, recipient, None, ()
    key_share, n = r.fixed(shamir.ELEMENT_BYTES), r.u32()
    if n > 1 << 12:
        raise MalformedMessageError(f"share bundle declares {n} seed shares")
    seeds = tuple(r.fixed(shamir.ELEMENT_BYTES) for _ in range(n))
    r.done()
    return sender, recipient, key_share, seeds


@dataclass
class ClientState:
    """Everything a client must remember between stages (secret material included)."""

    client_id: int
    config: RoundConfig
    stage: Stage = Stage.ADVERTISE_KEYS
    enc_key: kx.KeyPair | None = None
    mask_key: kx.KeyPair | None = None
    session_id: bytes = b""
    directory: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    neighbours: tuple[int, ...] = ()  # share neighbours: who holds this client's shares
    mask_neighbours: tuple[tuple[int, ...], ...] = ()  # per bucket below the level: who it masks with
    contacts: tuple[int, ...] = ()  # share and mask neighbours: who gets a bundle
    self_seeds: tuple[bytes, ...] = ()  # one per bucket below the level
    # owner -> (share of owner's masking key, shares of owner's self-mask seeds), own shares included
    held: dict[int, tuple[bytes, tuple[bytes, ...]]] = field(default_factory=dict)
    mask_peers: tuple[int, ...] = ()
    survivors: tuple[int, ...] = ()
    abort_reason: str = ""


class SecAggClient:
    """One client's side of one round. ``entropy`` exists for known-answer tests only."""

    def __init__(
        self,
        state: ClientState,
        signer: Signer,
        verifier: Verifier,
        entropy: Callable[[int], bytes] | None = None,
    ) -> None:
        self.state = state
        self._signer = signer
        self._verifier = verifier
        self._entropy = entropy or os.urandom

    @staticmethod
    def start(
        client_id: int,
        config: RoundConfig,
        signer: Signer,
        verifier: Verifier,
        entropy: Callable[[int], bytes] | None = None,
    ) -> SecAggClient:
        if client_id not in config.clients:
            raise ProtocolViolationError(f"client {client_id} is not in this round's cohort")
        return SecAggClient(ClientState(client_id, config), signer, verifier, entropy)

    def _expect(self, stage: Stage) -> None:
        if self.state.stage != stage:
            raise WrongStageError(f"client {self.state.client_id} is in {self.state.stage}, not {stage}")

    def _check_session(self, sid: bytes) -> None:
        if sid != self.state.session_id:
            raise ReplayError("message belongs to another session (old round or different key set)")

    def abort(self, reason: str) -> None:
        """Give up on the round (e.g. on a server timeout); nothing further will be revealed."""
        self.state = dataclasses.replace(self.state, stage=Stage.ABORTED, abort_reason=reason)

    # Stage 0 -------------------------------------------------------------------------------------------
    def advertise_keys(self) -> AdvertiseKeys:
        """Generate this round's two key pairs and sign their public halves over the config digest."""
        self._expect(Stage.ADVERTISE_KEYS)
        st = self.state
        enc, mask = kx.KeyPair.generate(self._entropy), kx.KeyPair.generate(self._entropy)
        digest = st.config.digest()
        sig = self._signer.sign(advertise_payload(st.client_id, digest, enc.public, mask.public))
        self.state = dataclasses.replace(st, stage=Stage.SHARE_KEYS, enc_key=enc, mask_key=mask)
        return AdvertiseKeys(st.client_id, digest, enc.public, mask.public, sig)

    # Stage 1 -------------------------------------------------------------------------------------------
    def share_keys(self, directory: KeyDirectory) -> ShareKeys:
        """Check the key directory, find neighbours, and Shamir-share the masking key and self-mask seeds."""
        self._expect(Stage.SHARE_KEYS)
        st = self.state
        assert st.enc_key is not None and st.mask_key is not None
        cfg = st.config
        if directory.config_digest != cfg.digest():
            raise ReplayError("key directory is for another round config")
        keys: dict[int, tuple[bytes, bytes]] = {}
        entries: dict[int, AdvertiseKeys] = {}
        for e in directory.entries:
            if e.client_id in keys:
                raise ProtocolViolationError(f"key directory lists client {e.client_id} twice")
            if e.client_id not in cfg.clients:
                raise ProtocolViolationError(f"key directory lists unknown client {e.client_id}")
            if e.config_digest != directory.config_digest:
                raise ReplayError(f"advertisement of client {e.client_id} is for another round")
            keys[e.client_id] = (e.enc_public, e.mask_public)
            entries[e.client_id] = e
        if keys.get(st.client_id) != (st.enc_key.public, st.mask_key.public):
            raise ProtocolViolationError("key directory omits or alters this client's own keys")
        if len(keys) < cfg.threshold:
            raise AbortedError(f"only {len(keys)} clients advertised keys, threshold is {cfg.threshold}")
        sid = session_id(directory.config_digest, keys)
        me, level = st.client_id, cfg.level_of[st.client_id]
        graphs = RoundGraphs.build(keys, cfg.level_of, cfg.degree, cfg.mask_degrees(), sid)
        neighbours = graphs.share_neighbours(me)
        contacts = graphs.contacts(me, level)
        # Only keys this client will use need checking: a forged key elsewhere cannot reach its secrets,
        # because every contact it masks or shares with is verified against the enrolled identity.
        for v in contacts:
            e = entries[v]
            if not self._verifier.verify(v, e.signed_payload(), e.signature):
                raise VerificationError(f"advertisement of client {v} has a bad signature")
        holders = (*neighbours, me)
        seeds = tuple(self._entropy(prg.SEED_BYTES) for _ in range(level))
        key_shares = shamir.split(st.mask_key.private, cfg.threshold, holders, self._entropy)
        seed_shares = [shamir.split(s, cfg.threshold, holders, self._entropy) for s in seeds]
        holds = set(neighbours)
        ciphertexts = {}
        for v in contacts:
            if v in holds:
                bundle = pack_bundle(me, v, key_shares[v], tuple(ss[v] for ss in seed_shares))
            else:
                bundle = pack_bundle(me, v, None)
            k = kx.share_key(st.enc_key.private, keys[v][0], sid, me, v)
            ciphertexts[v] = kx.seal(k, bundle, sid, me, v, self._entropy)
        held = {me: (key_shares[me], tuple(ss[me] for ss in seed_shares))}
        commitments = tuple(seed_commitment(sid, me, j, s) for j, s in enumerate(seeds))
        self.state = dataclasses.replace(
            st,
            stage=Stage.MASKED_INPUT,
            session_id=sid,
            directory=keys,
            neighbours=neighbours,
            mask_neighbours=graphs.mask_neighbours(me, level),
            contacts=contacts,
            self_seeds=seeds,
            held=held,
        )
        return ShareKeys(me, sid, commitments, ciphertexts)

    # Stage 2 -------------------------------------------------------------------------------------------
    def masked_input(self, relay: ShareRelay, vector: np.ndarray) -> MaskedInput:
        """Store neighbours' shares and upload x + self masks ± pairwise masks (mod 2^32), bucket by bucket.

        ``vector`` is the client's prefix of the layout (``layout.prefix(level)`` words): it uploads only the
        buckets it trains, each masked with that bucket's cohort.
        """
        self._expect(Stage.MASKED_INPUT)
        st = self.state
        assert st.enc_key is not None and st.mask_key is not None
        self._check_session(relay.session_id)
        me, cfg = st.client_id, st.config
        layout, levels = cfg.layout, cfg.level_of
        if relay.recipient != me:
            raise ProtocolViolationError(f"share relay is addressed to {relay.recipient}, not {me}")
        x = np.asarray(vector)
        words = layout.prefix(levels[me])
        if x.dtype != np.uint32 or x.shape != (words,):
            raise ProtocolViolationError(f"input must be uint32[{words}], got {x.dtype}{list(x.shape)}")
        held = dict(st.held)
        holds = set(st.neighbours)
        for sender, ct in relay.ciphertexts.items():
            if sender not in st.contacts:
                raise ProtocolViolationError(f"share relay carries a bundle from non-contact {sender}")
            k = kx.share_key(st.enc_key.private, st.directory[sender][0], st.session_id, me, sender)
            try:
                s_from, s_to, key_share, seed_shares = unpack_bundle(kx.open_sealed(k, ct, st.session_id, sender, me))
            except MalformedMessageError as exc:
                raise VerificationError(f"bundle from {sender} is malformed: {exc}") from exc
            expected = levels[sender] if sender in holds else None
            got = None if key_share is None else len(seed_shares)
            if (s_from, s_to) != (sender, me) or got != expected:
                raise VerificationError(f"bundle from {sender} is not addressed as expected")
            if key_share is not None:
                held[sender] = (key_share, seed_shares)
        peers = tuple(sorted(relay.ciphertexts))
        arrived = set(peers)
        y = np.array(x, dtype=np.uint32, copy=True)
        plus: list[list[bytes]] = [[] for _ in st.mask_neighbours]
        minus: list[list[bytes]] = [[] for _ in st.mask_neighbours]
        for v in peers:
            buckets = [j for j, group in enumerate(st.mask_neighbours) if v in group]
            seeds = kx.pairwise_seeds(st.mask_key.private, st.directory[v][1], st.session_id, me, v, buckets)
            for j, seed in seeds.items():
                (plus if me < v else minus)[j].append(seed)
        for j, group in enumerate(st.mask_neighbours):
            if group and not arrived.intersection(group):
                # Only the self mask would hide this region, and it is revealed at the end: drop out instead.
                raise AbortedError(f"no mask neighbour in bucket {j} finished key sharing; not uploading")
            region = layout.region(j)
            prg.add_masks(y[region.start : region.stop], plus=[st.self_seeds[j], *plus[j]], minus=minus[j])
        self.state = dataclasses.replace(st, stage=Stage.CONSISTENCY_CHECK, held=held, mask_peers=peers)
        return MaskedInput(me, st.session_id, y)

    # Stage 3 -------------------------------------------------------------------------------------------
    def consistency_check(self, request: ConsistencyRequest) -> ConsistencySignature:
        """Sign the survivor set, after checking it is plausible from this client's point of view."""
        self._expect(Stage.CONSISTENCY_CHECK)
        st = self.state
        self._check_session(request.session_id)
        self._check_survivors(request.survivors)
        sig = self._signer.sign(consistency_payload(st.session_id, request.survivors))
        self.state = dataclasses.replace(st, stage=Stage.UNMASK, survivors=request.survivors)
        return ConsistencySignature(st.client_id, st.session_id, sig)

    def _check_survivors(self, survivors: tuple[int, ...]) -> None:
        st = self.state
        if list(survivors) != sorted(set(survivors)):
            raise ProtocolViolationError("survivor list must be sorted and duplicate-free")
        if st.client_id not in survivors:
            raise ProtocolViolationError("survivor list omits this client, which did send its input")
        unknown = set(survivors) - set(st.directory)
        if unknown:
            raise ProtocolViolationError(f"survivor list names clients that never advertised: {sorted(unknown)}")
        not_shared = (set(survivors) & set(st.contacts)) - set(st.mask_peers)
        if not_shared:
            raise ProtocolViolationError(f"survivors {sorted(not_shared)} never shared keys with this client")
        if len(survivors) < st.config.threshold:
            raise AbortedError(f"{len(survivors)} survivors are fewer than the threshold {st.config.threshold}")

    # Stage 4 -------------------------------------------------------------------------------------------
    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Reveal, per peer, the self-mask seed shares (survivor) or the masking-key share (dropped)."""
        self._expect(Stage.UNMASK)
        st = self.state
        cfg = st.config
        self._check_session(request.session_id)
        if request.survivors != st.survivors:
            raise ProtocolViolationError("unmask request names a different survivor set than the one signed")
        # t valid signatures over the same survivor set are what the consistency round needs; checking
        # more would only cost time. Any bad signature met on the way is the server's fault and is fatal.
        payload = consistency_payload(st.session_id, st.survivors)
        checked = sorted(request.signatures)[: cfg.threshold]
        for cid in checked:
            if cid not in st.survivors or not self._verifier.verify(cid, payload, request.signatures[cid]):
                raise VerificationError(f"consistency signature of client {cid} does not verify")
        if len(checked) < cfg.threshold:
            raise AbortedError(f"only {len(checked)} consistency signatures, threshold is {cfg.threshold}")
        outcomes = bucket_outcomes(cfg.layout.n_buckets, cfg.level_of, st.survivors, cfg.min_cohort)
        open_buckets = [o.index for o in outcomes if o.status == BucketStatus.UNMASKED]
        alive = set(st.survivors)
        seed_shares: dict[int, tuple[bytes, ...]] = {}
        key_shares: dict[int, bytes] = {}
        for owner, (key_share, seeds) in st.held.items():
            if owner in alive:
                seed_shares[owner] = tuple(seeds[j] for j in open_buckets if j < len(seeds))
            else:
                key_shares[owner] = key_share
        self.state = dataclasses.replace(st, stage=Stage.COMPLETED)
        return UnmaskResponse(st.client_id, st.session_id, seed_shares, key_shares)
