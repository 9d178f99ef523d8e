"""``hetlora-damped``: ``hetlora-delta-residual`` whose rarely trained components take smaller steps.

``hetlora-delta`` moves component j by the mean change of the devices that trained it. A component that only
one device of the cohort trained (the top ones, with mixed ranks) then takes that device's whole step, noise
included: on the CPU benchmark ``hetlora-delta-residual``'s global loss jumped up for a round twice per seed-1
corpus. Here the mean is scaled by √(W_j / W), with W_j the weight of the devices that trained j and W the whole
cohort's. That is the geometric middle between the per-cohort mean (scale 1) and the change FedAvg of products
would make if the other devices contributed zero (scale W_j / W, the paper rule's dilution). Components every
device trains are unchanged, so with equal ranks this is still FedAvg. Only rank-bucket sums are needed.
"""

from __future__ import annotations

from trainer.strategies.hetlora_residual import HetLoRADeltaResidual


class HetLoRADamped(HetLoRADeltaResidual):
    name = "hetlora-damped"
    damping = 0.5
