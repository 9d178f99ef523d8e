"""Starting factors on the wire: one ``.npz`` (B and A per module), streamed in chunks under gRPC's limit."""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping

import numpy as np

from trainer.device import Task
from trainer.factors import LoraFactors, ModuleFactors


def factors_to_bytes(factors: ModuleFactors) -> bytes:
    arrays = {}
    for m, f in factors.items():
        arrays[f"{m}::B"] = np.asarray(f.B, np.float32)
        arrays[f"{m}::A"] = np.asarray(f.A, np.float32)
    buffer = io.BytesIO()
    np.savez(
        buffer, allow_pickle=False, **arrays
    )  # uncompressed: random-looking floats do not compress, and it is faster
    return buffer.getvalue()


def factors_from_bytes(data: bytes) -> dict[str, LoraFactors]:
    """Inverse of :func:`factors_to_bytes`; refuses pickles and incomplete modules."""
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        names = {k.rsplit("::", 1)[0] for k in z.files}
        out = {}
        for m in sorted(names):
            if f"{m}::B" not in z.files or f"{m}::A" not in z.files:
                raise ValueError(f"module {m!r} lacks B or A")
            out[m] = LoraFactors(z[f"{m}::B"], z[f"{m}::A"])
    return out


def task_payloads(tasks: Mapping[str, Task]) -> dict[str, bytes]:
    """Each device's task bytes, serialized once per distinct factors (the engine shares one per rank).

    A cohort of 200 spans at most r_max ranks: one ``.npz`` each, shared by reference, instead of 200 copies
    (1.5 GB at SmolLM2's shapes, all built while check-ins waited).
    """
    by_factors: dict[int, bytes] = {}
    out = {}
    for device, task in tasks.items():
        key = id(task.factors)
        if key not in by_factors:
            by_factors[key] = factors_to_bytes(task.factors)
        out[device] = by_factors[key]
    return out


def chunks(data: bytes, size: int = 1 << 20) -> Iterator[bytes]:
    """The task in stream-sized pieces, cut as they are sent (one piece per call alive at a time, not all)."""
    view = memoryview(data)
    yield from (bytes(view[i : i + size]) for i in range(0, len(data), size))
    if not data:
        yield b""
