"""Residual HetLoRA: a device trains its leading components on top of the whole global, the rest frozen.

A rank-r device in the other factor strategies trains a *different model* from the one the server holds: the
components past r are cut off, so its changes to the leading components also try to make up for the missing
tail, and the server averages those biased changes into a global that still has the tail. Here the device
also receives the components past its rank and merges them into its frozen base weights (a one-off ΔW add:
no extra training compute or memory), then trains its leading r components as usual. Every device's gradient
is taken at the global model, as in homogeneous FedAvg, and a weak device also *runs* the full global model.
What a device uploads and what the server learns are unchanged (rank-bucketed sums of the changes to the
trained components); the cost is download: r_max components instead of r.

Built on ``hetlora-delta`` (whose components are in no particular order, so the rest is a large part of the
global). On ``hetlora-rebase`` the same idea measured as a no-op: in the SVD basis the rest past a device's
rank carries the smallest singular values, and the held-out loss matched ``hetlora-rebase`` to 1e-3 per round.
"""

from __future__ import annotations

from trainer.factors import LoraFactors, ModuleFactors
from trainer.strategies.base import GlobalAdapter
from trainer.strategies.hetlora_delta import HetLoRADelta


def frozen_rest(current: GlobalAdapter, rank: int) -> dict[str, LoraFactors]:
    """Components past ``rank``, with the global's scale folded into B so that ΔW_rest = B·A exactly."""
    return {
        m: LoraFactors(current.scale * f.B[:, rank:], f.A[rank:].copy())
        for m, f in current.factors.items()
        if f.rank > rank
    }


class HetLoRADeltaResidual(HetLoRADelta):
    name = "hetlora-delta-residual"

    def frozen(self, current: GlobalAdapter, rank: int) -> ModuleFactors:
        return frozen_rest(current, rank)
