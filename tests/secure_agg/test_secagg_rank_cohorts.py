"""Per-bucket cohorts: each device uploads only the buckets its rank covers, masked by that bucket's cohort."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_agg import (
    AbortedError,
    BucketLayout,
    BucketStatus,
    ProtocolViolationError,
    RoundConfig,
    SecAggRequirements,
    Stage,
    simulate_round,
)
from secure_agg import keys as kx
from secure_agg.cohorts import RoundGraphs
from secure_agg.messages import MaskedInput
from secure_agg.persist import dumps
from tests.secure_agg.test_secagg_protocol import STAGES, Harness

MASKED_HEADER = len(MaskedInput(0, bytes(32), np.zeros(0, np.uint32)).to_bytes())


def _inputs(cfg: RoundConfig, rng: np.random.Generator) -> dict[int, np.ndarray]:
    return {
        c: rng.integers(0, 2**32, cfg.layout.prefix(lv), dtype=np.uint64).astype(np.uint32)
        for c, lv in cfg.level_of.items()
    }


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_every_bucket_sums_exactly_its_surviving_cohort(data: st.DataObject) -> None:
    """Random rank mixes × random dropouts at every stage: each unmasked bucket is the plain sum over the
    survivors whose level covers it, a bucket below min_cohort is never unmasked, and uploads are prefixes."""
    n = data.draw(st.integers(3, 14), label="n")
    n_buckets = data.draw(st.integers(1, 4), label="buckets")
    sizes = tuple(data.draw(st.lists(st.integers(0, 9), min_size=n_buckets, max_size=n_buckets), label="sizes"))
    levels = data.draw(st.lists(st.integers(1, n_buckets), min_size=n, max_size=n), label="levels")
    rates = data.draw(st.sampled_from([(0.0, 0.1), (0.05, 0.1), (0.05, 0.3)]), label="rates")
    min_cohort = data.draw(st.integers(2, 4), label="min_cohort")
    cfg = RoundConfig.create(
        3, range(n), BucketLayout(sizes), dict(enumerate(levels)), SecAggRequirements(*rates), min_cohort
    )
    drops = data.draw(st.dictionaries(st.integers(0, n - 1), st.sampled_from(STAGES), max_size=n), label="drop_at")
    inputs = _inputs(cfg, np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))))
    report = simulate_round(cfg, inputs, drop_at=drops)
    if report.result is None:
        assert report.abort_reason
        return
    survivors = report.result.survivors
    masked = STAGES.index(Stage.MASKED_INPUT)
    assert set(survivors) <= {c for c in range(n) if c not in drops or STAGES.index(drops[c]) > masked}
    for outcome in report.result.outcomes:
        j = outcome.index
        cohort = [c for c in survivors if levels[c] > j]
        assert outcome.cohort == len(cohort)
        if len(cohort) < min_cohort:
            assert outcome.status != BucketStatus.UNMASKED and j not in report.result.ring_sums
            continue
        assert outcome.status == BucketStatus.UNMASKED
        expected = np.zeros(cfg.layout.total, dtype=np.uint32)
        for c in cohort:
            expected[: inputs[c].shape[0]] += inputs[c]
        np.testing.assert_array_equal(report.result.ring_sums[j], expected[cfg.layout.region(j)])


def test_uploads_are_proportional_to_rank() -> None:
    # Ranks 2, 4, 8, 16, 32 with 10,000 floats per rank component: bytes up track rank / r_max within 10 %.
    ranks = (2, 4, 8, 16, 32)
    edges = (0, *ranks)
    layout = BucketLayout.for_rank_edges(edges, 10_000)
    n = 20
    levels = {c: 1 + c % len(ranks) for c in range(n)}
    cfg = RoundConfig.create(1, range(n), layout, levels, SecAggRequirements(0.05, 0.1))
    report = simulate_round(cfg, _inputs(cfg, np.random.default_rng(0)))
    assert report.completed
    top = np.mean([report.upload_bytes[c] for c in range(n) if levels[c] == len(ranks)])
    for level, rank in enumerate(ranks, start=1):
        mine = [report.upload_bytes[c] for c in range(n) if levels[c] == level]
        assert abs(np.mean(mine) / top - rank / ranks[-1]) <= 0.1 * rank / ranks[-1]


def test_key_agreement_happens_once_per_pair_not_once_per_bucket(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = RoundConfig(1, tuple(range(6)), (3,) * 6, BucketLayout((4, 4, 4)), 5, 2, 2)
    h = Harness(cfg)
    relays = h.share(h.advertise())
    client = h.clients[0]
    assert client.state.mask_key is not None
    mask_private = client.state.mask_key.private
    calls: list[bytes] = []
    agree = kx.agree

    def counting(private: bytes, peer_public: bytes) -> bytes:
        if private == mask_private:
            calls.append(peer_public)
        return agree(private, peer_public)

    monkeypatch.setattr(kx, "agree", counting)
    masked = client.masked_input(relays[0], h.inputs[0])
    assert len(calls) == len(set(calls)) == 5  # five peers, three buckets each: five agreements
    assert masked.vector.shape == (cfg.layout.total,)


def test_bucket_graphs_cover_exactly_the_bucket_cohorts() -> None:
    levels = {c: 1 + (c % 3) for c in range(30)}
    cfg = RoundConfig.create(1, range(30), BucketLayout((5, 5, 5)), levels, SecAggRequirements(0.05, 0.1))
    graphs = RoundGraphs.build(range(30), cfg.level_of, cfg.degree, cfg.mask_degrees(), b"s" * 32)
    for j, graph in enumerate(graphs.buckets):
        assert set(graph.ring) == {c for c, lv in levels.items() if lv > j}
        for c in graph.ring:
            assert set(graph.neighbours(c)) <= set(graph.ring)
    assert graphs.buckets[0].ring == graphs.shares.ring  # bucket 0 is everyone
    assert cfg.mask_degrees()[2] <= cfg.mask_degrees()[0]  # a smaller cohort gets its own, smaller graph


def test_a_client_whose_bucket_peers_all_vanished_does_not_upload_that_bucket_self_masked_only() -> None:
    # Bucket 1 is trained by clients 0 and 1 only; client 1 leaves before sharing keys.
    cfg = RoundConfig(1, tuple(range(5)), (2, 2, 1, 1, 1), BucketLayout((3, 3)), 4, 2, 2, bucket_degrees=(4, 1))
    h = Harness(cfg)
    relays = h.share(h.advertise(), skip=[1])
    before = dumps(h.clients[0].state)
    with pytest.raises(AbortedError, match="bucket 1"):
        h.clients[0].masked_input(relays[0], h.inputs[0])
    assert dumps(h.clients[0].state) == before
    req = h.mask(relays, skip=[0])
    h.unmask(h.consist(req))
    result = h.server.finalize()
    np.testing.assert_array_equal(result.ring_sums[0], h.expected([2, 3, 4])[cfg.layout.region(0)])
    assert 1 not in result.ring_sums


def test_server_refuses_an_upload_longer_than_the_clients_level() -> None:
    cfg = RoundConfig(1, tuple(range(4)), (2, 2, 1, 1), BucketLayout((3, 3)), 3, 2, 2)
    h = Harness(cfg)
    relays = h.share(h.advertise())
    masked = h.clients[0].masked_input(relays[0], h.inputs[0])
    assert len(masked.to_bytes()) == MASKED_HEADER + 4 * cfg.layout.total
    h.server.receive_masked_input(masked)
    low = h.clients[2].masked_input(relays[2], h.inputs[2])
    assert len(low.to_bytes()) == MASKED_HEADER + 4 * cfg.layout.prefix(1)
    padded = MaskedInput(2, low.session_id, np.zeros(cfg.layout.total, np.uint32))
    with pytest.raises(ProtocolViolationError, match=r"uint32\[4\]"):
        h.server.receive_masked_input(padded)
    h.server.receive_masked_input(low)
