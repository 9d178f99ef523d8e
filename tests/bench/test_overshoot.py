"""The overshoot check: solo share, excess steps against the r_max baseline, and the correlation's interval."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.bench.loader import bench_module

overshoot = bench_module("overshoot")


def _records(strategy: str, losses: list[float], ranks: list[list[int]], seed: int = 0) -> list[dict]:
    out = [{"strategy": strategy, "seed": seed, "round": 0, "heldout_loss": losses[0], "ranks_trained": {}}]
    for t, (loss, rk) in enumerate(zip(losses[1:], ranks, strict=True), start=1):
        trained = {f"c{i}": r for i, r in enumerate(rk)}
        out.append({"strategy": strategy, "seed": seed, "round": t, "heldout_loss": loss, "ranks_trained": trained})
    return out


def test_solo_share_counts_the_components_only_the_top_device_trained() -> None:
    assert overshoot.solo_share([2, 30, 8], 32) == pytest.approx(22 / 32)
    assert overshoot.solo_share([16, 16, 4], 32) == 0.0
    assert overshoot.solo_share([12], 32) == pytest.approx(12 / 32)
    with pytest.raises(ValueError):
        overshoot.solo_share([], 32)


def test_excess_steps_subtract_the_baselines_step_and_skip_round_one() -> None:
    ranks = [[2, 4], [2, 32], [4, 8]]
    records = _records("hetlora-x", [4.0, 3.5, 3.4, 3.2], ranks) + _records(
        "homlora-max", [4.0, 3.6, 3.45, 3.35], [[32, 32]] * 3
    )
    solo, excess = overshoot.excess_steps(records, "hetlora-x", 32)
    np.testing.assert_allclose(solo, [30 / 32, 4 / 32])
    np.testing.assert_allclose(excess, [(3.4 - 3.5) - (3.45 - 3.6), (3.2 - 3.4) - (3.35 - 3.45)])


def test_excess_steps_need_the_baseline_on_the_same_seed() -> None:
    records = _records("hetlora-x", [4.0, 3.5, 3.4], [[2, 4], [2, 8]], seed=1) + _records(
        "homlora-max", [4.0, 3.6, 3.45], [[32, 32]] * 2, seed=0
    )
    solo, excess = overshoot.excess_steps(records, "hetlora-x", 32)
    assert solo.size == excess.size == 0


def test_correlation_interval_contains_r_and_is_nan_without_spread() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(size=200)
    c = overshoot.correlation(x, 2 * x + 0.1 * rng.standard_normal(200))
    assert c["n"] == 200 and c["low"] < c["r"] < c["high"] and c["low"] > 0.9
    assert math.isnan(overshoot.correlation(np.ones(10), np.arange(10.0))["r"])
    assert math.isnan(overshoot.correlation(x[:3], x[:3])["r"])


def test_report_finds_an_overshooting_strategy_and_not_a_steady_one(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    rounds = 40
    ranks = [sorted(rng.integers(2, 33, size=5).tolist()) for _ in range(rounds)]
    base = np.cumsum(np.r_[4.0, -0.01 * np.ones(rounds)])
    solo = np.array([overshoot.solo_share(rk, 32) for rk in ranks])
    noise = 0.0005 * rng.standard_normal(rounds)
    overshooting = base + np.r_[0.0, np.cumsum(0.02 * solo + noise)]
    steady = base + np.r_[0.0, np.cumsum(noise)]
    records = (
        _records("homlora-max", base.tolist(), [[32] * 5] * rounds)
        + _records("hetlora-over", overshooting.tolist(), ranks)
        + _records("hetlora-steady", steady.tolist(), ranks)
    )
    path = tmp_path / "quality.json"
    path.write_text(json.dumps({"config": {"r_max": 32}, "records": records}))
    table = overshoot.report(json.loads(path.read_text()))
    assert set(table) == {"hetlora-over", "hetlora-steady"}
    assert table["hetlora-over"]["low"] > 0.5
    assert table["hetlora-over"]["excess_high_solo"] > table["hetlora-over"]["excess_low_solo"]
    assert table["hetlora-steady"]["low"] < 0 < table["hetlora-steady"]["high"]
    out = tmp_path / "overshoot.json"
    assert overshoot.main([str(path), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["tables"][str(path)]["hetlora-over"]["n"] == rounds - 1
