"""Per-bucket cohorts: who holds whose shares, and who masks with whom in each rank bucket.

Bucket j's cohort is the clients whose level covers it (level > j), so a device uploads only the buckets it
trains and a rank-2 phone sends a fraction of a rank-32 workstation's bytes. Each bucket is its own SecAgg+
cohort for masking: a Harary graph over the bucket's members that advertised keys, with a degree chosen for
that cohort's size, so the bucket's sum is hidden by a graph over exactly the clients that contribute to it.

Everything else stays per round, not per bucket: one key agreement per pair of clients (the pairwise seed of
bucket j is expanded from it with the bucket as HKDF label), and one share graph — the round's Harary graph
over every advertiser, with the round's threshold — that holds each client's masking key and self-mask seeds.
Every bucket graph is the round's ring filtered to the bucket's members, so every party computes the same
graphs from the session id alone.

A client sends a sealed bundle to each *contact* (share neighbour or mask neighbour in any bucket it
trains); the bundle proves to the contact that the sender finished key sharing, which is what lets the
contact mask with it. Only share neighbours' bundles carry shares.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from secure_agg.graph import HararyGraph


@dataclass(frozen=True)
class RoundGraphs:
    """The share graph over all advertisers and one masking graph per bucket over its members."""

    shares: HararyGraph
    buckets: tuple[HararyGraph, ...]

    @staticmethod
    def build(
        members: Iterable[int],
        levels: Mapping[int, int],
        share_degree: int,
        bucket_degrees: tuple[int, ...],
        session_id: bytes,
    ) -> RoundGraphs:
        """Graphs over ``members`` (the advertisers); bucket j keeps the members with ``levels[c] > j``."""
        shares = HararyGraph.build(members, share_degree, session_id)
        buckets = tuple(
            HararyGraph(tuple(c for c in shares.ring if levels[c] > j), degree)
            for j, degree in enumerate(bucket_degrees)
        )
        return RoundGraphs(shares, buckets)

    def share_neighbours(self, cid: int) -> tuple[int, ...]:
        """Who holds ``cid``'s shares (and whose shares ``cid`` holds)."""
        return self.shares.neighbours(cid)

    def mask_neighbours(self, cid: int, level: int) -> tuple[tuple[int, ...], ...]:
        """For each bucket below ``level``: the peers ``cid`` masks that bucket's region with."""
        return tuple(self.buckets[j].neighbours(cid) for j in range(level))

    def contacts(self, cid: int, level: int) -> tuple[int, ...]:
        """Everyone ``cid`` sends a bundle to: its share neighbours and its mask neighbours, sorted."""
        out = set(self.share_neighbours(cid))
        for peers in self.mask_neighbours(cid, level):
            out.update(peers)
        return tuple(sorted(out))

    def bucket_adjacency(self) -> tuple[dict[int, tuple[int, ...]], ...]:
        """Every bucket's adjacency (the server needs all of them to remove a dropped client's masks)."""
        return tuple(g.adjacency() for g in self.buckets)


def contact_map(
    share_adjacency: Mapping[int, tuple[int, ...]], bucket_adjacency: tuple[Mapping[int, tuple[int, ...]], ...]
) -> dict[int, tuple[int, ...]]:
    """Client → sorted contacts, from the share adjacency and every bucket's adjacency (symmetric)."""
    out = {cid: set(peers) for cid, peers in share_adjacency.items()}
    for adjacency in bucket_adjacency:
        for cid, peers in adjacency.items():
            out[cid].update(peers)
    return {cid: tuple(sorted(peers)) for cid, peers in out.items()}
