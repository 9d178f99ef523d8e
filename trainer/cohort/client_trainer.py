"""One worker's training loop: the base model and the clients' data loaded once, many clients in turn.

Used in the driver by the in-process backend and inside each Ray actor by the Ray backend. The adapter is
attached and removed per task (``trainer.peft_bridge``), so the base model is shared by every task; after each
task the worker drops its references and, on a GPU, returns cached blocks, so memory does not grow with the
tasks run (``stats`` reports RSS and the CUDA peak per task to show it).
"""

from __future__ import annotations

import gc
import time
from typing import TYPE_CHECKING

import psutil  # type: ignore[import-untyped]  # ships no stubs
import torch

from trainer.cohort.base import ClientJob, ClientOutcome
from trainer.device import run_task
from trainer.local_train import TrainConfig
from trainer.privacy.device_side import BudgetExhaustedError
from trainer.strategies.base import Strategy

if TYPE_CHECKING:
    from trainer.data.types import ClientDataset
    from trainer.simulation import SimulationConfig


class UnknownClientError(LookupError):
    """A job names a client this worker's data path does not have."""


class ClientTrainer:
    """Trains jobs one after another on one loaded base model."""

    def __init__(
        self,
        model: torch.nn.Module,
        clients: dict[str, ClientDataset],
        train: TrainConfig,
        worker: str = "driver",
        release: bool = False,
    ) -> None:
        self.model, self.clients, self.train, self.worker = model, clients, train, worker
        self.release = release  # collect garbage and measure memory after every task (a long-lived worker)
        self._process = psutil.Process()

    @classmethod
    def from_config(cls, cfg: SimulationConfig, worker: str) -> ClientTrainer:
        """Load the model and read every client's data from ``cfg``'s data path (or built-in corpus) here,
        in the worker: nothing but the config travels from the driver."""
        from trainer.model import load_base_model, load_tokenizer
        from trainer.simulation import prepared_clients, train_config

        model = load_base_model(cfg.model, cfg.device, cfg.seed, cfg.dtype, cfg.gradient_checkpointing)
        clients = {c.client_id: c for c in prepared_clients(cfg, load_tokenizer(cfg.model))}
        return cls(model, clients, train_config(cfg), worker, release=True)

    def run(self, strategy: Strategy, job: ClientJob, attempt: int = 1) -> ClientOutcome:
        """Train one job. A spent example-level budget is an outcome (a dropout), any other error raises."""
        started = time.perf_counter()
        data = self.clients.get(job.client_id)
        if data is None:
            raise UnknownClientError(f"client {job.client_id!r} is not in this worker's data ({len(self.clients)})")
        try:
            report = run_task(strategy, self.model, data, job.task, self.train, job.privacy)
            outcome = ClientOutcome(job.client_id, report, job.privacy, attempts=attempt, worker=self.worker)
        except BudgetExhaustedError:
            outcome = ClientOutcome(job.client_id, None, job.privacy, exhausted=True, attempts=attempt)
        if self.release:
            outcome.stats.update(self._release())
        outcome.stats["seconds"] = time.perf_counter() - started
        return outcome

    def _release(self) -> dict[str, float]:
        """Drop what the task left (optimizer, graphs, the detached adapter) and measure what stays."""
        gc.collect()
        stats = {"rss_mib": self._process.memory_info().rss / 2**20}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            stats["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
            stats["cuda_allocated_mib"] = torch.cuda.memory_allocated() / 2**20
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        return stats
