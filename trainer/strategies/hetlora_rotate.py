"""``hetlora-rotate``: ``hetlora-rebase`` with the SVD basis randomly rotated between this round's ranks.

Measured: ``hetlora-rebase`` with every device at r_max (no heterogeneity at all) learns more slowly than
plain FedAvg of the same factors, so most of its gap to HomLoRA r_max is the SVD basis, not the mixed ranks.
The SVD basis piles B's norm onto the leading components (it minimises Σ_j ‖B_j‖), so AdamW's steps on A,
which move the product in proportion to ‖B_j‖, do little. Truncation only needs the SVD ordering at the ranks
devices actually hold, so here each round's factors are rotated by a random orthogonal matrix inside every
block between consecutive cohort ranks: every device still receives the best approximation of its rank,
while inside each block the norm is spread as in FedAvg. The rotation is a function of the committed global,
the round's ranks and seed, so it costs nothing on the wire and the server re-derives it to aggregate.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from trainer.lora_math import rotate_within_blocks
from trainer.strategies.base import GlobalAdapter
from trainer.strategies.hetlora_rebase import HetLoRARebase


class HetLoRARotate(HetLoRARebase):
    name = "hetlora-rotate"

    def round_base(self, current: GlobalAdapter, ranks: Sequence[int], seed: int) -> GlobalAdapter:
        rng = np.random.default_rng(seed)
        factors = {m: rotate_within_blocks(current.factors[m], ranks, rng) for m in sorted(current.factors)}
        return GlobalAdapter(factors, current.scale)
