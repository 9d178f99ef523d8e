"""The Ray backend: a pool of actors, each holding the base model, trains the cohort's clients in turn.

Actors declare ``num_cpus``/``num_gpus`` (fractions allowed), load the model and read the clients' data from
the data path themselves (``ClientTrainer.from_config``: only the config, each task and each ledger travel),
and stay up for the whole run, so a model is loaded once per actor, not once per client. A job goes to the next
free actor; one that fails (an exception, or its actor died: OOM, a lost node) is retried once on any actor,
and a second failure makes the client a dropout of the round, reported with its id. Outcomes come back in job
order, so the engine aggregates exactly what the in-process backend would give it.

``address=None`` starts a local Ray for the run and stops it at ``close``; ``"auto"`` or ``host:port`` joins an
existing cluster (``ray start --head`` / ``--address``) and leaves it running.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trainer.cohort.base import ClientJob, ClientOutcome
from trainer.strategies.base import Strategy

if TYPE_CHECKING:
    from trainer.simulation import SimulationConfig

log = logging.getLogger("hetlora.simulation")


@dataclass(frozen=True)
class RayOptions:
    """How many actors and what each declares; where the cluster is."""

    actors: int = 2
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    address: str | None = None  # None: a local Ray for this run; "auto" or host:port: an existing cluster

    def __post_init__(self) -> None:
        if self.actors < 1:
            raise ValueError(f"ray actors must be >= 1, got {self.actors}")
        if self.num_cpus <= 0 or self.num_gpus < 0:
            raise ValueError(f"an actor needs num_cpus > 0 and num_gpus >= 0, got {self.num_cpus}, {self.num_gpus}")


class _Actor:
    """The actor body (wrapped by ``ray.remote`` in :class:`RayRunner`)."""

    def __init__(self, cfg: SimulationConfig, index: int, threads: int) -> None:
        import ray
        import torch

        from trainer.cohort.client_trainer import ClientTrainer

        torch.set_num_threads(threads)  # what the actor declared, not every core of the node
        node = ray.get_runtime_context().get_node_id()[:8]
        self.trainer = ClientTrainer.from_config(cfg, worker=f"actor-{index}@{node}")

    def run(self, strategy: Strategy, job: ClientJob, attempt: int) -> ClientOutcome:
        return self.trainer.run(strategy, job, attempt)

    def where(self) -> str:
        return self.trainer.worker


class RayRunner:
    """Train each round's cohort on a pool of Ray actors."""

    name = "ray"

    def __init__(self, cfg: SimulationConfig, options: RayOptions) -> None:
        try:
            import ray
        except ImportError as e:  # an optional extra
            raise RuntimeError("the ray backend needs Ray: pip install -e '.[ray]'") from e

        self.options, self._ray, self._owns_cluster = options, ray, False
        if not ray.is_initialized():
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # offline machines: no usage report
            init: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
            if options.address is None:
                init["num_cpus"] = max(1, round(options.actors * options.num_cpus))
                init["num_gpus"] = options.actors * options.num_gpus if options.num_gpus else 0
                self._owns_cluster = True
            else:
                init["address"] = options.address
            ray.init(**init)
        remote = ray.remote(num_cpus=options.num_cpus, num_gpus=options.num_gpus, max_restarts=1)(_Actor)
        threads = max(1, int(options.num_cpus))
        self.actors: list[Any] = [remote.remote(cfg, i, threads) for i in range(options.actors)]
        self.workers: list[str] = ray.get([a.where.remote() for a in self.actors])  # every actor loaded its model

    def train(self, strategy: Strategy, jobs: list[ClientJob]) -> list[ClientOutcome]:
        ray = self._ray
        strategy_ref = ray.put(strategy)
        queue: deque[tuple[int, int]] = deque((i, 1) for i in range(len(jobs)))  # (job index, attempt)
        free = deque(range(len(self.actors)))
        running: dict[Any, tuple[int, int, int]] = {}  # future -> (job index, attempt, actor)
        outcomes: dict[int, ClientOutcome] = {}
        while queue or running:
            while queue and free:
                i, attempt = queue.popleft()
                actor = free.popleft()
                running[self.actors[actor].run.remote(strategy_ref, jobs[i], attempt)] = (i, attempt, actor)
            (done,), _ = ray.wait(list(running), num_returns=1)
            i, attempt, actor = running.pop(done)
            free.append(actor)
            try:
                outcomes[i] = ray.get(done)
            except Exception as e:  # the task raised, or its actor died (restarted once by Ray)
                why = _reason(e)
                if attempt == 1:
                    log.warning("client %s: training failed (%s); retrying once", jobs[i].client_id, why)
                    queue.append((i, 2))
                else:
                    log.warning("client %s: training failed again (%s); a dropout this round", jobs[i].client_id, why)
                    outcomes[i] = ClientOutcome(jobs[i].client_id, None, jobs[i].privacy, error=why, attempts=2)
        return [outcomes[i] for i in range(len(jobs))]

    def close(self) -> None:
        for actor in self.actors:
            self._ray.kill(actor)
        self.actors = []
        if self._owns_cluster:
            self._ray.shutdown()


def _reason(error: Exception) -> str:
    """The failure's own type and message, without Ray's wrapping traceback."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"[:300]
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:300]
