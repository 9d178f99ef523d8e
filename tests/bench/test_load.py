"""`bench/load.py` end to end on a small deployment: real service processes, synthetic device workers."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest

from tests.bench.loader import bench_module

LOG = (
    "2026-12-04 03:00:01,250 hetlora.orchestrator INFO round 1 (id 77): cohort ['a', 'b'], ranks {'a': 2, 'b': 4}\n"
    "2026-12-04 03:00:03,750 hetlora.orchestrator INFO round 1 committed version 1 (2 reported, 1 dropped)\n"
    "2026-12-04 03:00:04,000 hetlora.orchestrator INFO round 2 (id 78): cohort ['a', 'b'], ranks {'a': 2, 'b': 4}\n"
    "2026-12-04 03:00:09,000 hetlora.orchestrator WARNING round 2 failed, version 1 kept: secure aggregation failed\n"
    "2026-12-04 03:00:11,000 hetlora.orchestrator INFO round 2 (id 79): cohort ['a', 'c'], ranks {'a': 2, 'c': 8}\n"
)


def test_rounds_come_from_the_orchestrators_log_lines(tmp_path: Path) -> None:
    log = tmp_path / "orchestrator.log"
    log.write_text(LOG)
    load = bench_module("load")
    assert load.rounds_from_log(log) == [{"round": 1, "seconds": 2.5, "reported": 2, "dropped": 1}]
    attempts = load.attempts_from_log(log)
    assert [(a["round"], a["id"], a["state"]) for a in attempts] == [
        (1, 77, "committed"),
        (2, 78, "failed"),
        (2, 79, "unfinished"),
    ]
    assert attempts[1]["seconds"] == 5.0 and attempts[2]["ranks"] == {"a": 2, "c": 8}


def test_kill_plans_are_reproducible_exact_and_fresh_per_attempt() -> None:
    devices = bench_module("load_devices")
    base = 1_796_359_000_000_000  # the orchestrator's ids: a ms timestamp x 1000, + 1 per attempt
    plan = devices.kill_plan(5, base + 1, range(200), 0.3)
    assert len(plan) == 60 and set(plan.values()) <= set(devices.KILL_POINTS)
    assert plan == devices.kill_plan(5, base + 1, range(200), 0.3)  # every device computes the same plan
    assert plan == devices.kill_plan(5, 7_000_000_001, range(200), 0.3)  # ... in any run with this seed
    assert plan != devices.kill_plan(5, base + 2, range(200), 0.3)  # a re-run attempt draws a new one
    assert devices.kill_plan(5, base + 1, range(200), 0.0) == {}


def test_rss_slope_skips_the_first_round() -> None:
    load = bench_module("load")
    assert load.slope([1, 2, 3], [100.0, 500.0, 502.0]) == pytest.approx(2.0)
    assert load.slope([1, 2], [1.0, 2.0]) is None


@pytest.mark.timeout(300)
def test_a_small_deployment_commits_under_synthetic_devices() -> None:
    load = bench_module("load")
    args = argparse.Namespace(per_round=3, rounds=3, r_max=8, model="tiny", processes=2, timeout=240)
    result = load.run_once(4, args)
    assert result["rounds_committed"] == 3 and result["dropped"] == 0, result
    assert result["rounds_aborted"] == 0 and result["killed_per_round"] == [0, 0, 0]
    assert not result["device_errors"]
    assert all(s["cpu_s"] > 0 and s["peak_rss_mib"] > 0 for s in result["services"].values())
    assert "GetTask" in result["rpc_seconds"]["orchestrator"] and "SubmitStage" in result["rpc_seconds"]["aggregator"]
    assert result["bytes_up_per_round_by_rank"] and all(b > 0 for b in result["bytes_up_per_round_by_rank"].values())
    rss = result["rss_mib_by_round"]
    assert rss["round"] == [1, 2, 3]
    assert all(len(rss[s]) == 3 and min(rss[s]) > 50 for s in ("orchestrator", "aggregator"))
    assert all(math.isfinite(v) for v in result["rss_slope_mib_per_round"].values())
    assert all(0 <= s <= r for s, r in zip(result["server_side_s_per_round"], result["seconds_per_round"], strict=True))
    assert set(result["stage_seconds_max"]) == set(load.STAGES) and all(result["stage_seconds_max"].values())
    assert len(result["workers"]) == 2 and all(w["threads"] > w["devices"] for w in result["workers"])


@pytest.mark.timeout(300)
def test_killed_devices_are_reported_and_the_rounds_still_commit(tmp_path: Path) -> None:
    load, devices = bench_module("load"), bench_module("load_devices")
    # A seed whose plans kill one of the 4 before its masked input in both rounds (each kill costs one stage
    # timeout), so that the server counts every killed device as dropped.
    early = set(load.OUT_OF_SUM)
    # Ranks 2 and 3 only: every rank bucket has 3+ devices, so one death leaves each survivor a live neighbour
    # in every bucket it masks (with one device per bucket, its client would rightly refuse to upload).
    seed = next(
        s for s in range(100) if all(set(devices.kill_plan(s, a, range(6), 0.2).values()) <= early for a in (1, 2))
    )
    out = tmp_path / "load.json"
    argv = ["--devices", "6", "--per-round", "6", "--rounds", "2", "--r-max", "3", "--processes", "1",
            "--fail-rate", "0.2", "--stage-timeout", "3", "--seed", str(seed), "--json", str(out)]  # fmt: skip
    assert load.main(argv) == 0
    report = json.loads(out.read_text())
    (r,) = report["results"]
    assert r["fail_rate"] == 0.2 and r["stage_timeout_s"] == 3.0
    assert r["killed_per_round"] == [1, 1] and sum(r["killed_by_stage"].values()) == 2, r["attempts"]
    check = r["fault_check"]
    assert check["every_round_committed"] and check["rounds_committed"] == 2 and check["rounds_aborted"] == 0
    assert check["killed_fraction_mean"] == pytest.approx(1 / 6) and check["unexplained_drops"] == 0
    assert r["dropped"] == 2  # a device killed before its masked input is a dropout to the server
    assert not r["device_errors"] and r["device_secagg_errors"] == 0
    assert r["reference"]["completed"] and r["reference"]["cohort"] == 6 and r["reference"]["simulate_round_wall_s"] > 0
    assert r["ratio_vs_simulate_round"] is None  # with faults a round mostly waits out deadlines
    assert Path(report["plot"]).stat().st_size > 0
