"""Committed global versions: append-only, and a crash never loses one that was committed.

``DirectoryStore`` writes each version as a peft adapter directory first and only then points ``LATEST`` at it
(an atomic rename), so after a crash the latest committed version is either the old or the new one, never a
half-written one. The in-memory store serves tests and short experiments.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Protocol

from trainer.adapter_io import load_adapter, save_adapter
from trainer.strategies.base import GlobalAdapter


class VersionStore(Protocol):
    def latest(self) -> tuple[int, GlobalAdapter]: ...

    def commit(self, adapter: GlobalAdapter, record: dict) -> int: ...

    def record(self, version: int) -> dict: ...


class MemoryStore:
    """Versions in a list; version numbers are list positions."""

    def __init__(self, initial: GlobalAdapter) -> None:
        self._versions = [initial]
        self.records: list[dict] = [{}]

    def latest(self) -> tuple[int, GlobalAdapter]:
        return len(self._versions) - 1, self._versions[-1]

    def record(self, version: int) -> dict:
        return dict(self.records[version])

    def commit(self, adapter: GlobalAdapter, record: dict) -> int:
        self._versions.append(adapter)
        self.records.append(record)
        return len(self._versions) - 1


class DirectoryStore:
    """``root/v0003/`` holds version 3 in peft format; ``root/LATEST`` names the committed one."""

    def __init__(self, root: Path, initial: GlobalAdapter | None = None, base_model: str = "smollm2") -> None:
        self.root = Path(root)
        self.base_model = base_model
        self.root.mkdir(parents=True, exist_ok=True)
        if not (self.root / "LATEST").exists():
            if initial is None:
                raise FileNotFoundError(f"{self.root} holds no committed version and no initial adapter was given")
            self._write(0, initial, {"round": None})

    def path(self, version: int) -> Path:
        return self.root / f"v{version:04d}"

    def latest_version(self) -> int:
        return int(json.loads((self.root / "LATEST").read_text())["version"])

    def latest(self) -> tuple[int, GlobalAdapter]:
        v = self.latest_version()
        return v, load_adapter(self.path(v))

    def record(self, version: int) -> dict:
        """What was recorded with a version at commit (round, reporters, dropped devices, ranks)."""
        return dict(json.loads((self.path(version) / "hetlora.json").read_text()))

    def commit(self, adapter: GlobalAdapter, record: dict) -> int:
        version = self.latest_version() + 1
        self._write(version, adapter, record)
        return version

    def _write(self, version: int, adapter: GlobalAdapter, record: dict) -> None:
        save_adapter(adapter, self.path(version), self.base_model, extra={"version": version, **record})
        tmp = self.root / "LATEST.tmp"
        with open(tmp, "w") as fh:
            json.dump({"version": version}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.root / "LATEST")
