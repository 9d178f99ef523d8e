"""The Ray backend on a local 2-CPU Ray: same result as in-process, failures retried once, flat memory."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest

ray = pytest.importorskip("ray")

from trainer.cohort import ClientJob, ClientTrainer, RayOptions  # noqa: E402
from trainer.cohort.ray_runner import RayRunner  # noqa: E402
from trainer.device import Task  # noqa: E402
from trainer.model import load_base_model, load_tokenizer  # noqa: E402
from trainer.peft_bridge import adapted_modules  # noqa: E402
from trainer.privacy.device_side import DevicePrivacy  # noqa: E402
from trainer.simulation import SimulationConfig, prepared_clients, run_simulation, train_config  # noqa: E402
from trainer.strategies import StrategyConfig, make_strategy  # noqa: E402

CFG = SimulationConfig(
    strategies=("hetlora", "flexlora"), model="tiny", clients=6, per_round=4, rounds=2, local_steps=2,
    batch_size=2, eval_blocks=2, dropout=0.2, device_eval=False, save_versions=False,
)  # fmt: skip


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


def _comparable(records: list[dict]) -> list[tuple]:
    return [(r["strategy"], r["round"], r["ranks"], r["dropped"], r["upload_floats"]) for r in records]


@pytest.mark.timeout(300)
def test_ray_actors_give_the_in_process_result(local_ray: None) -> None:
    expected = run_simulation(CFG, progress=False)
    got = run_simulation(replace(CFG, backend="ray", ray=RayOptions(actors=2)), progress=False)
    assert _comparable(got) == _comparable(expected)  # same cohorts, ranks, dropouts and uploads
    assert [r["heldout_loss"] for r in got] == pytest.approx([r["heldout_loss"] for r in expected], abs=1e-5)
    trained = [r["backend"] for r in got if r["round"] > 0]
    assert all(b["name"] == "ray" and not b["failed"] for b in trained)
    assert {w.split("@")[0] for b in trained for w in b["workers"]} == {"actor-0", "actor-1"}  # both trained
    assert all(rss > 100 for b in trained for rss in b["worker_rss_mib"].values())


def _jobs(n: int, client: str, rank: int = 2) -> tuple[object, list[ClientJob]]:
    model = load_base_model("tiny")
    strategy = make_strategy("hetlora", StrategyConfig(r_min=2, r_max=4))
    factors = strategy.distribute(strategy.initial(adapted_modules(model, CFG.target_modules), 0), rank)
    return strategy, [ClientJob(client, Task(1, 0, rank, factors, i), DevicePrivacy()) for i in range(n)]


@pytest.mark.timeout(300)
def test_a_failing_task_is_retried_once_then_the_client_is_a_dropout(local_ray: None) -> None:
    clients = prepared_clients(CFG, load_tokenizer("tiny"))
    strategy, good = _jobs(2, clients[0].client_id)
    _, bad = _jobs(1, "not-in-the-data")
    runner = RayRunner(CFG, RayOptions(actors=2))
    try:
        outcomes = runner.train(strategy, [good[0], bad[0], good[1]])  # type: ignore[arg-type]
    finally:
        runner.close()
    assert [o.client_id for o in outcomes] == [clients[0].client_id, "not-in-the-data", clients[0].client_id]
    assert outcomes[0].report is not None and outcomes[2].report is not None
    failed = outcomes[1]
    assert failed.dropped and failed.attempts == 2
    assert failed.error is not None and "UnknownClientError" in failed.error and "not-in-the-data" in failed.error


@pytest.mark.timeout(300)
def test_an_actor_holds_its_memory_flat_over_many_tasks(local_ray: None) -> None:
    clients = prepared_clients(CFG, load_tokenizer("tiny"))
    strategy, jobs = _jobs(60, clients[1].client_id, rank=4)
    runner = RayRunner(CFG, RayOptions(actors=1))
    try:
        rss = [o.stats["rss_mib"] for o in runner.train(strategy, jobs)]  # type: ignore[arg-type]
    finally:
        runner.close()
    assert len(rss) == 60
    grew = rss[-1] - rss[9]
    assert grew < 40, f"actor RSS grew {grew:.1f} MiB over 50 tasks: {rss[9]:.0f} -> {rss[-1]:.0f} MiB"


def test_in_process_trainer_refuses_an_unknown_client() -> None:
    trainer = ClientTrainer(load_base_model("tiny"), {}, train_config(CFG))
    strategy, jobs = _jobs(1, "nobody")
    with pytest.raises(LookupError, match="nobody"):
        trainer.run(strategy, jobs[0])  # type: ignore[arg-type]
