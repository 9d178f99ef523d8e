"""What a device may report about its training, checked against what the server assigned it.

Under secure aggregation the orchestrator never sees an update, only these plain numbers, and they move real
state: the reported rank becomes the device's rank next round (HetLoRA's self-pruning), the record and
``GetStatus`` show the loss, and user-level DP counts rank components. So nothing a device reports is stored
unchecked: each field must be what an honest device could have sent for the task it was given.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from services import errors
from trainer.device import Report
from trainer.factors import ModuleShape

MAX_EXAMPLES = 10_000_000
MAX_LOSS = 1e4  # a language model's cross-entropy per token starts near ln(vocabulary) ≈ 11


@dataclass(frozen=True)
class ReportLimits:
    """Bounds for one deployment; the defaults suit any causal LM."""

    r_min: int = 1
    max_examples: int = MAX_EXAMPLES
    max_loss: float = MAX_LOSS


def expected_upload_floats(shapes: Mapping[str, ModuleShape], rank: int, dense: bool) -> int:
    """Floats an honest device uploads: a weight per module plus its factors at ``rank`` (or full products)."""
    if dense:
        return sum(1 + s.d_out * s.d_in for s in shapes.values())
    return sum(1 + rank * (s.d_out + s.d_in) for s in shapes.values())


def check_report(
    report: Report, assigned_rank: int, shapes: Mapping[str, ModuleShape], dense: bool, limits: ReportLimits
) -> None:
    """Raise INVALID_ARGUMENT naming the first field an honest device could not have sent."""
    if report.rank_before != assigned_rank:
        raise errors.invalid("rank_before", f"must be the assigned rank {assigned_rank}, got {report.rank_before}")
    low = min(limits.r_min, assigned_rank)  # self-pruning stops at r_min; a device assigned less keeps its rank
    if not low <= report.rank <= assigned_rank:
        raise errors.invalid("rank_after", f"must be in [{low}, assigned rank {assigned_rank}], got {report.rank}")
    if not (math.isfinite(report.train_loss) and 0 <= report.train_loss <= limits.max_loss):
        raise errors.invalid(
            "train_loss", f"must be a finite loss in [0, {limits.max_loss:g}], got {report.train_loss}"
        )
    if not 1 <= report.num_examples <= limits.max_examples:
        raise errors.invalid("num_examples", f"must be in [1, {limits.max_examples}], got {report.num_examples}")
    expected = expected_upload_floats(shapes, report.rank, dense)
    if report.declared_upload_floats != expected:
        raise errors.invalid(
            "upload_floats",
            f"a rank-{report.rank} upload of this model is {expected} floats, got {report.declared_upload_floats}",
        )
