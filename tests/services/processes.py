"""Start real service processes and wait, bounded, for the line they print when ready (no sleeps)."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class ServiceProcess:
    proc: subprocess.Popen
    ready: dict[str, str]
    lines: list[str] = field(default_factory=list)
    pending: queue.Queue | None = None

    def wait_for(self, text: str, timeout: float) -> str:
        """The next output line containing ``text``; fails after ``timeout`` seconds or if the process exits."""
        assert self.pending is not None
        end = time.monotonic() + timeout
        while True:
            try:
                line = self.pending.get(timeout=max(0.01, end - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"no line with {text!r} in {timeout}s:\n{''.join(self.lines[-20:])}") from None
            if line is None:
                raise RuntimeError(f"process exited with {self.proc.wait()}:\n{''.join(self.lines[-20:])}")
            self.lines.append(line)
            if text in line:
                return line

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def hetlora(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run one ``hetlora`` command to completion."""
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args], capture_output=True, text=True, timeout=timeout, env=_env()
    )


def start_service(args: Sequence[str], timeout: float = 60) -> ServiceProcess:
    """Start ``hetlora <args>`` and return once it prints ``READY key=value ...`` (or fail after ``timeout``)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
    )
    lines: queue.Queue[str | None] = queue.Queue()
    seen: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    while True:
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            proc.kill()
            raise TimeoutError(f"{args[:2]} not ready within {timeout}s; output:\n{''.join(seen)}") from None
        if line is None:
            raise RuntimeError(f"{args[:2]} exited with {proc.wait()}; output:\n{''.join(seen)}")
        seen.append(line)
        if line.startswith("READY "):
            ready = dict(kv.split("=", 1) for kv in line.split()[1:])
            return ServiceProcess(proc, ready, seen, lines)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
