"""`bench/load.py` end to end on a small deployment: real service processes, synthetic device workers."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from tests.bench.loader import bench_module


def test_rounds_come_from_the_orchestrators_log_lines(tmp_path: Path) -> None:
    log = tmp_path / "orchestrator.log"
    log.write_text(
        "2026-12-04 03:00:01,250 hetlora.orchestrator INFO round 1 (id 77): cohort ['a', 'b'], ranks {}\n"
        "2026-12-04 03:00:03,750 hetlora.orchestrator INFO round 1 committed version 1 (2 reported, 1 dropped)\n"
    )
    assert bench_module("load").rounds_from_log(log) == [{"round": 1, "seconds": 2.5, "reported": 2, "dropped": 1}]


@pytest.mark.timeout(300)
def test_a_small_deployment_commits_under_synthetic_devices() -> None:
    load = bench_module("load")
    args = argparse.Namespace(per_round=3, rounds=2, r_max=8, model="tiny", processes=2, timeout=240)
    result = load.run_once(4, args)
    assert result["rounds_committed"] == 2 and result["dropped"] == 0, result
    assert not result["device_errors"]
    assert all(s["cpu_s"] > 0 and s["peak_rss_mib"] > 0 for s in result["services"].values())
    assert "GetTask" in result["rpc_seconds"]["orchestrator"] and "SubmitStage" in result["rpc_seconds"]["aggregator"]
    assert result["bytes_up_per_round_by_rank"] and all(b > 0 for b in result["bytes_up_per_round_by_rank"].values())
