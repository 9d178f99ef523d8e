"""Measure what local LoRA training really costs on this device, on the job's own model and batch shape.

``probe_device`` trains a few real AdamW steps at each requested rank (LoRA attached with
``trainer.peft_bridge.lora_attached``, random token blocks of batch × seq_len, forward, backward, step) and
reports each rank's peak memory and step time, plus the memory free before it started
(``psutil.virtual_memory().available``, or ``torch.cuda.mem_get_info`` on a GPU). The enrollment service turns
those points into a rank (``trainer.ranks.assign_measured_rank``).

Each rank runs in a fresh process (``python -m trainer.probe_worker``, one after another so they never share
cores): peak memory is a high-water mark, and memory one measurement freed stays in the C allocator's heap,
where a second rank in the same process would reuse it and look cheaper than it is. How the worker measures,
and why that way, is in ``trainer/probe_worker.py``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from trainer.ranks import RankPoint
from trainer.targets import TargetSpec

RESULT_PREFIX = "PROBE_RESULT "
MIB = 1024 * 1024


class ProbeError(RuntimeError):
    """A probe worker failed: the message says at which rank and how (out of memory is the usual cause)."""


@dataclass(frozen=True)
class ProbeSettings:
    """What every worker trains: the job's model, LoRA targets and batch shape, held the way the device will."""

    model: str
    targets: TargetSpec
    batch_size: int = 4
    seq_len: int = 64
    device: str = "cpu"
    dtype: str = "auto"
    gradient_checkpointing: bool = False
    steps: int = 3  # timed steps, after one warm-up step
    seed: int = 0


@dataclass(frozen=True)
class ProbeResult:
    device: str
    free_memory_mb: float  # host memory available (CPU) or device memory free (GPU) before the probe
    gflops: float  # sustained fp32 matmul throughput, recorded with the profile
    points: tuple[RankPoint, ...]
    memory_source: str  # vmhwm (reset after loading), ru_maxrss (includes loading) or cuda_reserved


def parse_ranks(text: str) -> tuple[int, ...]:
    """The command-line form of the ranks to probe: ``2,32`` (usually the deployment's r_min and r_max)."""
    try:
        ranks = tuple(int(r) for r in text.split(",") if r.strip())
    except ValueError:
        raise ValueError(f"ranks: expected comma-separated integers like 2,32, got {text!r}") from None
    if len(ranks) < 2 or len(set(ranks)) != len(ranks) or min(ranks) < 1:
        raise ValueError(f"ranks: give two or more distinct positive ranks (the service interpolates), got {text!r}")
    return ranks


def available_memory_mb() -> float:
    import psutil  # type: ignore[import-untyped]  # a dependency of peft; ships no stubs

    return float(psutil.virtual_memory().available) / MIB


def probe_device(
    model: str,
    targets: TargetSpec,
    ranks: Sequence[int],
    batch_size: int = 4,
    seq_len: int = 64,
    device: str = "cpu",
    dtype: str = "auto",
    gradient_checkpointing: bool = False,
    steps: int = 3,
    timeout_s: float = 1800.0,
    on_point: Callable[[RankPoint], None] | None = None,
) -> ProbeResult:
    """Measure each of ``ranks`` (one worker process each, one after another, so they never share cores)."""
    if not ranks or any(r < 1 for r in ranks) or len(set(ranks)) != len(ranks):
        raise ValueError(f"ranks to probe must be distinct positive integers, got {list(ranks)}")
    if batch_size < 1 or seq_len < 1 or steps < 1:
        raise ValueError(f"need positive batch size, sequence length and steps, got {batch_size}, {seq_len}, {steps}")
    settings = ProbeSettings(model, targets, batch_size, seq_len, device, dtype, gradient_checkpointing, steps)
    free = available_memory_mb()
    measured = []
    for rank in sorted(ranks):
        out = _run_worker(settings, rank, timeout_s)
        point = RankPoint(rank, out["peak_memory_mb"], out["step_seconds"])
        measured.append((point, out))
        if on_point is not None:
            on_point(point)
    first = measured[0][1]
    if first["gpu_free_mb"] is not None:
        free = first["gpu_free_mb"]
    gflops = statistics.median(out["gflops"] for _, out in measured)
    return ProbeResult(device, free, gflops, tuple(p for p, _ in measured), first["memory_source"])


def _run_worker(settings: ProbeSettings, rank: int, timeout_s: float) -> dict[str, Any]:
    spec = json.dumps({"settings": asdict(settings), "rank": rank})
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "trainer.probe_worker", spec],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=env,
        )
    except subprocess.TimeoutExpired:
        raise ProbeError(f"rank {rank}: training did not finish in {timeout_s:.0f} s") from None
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        oom = done.returncode == -9 or "out of memory" in done.stderr.lower()
        hint = "; it ran out of memory: probe lower ranks (--ranks) or turn on --gradient-checkpointing" if oom else ""
        raise ProbeError(f"rank {rank}: the training worker exited with status {done.returncode}{hint}: {tail}")
    return dict(json.loads(lines[-1][len(RESULT_PREFIX) :]))
