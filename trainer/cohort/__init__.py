"""Backends that train a simulation's cohort: ``in-process`` (the default) and ``ray`` (actors, any cluster).

runner = make_runner("ray", cfg, trainer=None, ray=RayOptions(actors=4, num_gpus=0.25))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainer.cohort.base import ClientJob, ClientOutcome, CohortRunner
from trainer.cohort.client_trainer import ClientTrainer
from trainer.cohort.in_process import InProcessRunner
from trainer.cohort.ray_runner import RayOptions, RayRunner

if TYPE_CHECKING:
    from trainer.simulation import SimulationConfig

BACKENDS = ("in-process", "ray")

__all__ = ["BACKENDS", "ClientJob", "ClientOutcome", "ClientTrainer", "CohortRunner", "RayOptions", "make_runner"]


def make_runner(
    name: str, cfg: SimulationConfig, trainer: ClientTrainer | None = None, ray: RayOptions | None = None
) -> CohortRunner:
    """The backend ``name``: in-process trains on ``trainer`` (the driver's model); ray starts its actors."""
    if name == "in-process":
        if trainer is None:
            raise ValueError("the in-process backend trains on the driver's model: pass trainer=")
        return InProcessRunner(trainer)
    if name == "ray":
        return RayRunner(cfg, ray or RayOptions())
    raise ValueError(f"unknown simulation backend {name!r}; choose from {', '.join(BACKENDS)}")
