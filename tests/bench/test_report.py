"""The Markdown report: device columns come from the summary's per-seed means, not from pooled records."""

from __future__ import annotations

import json
from pathlib import Path

from tests.bench.loader import bench_module

report = bench_module("report")

CONFIG = {
    "corpus": "chitchat",
    "clients": 4,
    "per_round": 2,
    "rounds": 1,
    "local_steps": 1,
    "batch_size": 1,
    "seq_len": 8,
    "lr": 1e-3,
    "ranks": "uniform_int",
    "r_min": 2,
    "r_max": 32,
    "seeds": "0,1",
}


def _seed(seed: int, strong_loss: float) -> list[dict]:
    ranks = {"a": 2, "b": 4, "c": 16, "d": 32} if seed == 0 else {"a": 32, "b": 16, "c": 4, "d": 2}
    losses = {"a": strong_loss, "b": strong_loss, "c": strong_loss, "d": strong_loss}
    return [
        {"strategy": "s", "seed": seed, "round": 0, "assigned_ranks": ranks},
        {"strategy": "s", "seed": seed, "round": 1, "device_losses": losses},
    ]


def test_device_columns_are_the_summarys_per_seed_means(tmp_path: Path) -> None:
    summary = {
        "final_loss": 3.0,
        "last5_loss": 3.1,
        "upload_bytes": 4e6,
        "seeds": 2,
        "strong_device_loss": 3.25,
        "weak_device_loss": 4.5,
    }
    path = tmp_path / "quality.json"
    path.write_text(json.dumps({"config": CONFIG, "summary": {"s": summary}, "records": _seed(0, 3.0) + _seed(1, 3.5)}))
    row = next(line for line in report.table(path).splitlines() if line.startswith("| s |"))
    assert "| 3.2500 | 4.5000 |" in row


def test_runs_without_device_scores_print_a_dash(tmp_path: Path) -> None:
    summary = {"final_loss": 3.0, "last5_loss": 3.1, "upload_bytes": 4e6}
    path = tmp_path / "quality.json"
    path.write_text(json.dumps({"config": CONFIG, "summary": {"s": summary}, "records": []}))
    row = next(line for line in report.table(path).splitlines() if line.startswith("| s |"))
    assert "| - | - |" in row
