"""The device's side of enrollment: the profile it sends, measured by the probe or typed by an operator.

A device never picks its own rank; it reports what it can spend and the service decides
(services/enrollment/profile.py). ``probed_profile`` runs the probe on the job's model (trainer/probe.py) and
packs the points into the request, so the rank follows what training really costs on this device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from services.api.hetlora.v1 import enrollment_pb2 as pb
from trainer.probe import ProbeResult, probe_device
from trainer.ranks import RankPoint
from trainer.targets import TargetSpec


def typed_profile(memory_mb: float | None, gflops: float | None, probe: bool) -> pb.DeviceProfile | None:
    """The hand-typed profile, or None when the probe is to measure it; exactly one of the two ways."""
    typed = (memory_mb, gflops)
    if probe and any(v is not None for v in typed):
        raise ValueError("give --probe or --memory-mb with --gflops, not both (the probe measures what they state)")
    if probe:
        return None
    if memory_mb is None or gflops is None:
        raise ValueError("say what the device can spend: --probe (measured on --model), or --memory-mb and --gflops")
    return pb.DeviceProfile(memory_mb=memory_mb, gflops=gflops)


def measured_profile(result: ProbeResult) -> pb.DeviceProfile:
    points = [
        pb.RankCost(rank=p.rank, peak_memory_mb=p.peak_memory_mb, step_seconds=p.step_seconds) for p in result.points
    ]
    return pb.DeviceProfile(memory_mb=result.free_memory_mb, gflops=result.gflops, measured=points)


def probed_profile(
    model: str,
    targets: TargetSpec,
    ranks: Sequence[int],
    batch_size: int,
    seq_len: int,
    device: str,
    dtype: str,
    gradient_checkpointing: bool,
    say: Callable[[str], None] = print,
) -> tuple[pb.DeviceProfile, dict[str, Any]]:
    """Probe this device, narrating each rank; the request's profile and a record for enrollment.json."""
    say(f"probing LoRA training of {model} on {device} at ranks {list(ranks)} ({batch_size} × {seq_len} tokens)")

    def each(p: RankPoint) -> None:
        say(f"  rank {p.rank}: peak {p.peak_memory_mb:.0f} MiB, {p.step_seconds:.3f} s/step")

    result = probe_device(
        model, targets, ranks, batch_size, seq_len, device, dtype, gradient_checkpointing, on_point=each
    )
    say(f"  free memory {result.free_memory_mb:.0f} MiB, matmul {result.gflops:.0f} GFLOP/s ({result.memory_source})")
    record = {
        "model": model,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "device": device,
        "free_memory_mb": result.free_memory_mb,
        "gflops": result.gflops,
        "memory_source": result.memory_source,
        "points": [asdict(p) for p in result.points],
    }
    return measured_profile(result), record
