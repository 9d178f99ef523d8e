"""One probe measurement, in this (fresh) process: load the model, train a few LoRA steps at one rank.

How memory is measured, and why:

- **CPU**: the process's peak resident set (``VmHWM``, what ``ru_maxrss`` reports). The kernel updates it
  exactly on every page fault, so no spike is missed; a sampling thread would miss the short-lived ones (the
  logits' gradient lives for milliseconds) and would steal a core from the very steps being timed.
- The mark is reset (``5`` into ``/proc/self/clear_refs``) after the model is loaded, so loading's transient
  copies (de-quantising a GGUF) do not hide training's peak. Where the reset is unavailable (not Linux) the
  peak includes loading: too high, never too low.
- The number is the whole process (interpreter, torch, model, training): what ``hetlora device run`` holds,
  compared with the memory that was available before the probe started.
- **GPU**: ``torch.cuda.max_memory_reserved``, what the caching allocator took from the device, fragmentation
  included; the free memory is ``torch.cuda.mem_get_info`` before the model loads.

Step time is the median of the timed steps after one warm-up step (lazy init, Adam state, first allocations),
with the device synchronised around each step on a GPU. The matmul throughput is recorded with the profile
(what ``gflops`` means when typed by hand); it does not set the rank.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from trainer.probe import MIB, RESULT_PREFIX, ProbeSettings


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / MIB
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return float(peak) / (MIB if sys.platform == "darwin" else 1024)


def matmul_gflops(device: str, seconds: float = 0.3) -> float:
    """Sustained fp32 matmul throughput: what ``DeviceProfile.gflops`` means, measured instead of typed."""
    import torch

    n = 4096 if device.startswith("cuda") else 1024
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    torch.mm(a, b)  # warm-up
    count, started = 0, time.perf_counter()
    while count < 3 or time.perf_counter() - started < seconds:
        torch.mm(a, b)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - started) / 1e9


def measure_rank(settings: ProbeSettings, rank: int) -> dict[str, Any]:
    """In this process: load the model, train ``1 + steps`` steps at ``rank``, report peak memory and step time."""
    import torch

    from trainer.model import load_base_model
    from trainer.peft_bridge import adapted_modules, lora_attached
    from trainer.scaling import Scaling
    from trainer.strategies.base import init_factors

    cuda = settings.device.startswith("cuda")
    gpu_free = torch.cuda.mem_get_info(settings.device)[0] / MIB if cuda else None
    model = load_base_model(
        settings.model, settings.device, dtype=settings.dtype, gradient_checkpointing=settings.gradient_checkpointing
    )
    targets = settings.targets if isinstance(settings.targets, str) else tuple(settings.targets)
    factors = init_factors(adapted_modules(model, targets), rank, settings.seed)
    vocab = int(cast(torch.nn.Embedding, model.get_input_embeddings()).num_embeddings)
    gen = torch.Generator().manual_seed(settings.seed)
    shape = (settings.batch_size, settings.seq_len)
    batches = [torch.randint(0, vocab, shape, generator=gen).to(settings.device) for _ in range(1 + settings.steps)]
    mask = torch.ones(shape, dtype=torch.long, device=settings.device)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(settings.device)
        source = "cuda_reserved"
    else:
        source = "vmhwm" if _reset_peak_rss() else "ru_maxrss"
    times = []
    with lora_attached(model, factors, rank, Scaling()) as peft_model:
        peft_model.train()
        optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4)
        for ids in batches:
            started = time.perf_counter()
            loss = peft_model(input_ids=ids, attention_mask=mask, labels=ids).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_reserved(settings.device) / MIB if cuda else _peak_rss_mb()
    return {
        "rank": rank,
        "peak_memory_mb": peak,
        "step_seconds": statistics.median(times[1:]),
        "warmup_seconds": times[0],
        "memory_source": source,
        "gpu_free_mb": gpu_free,
        "gflops": matmul_gflops(settings.device),
    }


def _worker_main(argv: Sequence[str]) -> int:
    spec = json.loads(argv[0])
    out = measure_rank(ProbeSettings(**spec["settings"]), int(spec["rank"]))
    print(RESULT_PREFIX + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(_worker_main(sys.argv[1:]))
