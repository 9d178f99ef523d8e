"""Differential privacy: example-level DP-SGD on devices (Opacus) and user-level DP across the federation.

Two different claims, never conflated: *example-level* ε bounds what one device's update reveals about one of
its training blocks (Opacus DP-SGD, an accountant per device); *user-level* ε bounds what the global model
reveals about one device's whole participation (DP-FedAvg: clipped updates plus Gaussian noise, centrally or
split across devices under secure aggregation, an accountant at the orchestrator).
"""

from trainer.privacy.accounting import ACCOUNTANTS, PrivacyLedger, noise_for_target
from trainer.privacy.settings import ExampleDP, UserDP

__all__ = ["ACCOUNTANTS", "ExampleDP", "PrivacyLedger", "UserDP", "noise_for_target"]
