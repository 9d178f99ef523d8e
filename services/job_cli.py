"""``--config`` and ``--set`` on the commands that run a job: the job file becomes those commands' flag defaults.

Precedence, lowest first: the command's own defaults, the job file, ``--set`` overrides, flags typed on the
command line. The file is applied by re-parsing with the job's values as the subcommand's defaults, so every
flag keeps its own type conversion and choices, and ``--help`` stays the one reference for each flag.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from services.job import JobError, flag_defaults, load_job


def add_job_arguments(parser: argparse.ArgumentParser, secure_aggregation: bool) -> None:
    """``--config FILE`` and repeated ``--set section.key=value`` (see ops/jobs/*.toml)."""
    g = parser.add_argument_group("job file", "the documented way to describe a job; flags below override it")
    g.add_argument("--config", type=Path, help="a job file (hetlora.toml), e.g. ops/jobs/demo.toml")
    g.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one job key, e.g. --set rounds.count=20 (repeatable)",
    )
    parser.set_defaults(job_parser=parser, job_secure_aggregation=secure_aggregation)


def parse_with_job(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``; when it names a job file or overrides, re-parse with the job as the defaults."""
    args = parser.parse_args(argv)
    job_parser = getattr(args, "job_parser", None)
    if job_parser is None or (args.config is None and not args.overrides):
        return args
    dests = {a.dest for a in job_parser._actions}
    try:
        defaults = flag_defaults(load_job(args.config, args.overrides), dests, args.job_secure_aggregation)
    except JobError as e:
        job_parser.error(str(e))
    job_parser.set_defaults(**defaults)
    return parser.parse_args(argv)
