"""Command-line options for DP, shared by ``hetlora simulate``, ``hetlora serve orchestrator`` and the benchmarks."""

from __future__ import annotations

import argparse

from trainer.privacy.settings import ExampleDP, UserDP


def add_dp_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group(
        "differential privacy",
        "example-level: DP-SGD on each device (Opacus); user-level: DP-FedAvg over devices' clipped updates",
    )
    g.add_argument("--dp-example-noise", type=float, help="DP-SGD noise multiplier σ on every device")
    g.add_argument("--dp-example-epsilon", type=float, help="or: each device's target ε over --dp-horizon rounds")
    g.add_argument("--dp-max-grad-norm", type=float, default=1.0, help="DP-SGD per-example clip C")
    g.add_argument("--dp-horizon", type=int, default=30, help="rounds a device's target ε is spread over")
    g.add_argument("--dp-user-noise", type=float, help="DP-FedAvg noise multiplier σ (turns user-level DP on)")
    g.add_argument("--dp-user-clip", type=float, default=0.1, help="DP-FedAvg bound S on each device's update norm")
    g.add_argument("--dp-user-budget", type=float, default=float("inf"), help="refuse rounds past this user-level ε")
    g.add_argument("--dp-user-mode", choices=("distributed", "central"), default="distributed",
                   help="noise added by the devices before masking, or by the orchestrator")  # fmt: skip
    g.add_argument("--dp-user-dropout-tolerance", type=float, default=0.2,
                   help="distributed mode: shares still add up to σS if this fraction drops out")  # fmt: skip
    g.add_argument("--dp-delta", type=float, default=1e-6, help="δ for both accountants")
    g.add_argument("--dp-accountant", choices=("prv", "rdp"), default="prv")


def dp_settings(args: argparse.Namespace) -> tuple[ExampleDP | None, UserDP | None]:
    """The settings the options describe (None where that kind of DP is off); invalid ones raise ValueError."""
    example = None
    if args.dp_example_noise is not None or args.dp_example_epsilon is not None:
        example = ExampleDP(
            max_grad_norm=args.dp_max_grad_norm,
            delta=args.dp_delta,
            noise_multiplier=args.dp_example_noise,
            target_epsilon=args.dp_example_epsilon,
            accountant=args.dp_accountant,
            rounds_horizon=args.dp_horizon,
        )
    user = None
    if args.dp_user_noise is not None:
        user = UserDP(
            clip_norm=args.dp_user_clip,
            noise_multiplier=args.dp_user_noise,
            delta=args.dp_delta,
            epsilon_budget=args.dp_user_budget,
            mode=args.dp_user_mode,
            accountant=args.dp_accountant,
            dropout_tolerance=args.dp_user_dropout_tolerance,
        )
    return example, user
