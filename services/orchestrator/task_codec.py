"""Starting factors on the wire: one ``.npz`` (B and A per module), streamed in chunks under gRPC's limit."""

from __future__ import annotations

import io

import numpy as np

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


def chunks(data: bytes, size: int = 1 << 20) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]
