"""``hetlora-spread`` (experimental): ``hetlora-rebase``, but each device trains in a random rotation.

Measured on the CPU budget: ``hetlora-rebase`` with every device at r_max closes only 82 % of the gap that
plain FedAvg of the same factors closes, so most of its shortfall is the SVD basis itself. That basis piles
B's norm onto the leading components, and AdamW, which steps every coordinate by about lr, then moves the
product through A_j in proportion to ‖B_j‖: a lot along the top singular direction, almost nothing along the
rest. Here the device itself rotates all r_k received components by a Haar Q (B·Q, Qᵀ·A), trains there
and rotates back before uploading. The product and the truncation it received
are untouched, the upload is in the shared SVD basis, and the server aggregates exactly as
``hetlora-rebase``: the rotation never leaves the device and needs nothing from secure aggregation.

Experimental: it leads ``hetlora-rebase`` on the CPU budget but has not run in the reference configuration,
where the CPU budget has misranked strategies before (docs/research/heterogeneous-ranks.md).
"""

from __future__ import annotations

import numpy as np

from trainer.factors import ModuleFactors
from trainer.lora_math import haar_orthogonal
from trainer.strategies.hetlora_rebase import HetLoRARebase


class HetLoRASpread(HetLoRARebase):
    name = "hetlora-spread"

    def training_basis(self, received: ModuleFactors, seed: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([seed, 0x5B5EAD])
        return {m: haar_orthogonal(received[m].rank, rng) for m in sorted(received)}
