"""The command-line flags that name a base model and training data, shared by the commands that load them.

``--model`` takes what ``[model] path`` takes (trainer/model.py): a Hugging Face folder, a ``.gguf`` file or a
built-in name; it is checked when the flags are parsed, so a typo fails before minutes of loading.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from trainer.data.records import Columns
from trainer.model import DTYPES, MODEL_NAMES, model_source
from trainer.targets import BUILTIN_TARGETS, parse_target_spec

COLUMN_ROLES = tuple(Columns.__dataclass_fields__)
DATA_FORMATS = ("auto", "chat", "instruction", "prompt-completion", "text")
MODEL_HELP = f"a Hugging Face model folder, a .gguf file, or a built-in name ({', '.join(MODEL_NAMES)})"


def model_spec(text: str) -> str:
    """argparse type: a model string that ``trainer.model`` can load."""
    try:
        model_source(text)
    except (ValueError, RuntimeError) as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def add_model_arguments(p: argparse.ArgumentParser, default: str, trains: bool, targets: bool = True) -> None:
    """``--model`` (+ ``--target-modules``); with ``trains``, also how this process holds the model for training."""
    p.add_argument("--model", type=model_spec, default=default, help=f"base model: {MODEL_HELP}")
    if targets:
        p.add_argument(
            "--target-modules",
            type=parse_target_spec,
            default=",".join(BUILTIN_TARGETS),
            help="layers that get LoRA: auto (peft's table for the architecture), all-linear, or a comma-separated "
            "list",
        )
    if trains:
        p.add_argument(
            "--dtype", choices=DTYPES, default="auto", help="auto: fp32 on CPU, bf16 on a CUDA GPU that supports it"
        )
        p.add_argument(
            "--gradient-checkpointing",
            action=argparse.BooleanOptionalAction,
            default=False,
            help="recompute activations in the backward pass: less memory, about a third more compute",
        )


def add_data_arguments(p: argparse.ArgumentParser, simulation: bool) -> None:
    """Where the training text is and how to read it (the job file's ``[data]`` section; docs/data.md)."""
    if simulation:
        where = (
            "a folder with one file (or one training.jsonl + validation.jsonl folder) per client, or one file "
            "split by --partition-by; default: the built-in --corpus"
        )
    else:
        where = (
            "this device's own data: a .jsonl/.json/.csv/.parquet file, a datasets save_to_disk folder, or a "
            "folder with training.jsonl (+ validation.jsonl)"
        )
    p.add_argument("--data", type=Path, help=where)
    if simulation:
        p.add_argument("--partition-by", help="with one --data file: the column whose value names the client")
    else:
        p.add_argument("--validation", type=Path, help="held-out file (default: a stable ~15%% split of --data)")
    p.add_argument(
        "--format",
        dest="data_format",
        choices=DATA_FORMATS,
        default="auto",
        help="record format; auto detects it from the columns",
    )
    p.add_argument("--loss-on", choices=("response", "all"), default="response", help="which tokens train")
    p.add_argument(
        "--column",
        dest="columns",
        type=column_rename,
        action="append",
        default=[],
        metavar="ROLE=NAME",
        help=f"your column for a record field, e.g. --column prompt=question (roles: {', '.join(COLUMN_ROLES)})",
    )


def column_rename(text: str) -> tuple[str, str]:
    """argparse type: ``role=column``, e.g. ``completion=answer``."""
    role, sep, name = text.partition("=")
    if not sep or role.strip() not in COLUMN_ROLES or not name.strip():
        raise argparse.ArgumentTypeError(f"expected ROLE=COLUMN with ROLE one of {', '.join(COLUMN_ROLES)}")
    return role.strip(), name.strip()


def add_backend_arguments(p: argparse.ArgumentParser) -> None:
    """Who trains each round's cohort in ``hetlora simulate`` (trainer.cohort); the round engine is the same."""
    g = p.add_argument_group("backend", "who trains the sampled clients; results are the same for the same seed")
    g.add_argument(
        "--backend",
        choices=("in-process", "ray"),
        default="in-process",
        help="in-process: one client after another in this process; ray: a pool of Ray actors (pip install "
        "-e '.[ray]'), each loading the model once and training many clients",
    )
    g.add_argument(
        "--ray-address",
        default=None,
        help="join a running cluster ('auto', or host:port of 'ray start --head'); default: a local Ray for the run",
    )
    g.add_argument("--ray-actors", type=int, default=2, help="actors in the pool (each holds one copy of the model)")
    g.add_argument("--ray-cpus-per-actor", type=float, default=1.0, help="num_cpus each actor declares")
    g.add_argument(
        "--ray-gpus-per-actor", type=float, default=0.0, help="num_gpus each actor declares; fractions share a GPU"
    )
