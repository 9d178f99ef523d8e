"""DP settings as they travel in a task (protobuf) and as the trainer uses them (``ExampleDP``, ``UserDP``).

The device trusts nothing it cannot check: settings arrive from the orchestrator over mTLS and are validated
by the trainer's dataclasses, so a malformed task fails loudly on the device instead of training without
the privacy the deployment promised.
"""

from __future__ import annotations

from services import errors
from services.api.hetlora.v1 import orchestrator_pb2 as pb
from trainer.privacy import ACCOUNTANTS, ExampleDP, UserDP
from trainer.privacy.device_side import ExampleSpend


def example_dp_message(dp: ExampleDP) -> pb.ExampleDpSettings:
    message = pb.ExampleDpSettings(
        max_grad_norm=dp.max_grad_norm, delta=dp.delta, accountant=dp.accountant, rounds_horizon=dp.rounds_horizon
    )
    if dp.noise_multiplier is not None:
        message.noise_multiplier = dp.noise_multiplier
    if dp.target_epsilon is not None:
        message.target_epsilon = dp.target_epsilon
    return message


def example_dp_from(train: pb.TrainSettings) -> ExampleDP | None:
    if not train.HasField("example_dp"):
        return None
    m = train.example_dp
    return ExampleDP(
        max_grad_norm=m.max_grad_norm,
        delta=m.delta,
        noise_multiplier=m.noise_multiplier if m.HasField("noise_multiplier") else None,
        target_epsilon=m.target_epsilon if m.HasField("target_epsilon") else None,
        accountant=m.accountant,
        rounds_horizon=m.rounds_horizon,
    )


def user_dp_message(dp: UserDP) -> pb.UserDpSettings:
    return pb.UserDpSettings(clip_norm=dp.clip_norm, noise_multiplier=dp.noise_multiplier, mode=dp.mode, delta=dp.delta)


def user_dp_from(header: pb.TaskHeader) -> UserDP | None:
    """What the device applies; the budget and accountant stay with the orchestrator that enforces them."""
    if not header.HasField("user_dp"):
        return None
    m = header.user_dp
    return UserDP(clip_norm=m.clip_norm, noise_multiplier=m.noise_multiplier, delta=m.delta, mode=m.mode)


def spend_message(spend: ExampleSpend) -> pb.ExamplePrivacySpent:
    return pb.ExamplePrivacySpent(
        epsilon=spend.epsilon,
        delta=spend.delta,
        accountant=spend.accountant,
        noise_multiplier=spend.noise_multiplier,
        sample_rate=spend.sample_rate,
        steps=spend.steps,
    )


def spend_from(request: pb.ReportTrainingRequest) -> ExampleSpend | None:
    if not request.HasField("example_privacy"):
        return None
    m = request.example_privacy
    if not (m.epsilon >= 0) or not 0 < m.delta < 1 or m.accountant not in ACCOUNTANTS:  # NaN fails ε ≥ 0
        raise errors.invalid("example_privacy", "needs ε ≥ 0 (∞ without noise), 0 < δ < 1 and a known accountant")
    return ExampleSpend(m.noise_multiplier, m.sample_rate, m.steps, m.epsilon, m.delta, m.accountant)
