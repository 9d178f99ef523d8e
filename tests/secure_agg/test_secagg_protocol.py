"""End-to-end protocol tests: exact sums under dropouts at every stage, replay, adversarial peers, persistence."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_agg import (
    AbortedError,
    BucketLayout,
    BucketStatus,
    ClientInput,
    ClientState,
    Ed25519Directory,
    Ed25519Signer,
    FixedPointCodec,
    KeyDirectory,
    MalformedMessageError,
    MaskedInput,
    ProtocolViolationError,
    ReplayError,
    RoundConfig,
    SecAggClient,
    SecAggRequirements,
    SecAggServer,
    ServerState,
    ShareRelay,
    Stage,
    UnmaskRequest,
    VerificationError,
    WrongStageError,
    dumps,
    loads,
    simulate_round,
)
from secure_agg.messages import AdvertiseKeys, ConsistencyRequest, ShareKeys

STAGES = [Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.CONSISTENCY_CHECK, Stage.UNMASK]


def config(
    n: int,
    dim: int = 8,
    degree: int | None = None,
    threshold: int = 2,
    sizes: Sequence[int] | None = None,
    levels: Sequence[int] | None = None,
    min_cohort: int | None = None,
    round_id: int = 1,
) -> RoundConfig:
    layout = BucketLayout(tuple(sizes) if sizes else (dim,))
    return RoundConfig(
        round_id=round_id,
        clients=tuple(range(n)),
        levels=tuple(levels) if levels else (layout.n_buckets,) * n,
        layout=layout,
        degree=n - 1 if degree is None else degree,
        threshold=threshold,
        min_cohort=threshold if min_cohort is None else min_cohort,
    )


class Harness:
    """A manually driven round, so tests can intercept and tamper with messages."""

    def __init__(self, cfg: RoundConfig, signers: dict[int, Ed25519Signer] | None = None) -> None:
        self.cfg = cfg
        self.signers = signers or {c: Ed25519Signer.generate() for c in cfg.clients}
        self.verifier = Ed25519Directory({c: s.public_bytes for c, s in self.signers.items()})
        self.server = SecAggServer.start(cfg, self.verifier)
        self.clients = {c: SecAggClient.start(c, cfg, self.signers[c], self.verifier) for c in cfg.clients}
        rng = np.random.default_rng(cfg.round_id)
        self.inputs = {
            c: rng.integers(0, 2**32, cfg.layout.prefix(lv), dtype=np.uint64).astype(np.uint32)
            for c, lv in cfg.level_of.items()
        }

    def advertise(self, skip: Sequence[int] = ()) -> KeyDirectory:
        for c, cl in self.clients.items():
            if c not in skip:
                self.server.receive_advertisement(cl.advertise_keys())
        return self.server.close_advertise_keys()

    def share(self, directory: KeyDirectory, skip: Sequence[int] = ()) -> dict[int, ShareRelay]:
        for c in directory_ids(directory):
            if c not in skip:
                self.server.receive_shares(self.clients[c].share_keys(directory))
        return self.server.close_share_keys()

    def mask(self, relays: dict[int, ShareRelay], skip: Sequence[int] = ()) -> ConsistencyRequest:
        for c, relay in relays.items():
            if c not in skip:
                self.server.receive_masked_input(self.clients[c].masked_input(relay, self.inputs[c]))
        return self.server.close_masked_input()

    def consist(self, req: ConsistencyRequest, skip: Sequence[int] = ()) -> UnmaskRequest:
        for c in req.survivors:
            if c not in skip:
                self.server.receive_consistency(self.clients[c].consistency_check(req))
        return self.server.close_consistency_check()

    def unmask(self, req: UnmaskRequest, skip: Sequence[int] = ()) -> None:
        for c in sorted(req.signatures):
            if c not in skip:
                self.server.receive_unmask(self.clients[c].unmask(req))

    def run(self) -> np.ndarray:
        self.unmask(self.consist(self.mask(self.share(self.advertise()))))
        return self.server.finalize().ring_sums[0]

    def expected(self, survivors: Sequence[int]) -> np.ndarray:
        total = np.zeros(self.cfg.layout.total, dtype=np.uint32)
        for c in survivors:
            total[: self.inputs[c].shape[0]] += self.inputs[c]
        return total


def directory_ids(directory: KeyDirectory) -> list[int]:
    return [e.client_id for e in directory.entries]


def test_full_small_round_known_answer() -> None:
    cfg = config(5, dim=6)
    inputs = {c: (np.arange(7, dtype=np.uint32) * (c + 1) + np.uint32(2**32 - 3)) for c in range(5)}
    report = simulate_round(cfg, inputs)
    assert report.result is not None
    expected = (np.arange(7, dtype=np.uint64) * 15 + 5 * (2**32 - 3)) % 2**32
    np.testing.assert_array_equal(report.result.ring_sums[0], expected.astype(np.uint32))


def test_masked_inputs_look_nothing_like_inputs() -> None:
    h = Harness(config(4, dim=64))
    relays = h.share(h.advertise())
    masked = h.clients[0].masked_input(relays[0], np.zeros(h.cfg.layout.total, dtype=np.uint32))
    assert np.count_nonzero(masked.vector) > 60


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_sum_is_exact_under_random_dropouts_at_every_stage(data: st.DataObject) -> None:
    n = data.draw(st.integers(3, 9), label="n")
    complete = data.draw(st.booleans(), label="complete")
    degree = n - 1 if complete or n < 5 else data.draw(st.sampled_from([k for k in (2, 4) if k < n - 1]))
    threshold = data.draw(st.integers(2, min(degree + 1, n)), label="t")
    drops = data.draw(st.dictionaries(st.integers(0, n - 1), st.sampled_from(STAGES), max_size=n), label="drop_at")
    dim = data.draw(st.integers(1, 40), label="dim")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    inputs = {c: rng.integers(0, 2**32, dim + 1, dtype=np.uint64).astype(np.uint32) for c in range(n)}
    report = simulate_round(config(n, dim, degree, threshold), inputs, drop_at=drops)
    masked = [c for c in range(n) if c not in drops or STAGES.index(drops[c]) > STAGES.index(Stage.MASKED_INPUT)]
    if report.result is not None:
        assert report.result.survivors == tuple(masked)
        expected = np.zeros(dim + 1, dtype=np.uint32)
        for c in masked:
            expected += inputs[c]
        np.testing.assert_array_equal(report.result.ring_sums[0], expected)
    else:
        assert report.abort_reason
    if complete:
        # With the complete graph every survivor holds every share, so the only reason to abort is < t.
        counts = [sum(1 for c in range(n) if c not in drops or STAGES.index(drops[c]) > i) for i in range(5)]
        assert report.completed == (min(counts) >= threshold)


def test_weighted_float_round_with_dropouts_within_quantisation_bound() -> None:
    n = 12
    cfg = RoundConfig.create(
        7, range(n), BucketLayout((30, 10)), {c: 1 + c % 2 for c in range(n)}, SecAggRequirements(0.05, 0.3)
    )
    assert (cfg.degree, cfg.threshold) == (4, 2)  # every dropout pattern below leaves t shares of each secret
    codec = FixedPointCodec(value_bound=1.0, weight_bound=10.0, max_clients=n)
    rng = np.random.default_rng(3)
    inputs = {c: ClientInput(rng.uniform(-1.5, 1.5, 40).astype(np.float32), float(c % 7 + 1)) for c in range(n)}
    drops = {0: Stage.ADVERTISE_KEYS, 3: Stage.SHARE_KEYS, 4: Stage.MASKED_INPUT, 8: Stage.UNMASK}
    report = simulate_round(cfg, inputs, codec, drop_at=drops)
    assert report.sums is not None and report.result is not None
    survivors = report.result.survivors
    assert survivors == (1, 2, 5, 6, 7, 8, 9, 10, 11)
    for j, bucket in enumerate(report.sums):
        cohort = [c for c in survivors if cfg.level_of[c] > j]
        assert bucket.outcome.cohort == len(cohort)
        sl = cfg.layout.input_slice(j)
        plain = sum(inputs[c].weight * np.clip(inputs[c].values[sl].astype(np.float64), -1, 1) for c in cohort)
        assert bucket.weighted_sum is not None and bucket.weight_sum == sum(inputs[c].weight for c in cohort)
        assert np.max(np.abs(bucket.weighted_sum - plain)) <= codec.sum_error_bound(n) + 1e-5


def test_dropout_during_key_exchange_does_not_abort() -> None:
    h = Harness(config(10, degree=4, threshold=2))
    directory = h.advertise(skip=[1, 2])
    relays = h.share(directory, skip=[5])
    assert set(relays) == {0, 3, 4, 6, 7, 8, 9}
    req = h.mask(relays, skip=[6])
    h.unmask(h.consist(req))
    np.testing.assert_array_equal(h.server.finalize().ring_sums[0], h.expected([0, 3, 4, 7, 8, 9]))


def test_too_few_clients_abort_with_a_reason() -> None:
    h = Harness(config(5, threshold=4))
    relays = h.share(h.advertise())
    with pytest.raises(AbortedError, match="fewer than the threshold 4"):
        h.mask(relays, skip=[0, 1])
    assert h.server.state.stage == Stage.ABORTED and "masked_input" in h.server.state.abort_reason


def test_missing_unmask_shares_abort_with_the_client_named() -> None:
    h = Harness(config(6, threshold=4))
    req = h.consist(h.mask(h.share(h.advertise())))
    h.unmask(req, skip=[0, 1, 2])
    assert h.server.missing_shares()
    with pytest.raises(AbortedError, match="client 0"):
        h.server.finalize()


def test_server_never_receives_both_shares_of_one_client() -> None:
    h = Harness(config(7, degree=4, threshold=2))
    req = h.consist(h.mask(h.share(h.advertise()), skip=[2, 5]))
    for c in sorted(req.signatures):
        resp = h.clients[c].unmask(req)
        assert not set(resp.seed_shares) & set(resp.key_shares)
        assert set(resp.key_shares) <= {2, 5} and not {2, 5} & set(resp.seed_shares)
        h.server.receive_unmask(resp)
    np.testing.assert_array_equal(h.server.finalize().ring_sums[0], h.expected([0, 1, 3, 4, 6]))


def test_replayed_messages_from_an_old_round_are_rejected() -> None:
    signers = {c: Ed25519Signer.generate() for c in range(4)}
    old, new = Harness(config(4, round_id=1), signers), Harness(config(4, round_id=2), signers)
    old_dir = old.advertise()
    old_relays = old.share(old_dir)
    old_req = old.mask(old_relays)
    with pytest.raises(ReplayError):
        new.server.receive_advertisement(old_dir.entries[0])
    new_dir = new.advertise()
    before = dumps(new.server.state)
    with pytest.raises(ReplayError):
        new.server.receive_shares(ShareKeys(0, old_req.session_id, (bytes(32),), {}))
    assert dumps(new.server.state) == before
    new_relays = new.share(new_dir)
    with pytest.raises(ReplayError):
        new.clients[0].masked_input(old_relays[0], new.inputs[0])
    with pytest.raises(ReplayError):
        new.server.receive_masked_input(MaskedInput(1, old_req.session_id, new.inputs[1]))
    new.server.receive_masked_input(new.clients[1].masked_input(new_relays[1], new.inputs[1]))
    dup = MaskedInput(1, new.server.state.session_id, new.inputs[1])
    before = dumps(new.server.state)
    with pytest.raises(ReplayError):
        new.server.receive_masked_input(dup)
    assert dumps(new.server.state) == before


def test_replayed_directory_from_an_old_round_is_rejected_by_clients() -> None:
    signers = {c: Ed25519Signer.generate() for c in range(3)}
    old, new = Harness(config(3, round_id=1), signers), Harness(config(3, round_id=2), signers)
    old_dir = old.advertise()
    new.advertise()
    with pytest.raises(ReplayError):
        new.clients[0].share_keys(old_dir)


@pytest.mark.parametrize(
    "message",
    ["advertise", "directory", "shares", "relay", "masked", "consistency", "unmask_request", "unmask"],
)
def test_truncated_or_padded_messages_raise_typed_errors(message: str) -> None:
    h = Harness(config(3, dim=5))
    adverts = {c: cl.advertise_keys() for c, cl in h.clients.items()}
    for a in adverts.values():
        h.server.receive_advertisement(a)
    directory = h.server.close_advertise_keys()
    shares = {c: h.clients[c].share_keys(directory) for c in range(3)}
    for s in shares.values():
        h.server.receive_shares(s)
    relays = h.server.close_share_keys()
    masked = {c: h.clients[c].masked_input(relays[c], h.inputs[c]) for c in range(3)}
    for m in masked.values():
        h.server.receive_masked_input(m)
    req = h.server.close_masked_input()
    sigs = {c: h.clients[c].consistency_check(req) for c in range(3)}
    for s in sigs.values():
        h.server.receive_consistency(s)
    ureq = h.server.close_consistency_check()
    resp = h.clients[0].unmask(ureq)
    msg = {
        "advertise": adverts[0],
        "directory": directory,
        "shares": shares[0],
        "relay": relays[0],
        "masked": masked[0],
        "consistency": sigs[0],
        "unmask_request": ureq,
        "unmask": resp,
    }[message]
    data = msg.to_bytes()
    kind = type(msg)
    assert kind.from_bytes(data).to_bytes() == data
    for cut in sorted({0, 1, 2, 5, len(data) // 2, len(data) - 1}):
        with pytest.raises(MalformedMessageError):
            kind.from_bytes(data[:cut])
    with pytest.raises(MalformedMessageError):
        kind.from_bytes(data + b"\x00")
    with pytest.raises(MalformedMessageError):
        kind.from_bytes(bytes([data[0] % 9 + 1]) + data[1:])


def test_semantically_bad_messages_leave_server_state_untouched() -> None:
    h = Harness(config(4, dim=5))
    relays = h.share(h.advertise())
    good = h.clients[0].masked_input(relays[0], h.inputs[0])
    before = dumps(h.server.state)
    for bad, err in [
        (MaskedInput(0, good.session_id, good.vector[:-1]), ProtocolViolationError),
        (MaskedInput(9, good.session_id, good.vector), ProtocolViolationError),
        (MaskedInput(0, good.session_id, good.vector.astype(np.int64)), ProtocolViolationError),
    ]:
        with pytest.raises(err):
            h.server.receive_masked_input(bad)
        assert dumps(h.server.state) == before
    with pytest.raises(WrongStageError):
        h.server.close_share_keys()
    with pytest.raises(WrongStageError):
        h.server.receive_advertisement(AdvertiseKeys(0, bytes(32), bytes(32), bytes(32), b""))


def test_forged_advertisement_is_rejected_by_server_and_clients() -> None:
    h = Harness(config(3))
    ad = h.clients[0].advertise_keys()
    forged = AdvertiseKeys(0, ad.config_digest, ad.enc_public, bytes(reversed(ad.mask_public)), ad.signature)
    with pytest.raises(VerificationError):
        h.server.receive_advertisement(forged)
    for c in (1, 2):
        h.server.receive_advertisement(h.clients[c].advertise_keys())
    h.server.receive_advertisement(ad)
    directory = h.server.close_advertise_keys()
    entries = tuple(forged if e.client_id == 0 else e for e in directory.entries)
    before = dumps(h.clients[1].state)
    with pytest.raises(VerificationError):
        h.clients[1].share_keys(KeyDirectory(directory.config_digest, entries))
    assert dumps(h.clients[1].state) == before
    with pytest.raises(ProtocolViolationError):
        h.clients[1].share_keys(KeyDirectory(directory.config_digest, entries[:1] + entries[2:]))  # omits client 1
    with pytest.raises(ProtocolViolationError):
        h.clients[1].share_keys(KeyDirectory(directory.config_digest, (*entries, entries[0])))


def test_client_rejects_a_lying_server_in_the_last_stages() -> None:
    h = Harness(config(4))
    req = h.mask(h.share(h.advertise()))
    client = h.clients[0]
    with pytest.raises(ProtocolViolationError):
        client.consistency_check(ConsistencyRequest(req.session_id, (1, 2, 3)))  # omits the client itself
    with pytest.raises(ProtocolViolationError):
        client.consistency_check(ConsistencyRequest(req.session_id, (0, 0, 1, 2)))
    ureq = h.consist(req)
    before = dumps(client.state)
    with pytest.raises(ProtocolViolationError):
        client.unmask(UnmaskRequest(ureq.session_id, (0, 1, 2), ureq.signatures))
    bad_sigs = {**ureq.signatures, 0: ureq.signatures[1]}
    with pytest.raises(VerificationError):
        client.unmask(UnmaskRequest(ureq.session_id, ureq.survivors, bad_sigs))
    with pytest.raises(AbortedError):
        client.unmask(UnmaskRequest(ureq.session_id, ureq.survivors, {0: ureq.signatures[0]}))
    assert dumps(client.state) == before
    with pytest.raises(WrongStageError):
        client.advertise_keys()


def test_state_survives_persistence_mid_round() -> None:
    h = Harness(config(5, degree=2, threshold=2, sizes=(3, 4), levels=(2, 2, 1, 2, 1)))
    relays = h.share(h.advertise())
    h.server = SecAggServer(loads(dumps(h.server.state), ServerState), h.verifier)
    for c in h.cfg.clients:
        h.clients[c] = SecAggClient(loads(dumps(h.clients[c].state), ClientState), h.signers[c], h.verifier)
    req = h.mask(relays, skip=[4])
    h.server = SecAggServer(loads(dumps(h.server.state), ServerState), h.verifier)
    h.unmask(h.consist(req))
    result = h.server.finalize()
    expected = h.expected([0, 1, 2, 3])
    for j in (0, 1):
        np.testing.assert_array_equal(result.ring_sums[j], expected[h.cfg.layout.region(j)])
    with pytest.raises(MalformedMessageError):
        loads(b"{not json", ServerState)
    with pytest.raises(MalformedMessageError):
        loads(dumps(h.clients[0].state), ServerState)


def test_small_buckets_are_never_unmasked() -> None:
    # Bucket 2 is trained only by clients 0 and 1: below min_cohort 3, so it stays masked and is merged.
    cfg = config(6, sizes=(4, 3, 2), levels=(3, 3, 2, 2, 1, 1), threshold=2, min_cohort=3)
    h = Harness(cfg)
    req = h.consist(h.mask(h.share(h.advertise())))
    resp = h.clients[0].unmask(req)
    # Seeds of the open buckets 0 and 1 only, and only of those buckets each owner uploaded.
    assert resp.seed_shares and all(len(s) == min(cfg.level_of[o], 2) for o, s in resp.seed_shares.items())
    h.server.receive_unmask(resp)
    h.unmask(req, skip=[0])
    result = h.server.finalize()
    assert [o.status for o in result.outcomes] == [BucketStatus.UNMASKED, BucketStatus.UNMASKED, BucketStatus.MERGED]
    assert result.outcomes[2].merged_into == 1 and set(result.ring_sums) == {0, 1}
    expected = h.expected(range(6))
    np.testing.assert_array_equal(result.ring_sums[1], expected[cfg.layout.region(1)])


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def stage_closed(self, stage: Stage, survivors: int, dropped: Sequence[int]) -> None:
        self.events.append(("closed", (stage, survivors, tuple(dropped))))

    def aborted(self, stage: Stage, reason: str) -> None:
        self.events.append(("aborted", stage))

    def completed(self, survivors: int, outcomes: Sequence[object], reconstruction_s: float) -> None:
        self.events.append(("completed", survivors))


def test_listener_sees_stages_dropouts_and_completion() -> None:
    h = Harness(config(4))
    rec = Recorder()
    h.server = SecAggServer.start(h.cfg, h.verifier, rec)
    req = h.mask(h.share(h.advertise(skip=[3])), skip=[2])
    h.unmask(h.consist(req))
    h.server.finalize()
    assert ("closed", (Stage.ADVERTISE_KEYS, 3, (3,))) in rec.events
    assert ("closed", (Stage.MASKED_INPUT, 2, (2,))) in rec.events
    assert rec.events[-1] == ("completed", 2)
