"""`hetlora simulate` on the user's own files: one CSV split into clients by a column, with renamed columns."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from services.cli import main


def test_simulate_one_csv_partitioned_by_user(tmp_path: Path) -> None:
    data = tmp_path / "support.csv"
    with data.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user", "question", "answer"])
        for user in ("ana", "bo", "cy"):
            for i in range(40):
                w.writerow([user, f"{user} asks question number {i} about the order", f"Answer {i} for {user}: ok."])
    out = tmp_path / "out"
    argv = ["simulate", "--model", "tiny", "--data", str(data), "--partition-by", "user"]
    argv += ["--column", "prompt=question", "--column", "completion=answer", "--clients", "3", "--per-round", "2"]
    argv += ["--rounds", "1", "--local-steps", "1", "--seq-len", "32", "--eval-blocks", "1"]
    argv += ["--strategy", "hetlora-rebase", "--no-save-versions", "--out", str(out)]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["partition_by"] == "user"
    assert [r["round"] for r in metrics["records"]] == [0, 1]
