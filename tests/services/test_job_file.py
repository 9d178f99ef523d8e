"""The job file: one TOML read by simulate and serve orchestrator, refused with the key's name when wrong."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from services.cli import build_parser
from services.job import JobError, flag_defaults, load_job, parse_override
from services.job_cli import parse_with_job
from trainer.targets import BUILTIN_TARGETS

ROOT = Path(__file__).resolve().parents[2]
JOBS = sorted((ROOT / "ops/jobs").glob("*.toml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hetlora.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", JOBS, ids=[p.stem for p in JOBS])
def test_shipped_jobs_validate_for_both_commands(path: Path) -> None:
    # A GGUF the Makefile assembles on demand (make demo-gemma) need not exist for the rest to be checked.
    local = ["model.path=tiny"] if "models/" in tomllib.loads(path.read_text())["model"].get("path", "") else []
    job = load_job(path, local)
    assert job.lora.r_min <= job.lora.r_max
    for command in (["simulate", "--out", "x"], ["serve", "orchestrator", "--pki", "p", "--registry", "r",
                                                  "--store", "s", "--aggregator", "a:1"]):  # fmt: skip
        sets = [a for o in local for a in ("--set", o)]
        args = parse_with_job(build_parser(), [*command, "--config", str(path), *sets])
        assert args.rounds == job.rounds.count and args.lr == job.rounds.lr and args.r_max == job.lora.r_max


def test_ops_jobs_cover_the_demo_a_cpu_laptop_and_a_gpu() -> None:
    assert {p.stem for p in JOBS} >= {"demo", "cpu-laptop", "gpu"}


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("[rounds]\nper_rnd = 3\n", "unknown key rounds.per_rnd"),
        ("[modle]\npath = 'tiny'\n", "unknown key modle"),
        ("[rounds]\ncount = 'ten'\n", "rounds.count"),
        ("[rounds]\nlr = -1.0\n", "rounds.lr"),
        ("[lora]\nr_min = 8\nr_max = 4\n", "lora.r_min (8) must not exceed lora.r_max (4)"),
        ("[strategy]\nname = 'hetlora-cov'\n", "strategy.name: unknown strategy"),
        ("[model]\npath = 'gpt-5'\n", "model.path"),
        ("[rounds\ncount = 1\n", "is not valid TOML"),
    ],
)
def test_bad_job_files_are_refused_with_the_key_name(tmp_path: Path, text: str, names: str) -> None:
    with pytest.raises(JobError, match=names.replace("(", r"\(").replace(")", r"\)")):
        load_job(write(tmp_path, text))


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(JobError, match="cannot read job file"):
        load_job(tmp_path / "absent.toml")


def test_secure_aggregation_needs_two_devices_per_round() -> None:
    job = load_job(None, ["rounds.per_round=1"])
    assert flag_defaults(job, {"per_round"}, secure_aggregation=False) == {"per_round": 1}
    with pytest.raises(JobError, match=r"rounds.per_round must be at least 2 under secure aggregation"):
        flag_defaults(job, {"per_round"}, secure_aggregation=True)


def test_overrides_are_toml_values_and_bare_words_are_strings() -> None:
    assert parse_override("rounds.count=20") == ("rounds", "count", 20)
    assert parse_override("strategy.name=hetlora") == ("strategy", "name", "hetlora")
    assert parse_override('strategy.name=["homlora", "hetlora"]') == ("strategy", "name", ["homlora", "hetlora"])
    for bad in ("rounds=3", "count", ".count=3"):
        with pytest.raises(JobError, match=r"section\.key=value"):
            parse_override(bad)


def test_precedence_defaults_then_file_then_set_then_flags(tmp_path: Path) -> None:
    path = write(
        tmp_path, "[rounds]\ncount = 7\nlr = 0.01\nbatch_size = 3\n[strategy]\nname = ['homlora', 'hetlora']\n"
    )
    argv = ["simulate", "--out", "o", "--config", str(path), "--set", "rounds.count=9", "--batch-size", "5"]
    args = parse_with_job(build_parser(), argv)
    assert (args.rounds, args.lr, args.batch_size) == (9, 0.01, 5)  # --set beats the file, a flag beats both
    assert args.strategy == ("homlora", "hetlora")  # the flag's own type conversion still applies
    plain = parse_with_job(build_parser(), ["simulate", "--out", "o"])
    assert plain.rounds == 3  # no job: the command's own defaults, untouched


def test_a_deployment_runs_one_strategy(tmp_path: Path) -> None:
    path = write(tmp_path, "[strategy]\nname = ['homlora', 'hetlora']\n")
    argv = ["serve", "orchestrator", "--pki", "p", "--registry", "r", "--store", "s", "--aggregator", "a:1"]
    with pytest.raises(SystemExit):
        parse_with_job(build_parser(), [*argv, "--config", str(path)])


def test_the_cli_refuses_a_bad_job_before_starting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "[rounds]\nper_round = 1\n")
    argv = ["serve", "orchestrator", "--pki", "p", "--registry", "r", "--store", "s", "--aggregator", "a:1"]
    with pytest.raises(SystemExit) as exit_:
        parse_with_job(build_parser(), [*argv, "--config", str(path)])
    assert exit_.value.code == 2
    assert "rounds.per_round must be at least 2" in capsys.readouterr().err


def test_target_modules_from_the_job_reach_both_commands(tmp_path: Path) -> None:
    path = write(tmp_path, "[model]\ntarget_modules = ['q_proj', 'v_proj']\n")
    args = parse_with_job(build_parser(), ["simulate", "--out", "o", "--config", str(path)])
    assert args.target_modules == ("q_proj", "v_proj")
    args = parse_with_job(build_parser(), ["simulate", "--out", "o", "--set", "model.target_modules=auto"])
    assert args.target_modules == "auto"
    assert parse_with_job(build_parser(), ["simulate", "--out", "o"]).target_modules == BUILTIN_TARGETS


def test_model_path_dtype_and_checkpointing_from_the_job(tmp_path: Path) -> None:
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    path = write(tmp_path, f"[model]\npath = '{folder}'\ndtype = 'bfloat16'\ngradient_checkpointing = true\n")
    args = parse_with_job(build_parser(), ["simulate", "--out", "o", "--config", str(path)])
    assert (args.model, args.dtype, args.gradient_checkpointing) == (str(folder), "bfloat16", True)
    with pytest.raises(JobError, match=r"model.path: model '.*nowhere.gguf' is not .*does not exist"):
        load_job(None, [f"model.path='{tmp_path / 'nowhere.gguf'}'"])
    with pytest.raises(JobError, match=r"model\.dtype"):
        load_job(None, ["model.dtype=float8"])
