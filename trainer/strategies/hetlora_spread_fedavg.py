"""``hetlora-spread-fedavg``: ``hetlora-spread`` with each device's change averaged over the whole cohort.

``hetlora-spread`` aggregates like ``hetlora-rebase``: component j moves by the mean change of the devices
that trained it. Once every device spreads its change over all its components, a strong device's share of an
improvement that a weak device packed into its few components lands in components the weak device never
trained, at full weight: the overshoot that ``hetlora-fedavg-delta``'s docstring describes, and the likely
cause of the delta family's decay in the reference configuration. Damping 1 weights each change by n_k / W
instead (first-order FedAvg of the products, what FlexLoRA computes at full size), which gives up part of
the short-horizon speed. It is the fallback if ``hetlora-spread`` decays on the long horizon.
"""

from __future__ import annotations

from trainer.strategies.hetlora_spread import HetLoRASpread


class HetLoRASpreadFedAvg(HetLoRASpread):
    name = "hetlora-spread-fedavg"
    damping = 1.0
