"""The excess check: windows, excess over HomLoRA r_max paired by seed, and the allowance 90 % of the gap leaves."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.bench.loader import bench_module

excess = bench_module("excess")


def _records(strategy: str, losses: list[float], seed: int = 0) -> list[dict]:
    return [{"strategy": strategy, "seed": seed, "round": t, "heldout_loss": x} for t, x in enumerate(losses)]


def test_windows_cover_every_round_once() -> None:
    assert [list(w) for w in excess.windows(7, 3)] == [[1, 2, 3], [4, 5, 6], [7]]
    assert [list(w) for w in excess.windows(4, 5)] == [[1, 2, 3, 4]]
    with pytest.raises(ValueError):
        excess.windows(0, 5)


def test_paired_excess_uses_only_seeds_both_ran() -> None:
    mine = {0: {1: 3.5, 2: 3.3}, 1: {1: 3.0, 2: 3.0}, 2: {1: 9.0}}
    ref = {0: {1: 3.4, 2: 3.2}, 1: {1: 2.9, 2: 2.7}, 2: {1: 1.0, 2: 1.0}}
    # seed 0: +0.1; seed 1: mean(+0.1, +0.3) = +0.2; seed 2 lacks round 2 and is left out
    assert excess.paired_excess(mine, ref, range(1, 3)) == pytest.approx(0.15)
    assert math.isnan(excess.paired_excess({5: {1: 1.0}}, ref, range(1, 2)))


def test_a_constant_excess_over_a_shrinking_gap_is_not_a_decay(tmp_path: Path) -> None:
    high = [4.0, 3.6, 3.5, 3.45, 3.42]
    low = [4.0, 3.9, 3.7, 3.55, 3.47]  # the gap shrinks: 0.3, 0.2, 0.1, 0.05
    steady = [4.0] + [x + 0.02 for x in high[1:]]
    records = _records("homlora-max", high) + _records("homlora", low) + _records("hetlora-x", steady)
    path = tmp_path / "quality.json"
    path.write_text(json.dumps({"records": records}))
    rows = excess.report(json.loads(path.read_text()), width=2)
    assert [r["rounds"] for r in rows] == [[1, 2], [3, 4]]
    assert [r["gap"] for r in rows] == pytest.approx([0.25, 0.075])
    assert [r["allowed_excess"] for r in rows] == pytest.approx([0.025, 0.0075])
    assert [r["excess"]["hetlora-x"] for r in rows] == pytest.approx([0.02, 0.02])
    out = tmp_path / "excess.json"
    assert excess.main([str(path), "--width", "2", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["tables"][str(path)][1]["excess"]["hetlora-x"] == pytest.approx(0.02)


def test_report_needs_both_baselines() -> None:
    with pytest.raises(ValueError, match="both baselines"):
        excess.report({"records": _records("homlora", [4.0, 3.9])}, width=5)
