"""The Markdown report: device columns average over seeds instead of reading one seed's devices."""

from __future__ import annotations

import pytest

from tests.bench.loader import bench_module

report = bench_module("report")


def _seed(seed: int, strong_loss: float, weak_loss: float) -> list[dict]:
    ranks = {"a": 2, "b": 4, "c": 16, "d": 32}
    losses = {"a": weak_loss, "b": 9.0, "c": strong_loss, "d": strong_loss}
    return [
        {"strategy": "s", "seed": seed, "round": 0, "assigned_ranks": ranks},
        {"strategy": "s", "seed": seed, "round": 1, "device_losses": losses},
    ]


def test_device_losses_are_averaged_over_seeds() -> None:
    recs = _seed(0, 3.0, 4.0) + _seed(1, 3.5, 5.0)
    assert report.seed_mean_device_loss(recs, "strong") == pytest.approx(3.25)
    assert report.seed_mean_device_loss(recs, "weak") == pytest.approx(4.5)


def test_runs_without_device_scores_report_none() -> None:
    recs = [{"strategy": "s", "seed": 0, "round": 1}]
    assert report.seed_mean_device_loss(recs, "strong") is None
