"""Full rounds through the real services on loopback: orchestrator, aggregator, device agents, mTLS.

Tiny random model, real chitchat clients. Devices are threads with their own model and channel; every byte
between them and the services crosses gRPC with their enrolled certificates.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from secure_agg import FixedPointCodec
from services.aggregator.server import start as start_aggregator
from services.api.hetlora.v1 import orchestrator_pb2 as pb
from services.device.agent import DeviceAgent
from services.orchestrator.coordinator import RoundSettings
from services.orchestrator.server import OrchestratorConfig
from services.orchestrator.server import start as start_orchestrator
from services.pki import CertificateAuthority, identity_of
from services.registry import DeviceRegistry
from services.settings import strategy_settings
from trainer.adapter_io import load_adapter
from trainer.data.registry import load_federated_corpus
from trainer.fingerprint import model_fingerprint
from trainer.peft_bridge import adapted_modules
from trainer.ranks import DeviceProfile
from trainer.store import DirectoryStore
from trainer.strategies.base import GlobalAdapter

pytestmark = pytest.mark.timeout(300)
DEVICES = {"dev-a": 2, "dev-b": 8, "dev-c": 4, "dev-d": 8}


def enroll_all(pki: Path, db: Path, devices: dict[str, int]) -> dict[str, tuple[bytes, bytes]]:
    ca = CertificateAuthority.load(pki)
    registry = DeviceRegistry(db)
    creds = {}
    for name, rank in devices.items():
        cert, key = ca.issue(name, "device")
        token, _ = registry.issue_token(name, 60, 0)
        registry.complete_enrollment(token, name, identity_of(cert).serial, DeviceProfile(2000, 100), rank, 1)
        creds[name] = (cert, key)
    registry.close()
    return creds


@pytest.fixture
def deployment(pki: Path, tmp_path: Path, tiny_model_factory) -> Iterator[tuple]:
    running = deploy(pki, tmp_path, tiny_model_factory, "hetlora-rebase", DEVICES, per_round=3)
    yield running
    running[0].stop(None)
    running[1].stop(None)


def deploy(
    pki: Path,
    tmp_path: Path,
    tiny_model_factory,
    strategy: str,
    devices: dict[str, int],
    per_round: int,
    **config: object,
):
    """Enroll ``devices``, start an aggregator and an orchestrator in-process; ``config`` overrides
    ``OrchestratorConfig`` fields (the DP settings, for example)."""
    db = tmp_path / "registry.db"
    creds = enroll_all(pki, db, devices)
    aggregator = start_aggregator(pki, "127.0.0.1", 0)
    cfg = OrchestratorConfig(
        strategy=strategy_settings(strategy, 2, 8),
        train=pb.TrainSettings(steps=2, batch_size=2, lr=1e-3),
        rounds=RoundSettings(
            rounds=2, per_round=3, overselect=1.0, min_devices=3, stage_timeout_s=20, round_deadline_s=120
        ),
        aggregator_target=f"127.0.0.1:{aggregator.port}",
    )
    cfg = dataclasses.replace(cfg, **config)  # type: ignore[arg-type]
    shapes = adapted_modules(tiny_model_factory(0))
    orchestrator = start_orchestrator(pki, db, tmp_path / "store", shapes, cfg, "127.0.0.1", 0)
    return orchestrator, aggregator, creds, tmp_path / "store"


def device_data(tokenizer, names) -> list:
    """Real chitchat clients, renamed to the enrolled device ids (the ids seed cohorts and local training)."""
    clients = load_federated_corpus("chitchat", tokenizer, len(names), 32, heldout_blocks=1)
    return [dataclasses.replace(c, client_id=n) for c, n in zip(clients, names, strict=True)]


def run_devices(pki: Path, orchestrator, creds, tokenizer, tiny_model_factory, until: threading.Event) -> dict:
    names = list(creds)
    clients = device_data(tokenizer, names)
    ca_pem = (pki / "ca.crt").read_bytes()
    done: dict[str, list] = {name: [] for name in names}
    errors: list[BaseException] = []

    # Built here, not in the threads: the tiny model's random init draws from torch's global RNG.
    models = {name: tiny_model_factory(0) for name in names}
    fingerprints = {name: model_fingerprint("tiny", m) for name, m in models.items()}

    def device(name: str, data) -> None:
        cert, key = creds[name]
        agent = DeviceAgent.connect(
            f"127.0.0.1:{orchestrator.port}", ca_pem, cert, key, models[name], data, fingerprint=fingerprints[name]
        )
        try:
            for _ in range(40):  # bounded: each check-in waits at most 2 s
                if until.is_set():
                    return
                result = agent.run_round(wait_s=2.0)
                if result is not None:
                    done[name].append(result)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.FAILED_PRECONDITION:  # "all rounds are finished" ends a device's work
                errors.append(e)
        except BaseException as e:  # surfaced by the test below
            errors.append(e)

    threads = [threading.Thread(target=device, args=(n, d)) for n, d in zip(names, clients, strict=True)]
    for t in threads:
        t.start()
    return {"threads": threads, "done": done, "errors": errors}


def serve_until_done(
    pki: Path,
    tmp_path: Path,
    tokenizer,
    tiny_model_factory,
    strategy: str,
    ranks: dict[str, int],
    per_round: int | None = None,
    **config: object,
):
    """Deploy, let every enrolled device take part until all rounds are done, stop; returns the stopped
    orchestrator (for its history) and the store directory. ``config`` overrides ``OrchestratorConfig`` fields."""
    orchestrator, aggregator, creds, store_dir = deploy(
        pki, tmp_path, tiny_model_factory, strategy, ranks, per_round or len(ranks), **config
    )
    stop = threading.Event()
    try:
        devices = run_devices(pki, orchestrator, creds, tokenizer, tiny_model_factory, stop)
        assert orchestrator.coordinator.join(timeout_s=240)
        stop.set()
        for t in devices["threads"]:
            t.join(timeout=60)
    finally:
        stop.set()
        orchestrator.stop(None)
        aggregator.stop(None)
    assert not devices["errors"], devices["errors"]
    return orchestrator, store_dir


def test_two_rounds_commit_new_versions_from_masked_uploads(pki, deployment, tokenizer, tiny_model_factory) -> None:
    from prometheus_client import REGISTRY

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    committed_before = sample("hetlora_rounds_total", outcome="committed")
    orchestrator, _, creds, store_dir = deployment
    stop = threading.Event()
    devices = run_devices(pki, orchestrator, creds, tokenizer, tiny_model_factory, stop)
    assert orchestrator.coordinator.join(timeout_s=240)
    stop.set()
    for t in devices["threads"]:
        t.join(timeout=60)
    assert not devices["errors"], devices["errors"]
    history = orchestrator.coordinator.history
    assert [r.state for r in history] == ["committed", "committed"], [(r.state, r.detail) for r in history]
    assert all(len(r.cohort) == 3 and not r.dropped for r in history)
    version, adapter = DirectoryStore(store_dir).latest()
    assert version == 2
    assert any(abs(f.B).sum() > 0 for f in adapter.factors.values())  # B starts at 0: training moved it
    assert sample("hetlora_rounds_total", outcome="committed") - committed_before == 2  # metrics saw both rounds
    assert sample("hetlora_global_version") == 2
    assert sample("hetlora_grpc_requests_total", service="orchestrator", method="ReportTraining", code="OK") >= 6
    trained = [d for runs in devices["done"].values() for d in runs]
    assert len(trained) == 6 and all(d.wire is not None and d.wire.up > 0 for d in trained)


def test_services_and_in_process_engine_commit_the_same_adapter(pki, tmp_path, tokenizer, tiny_model_factory) -> None:
    """Same seeds, clients and ranks: the services (secure aggregation on) match the in-process round engine
    (sums in the clear) within the fixed-point quantisation bound. Trains with real example counts (~1e4)."""
    from trainer.device import run_task
    from trainer.local_train import TrainConfig
    from trainer.round_engine import RoundEngine, derive_seed
    from trainer.scaling import Scaling
    from trainer.store import MemoryStore
    from trainer.strategies import StrategyConfig, make_strategy

    # Every rank bucket is trained by >= 2 devices: SecAgg never unmasks a bucket below its threshold (that
    # would reveal one device's update), while the clear-text engine would use it.
    ranks = {"eq-a": 4, "eq-b": 8, "eq-c": 8}
    model = tiny_model_factory(0)
    shapes = adapted_modules(model)
    strategy = make_strategy("hetlora-rebase", StrategyConfig(2, 8, Scaling(), gamma=0.99, lam=0.01))
    data = {c.client_id: c for c in device_data(tokenizer, list(ranks))}

    def engine_round(engine: RoundEngine, rnd: int) -> float:
        """One clear-text round; returns the smallest per-component weight sum (the rounding bound's divisor)."""
        plan = engine.plan(rnd)
        train = TrainConfig(steps=2, batch_size=2, lr=1e-3)
        reports = [run_task(strategy, model, data[c], t, train) for c, t in engine.tasks(plan).items()]
        engine.finish(plan, reports, [])
        return min(sum(r.num_examples for r in reports if r.rank >= j) for j in (1, 8))

    def assert_within_rounding(served: GlobalAdapter, clear: GlobalAdapter, weight: float) -> None:
        """At most one ring unit per device and element of w·δ, divided by the smallest per-component weight
        sum (weights = n / bound); re-basing keeps the product, so products differ by at most
        r·bound·(max|A| + max|B| + bound)·scale."""
        bound = len(ranks) / FixedPointCodec(4.0, 1.0, len(ranks)).value_scale / (weight / 1e6)
        for m in shapes:
            f = clear.factors[m]
            product_bound = clear.scale * f.rank * bound * (np.abs(f.A).max() + np.abs(f.B).max() + bound) + 1e-6
            np.testing.assert_allclose(served.delta(m), clear.delta(m), atol=product_bound, rtol=0)
            assert np.abs(clear.delta(m)).max() > 100 * product_bound  # not a comparison of two zeros

    engine = RoundEngine(strategy, MemoryStore(strategy.initial(shapes, derive_seed(0, "init"))), ranks, 3, 0)
    weight = engine_round(engine, 1)
    _, store_dir = serve_until_done(pki, tmp_path, tokenizer, tiny_model_factory, "hetlora-rebase", ranks)
    store = DirectoryStore(store_dir)
    assert store.latest_version() == 2
    first = load_adapter(store.path(1))
    assert_within_rounding(first, engine.store.latest()[1], weight)  # round 1 starts from the same version
    # Round 2 replayed in the clear from the served version 1, with the ranks the devices pruned to. (Replaying
    # from the engine's own version 1 is ill-posed: where two singular values nearly coincide, the rounding turns
    # the SVD basis, and AdamW, which steps per coordinate, then takes different steps.)
    replay = RoundEngine(strategy, MemoryStore(first), engine.device_ranks, 3, 0)
    weight = engine_round(replay, 2)
    assert_within_rounding(store.latest()[1], replay.store.latest()[1], weight)


def test_flexlora_runs_through_the_services_and_matches_the_engine(
    pki, tmp_path, tokenizer, tiny_model_factory
) -> None:
    """FlexLoRA's full-size products travel masked in one bucket; round 1 matches the clear-text engine."""
    from trainer.device import run_task
    from trainer.local_train import TrainConfig
    from trainer.round_engine import RoundEngine, derive_seed
    from trainer.scaling import Scaling
    from trainer.store import MemoryStore
    from trainer.strategies import StrategyConfig, make_strategy

    ranks = {"fx-a": 2, "fx-b": 8, "fx-c": 4}
    model = tiny_model_factory(0)
    shapes = adapted_modules(model)
    strategy = make_strategy("flexlora", StrategyConfig(2, 8, Scaling(), gamma=0.99, lam=0.01))
    engine = RoundEngine(strategy, MemoryStore(strategy.initial(shapes, derive_seed(0, "init"))), ranks, 3, 0)
    data = {c.client_id: c for c in device_data(tokenizer, list(ranks))}
    plan = engine.plan(1)
    tasks = engine.tasks(plan)
    engine.finish(plan, [run_task(strategy, model, data[c], t, TrainConfig(2, 2, 1e-3)) for c, t in tasks.items()], [])
    _, reference = engine.store.latest()

    orchestrator, store_dir = serve_until_done(pki, tmp_path, tokenizer, tiny_model_factory, "flexlora", ranks)
    assert [r.state for r in orchestrator.coordinator.history] == ["committed", "committed"]
    first = load_adapter(DirectoryStore(store_dir).path(1))
    for m in shapes:
        np.testing.assert_allclose(first.delta(m), reference.delta(m), atol=1e-5, rtol=0)
        assert np.abs(reference.delta(m)).max() > 1e-4  # 10x the tolerance: not a comparison of zeros


def test_self_pruned_ranks_are_rebuilt_from_committed_versions(tmp_path, tiny_model_factory) -> None:
    """After a restart the orchestrator must not hand a device back the rank it pruned away."""
    from services.orchestrator.server import pruned_ranks
    from trainer.round_engine import derive_seed
    from trainer.scaling import Scaling
    from trainer.strategies import StrategyConfig, make_strategy

    strategy = make_strategy("hetlora-rebase", StrategyConfig(2, 8, Scaling()))
    initial = strategy.initial(adapted_modules(tiny_model_factory(0)), derive_seed(0, "init"))
    store = DirectoryStore(tmp_path / "store", initial, base_model="tiny")
    store.commit(initial, {"round": 1, "ranks": {"a": 8, "b": 4}})
    store.commit(initial, {"round": 2, "ranks": {"a": 7}})
    store.commit(initial, {"round": 3, "ranks": {"b": 4, "c": 2}})
    assert pruned_ranks(DirectoryStore(tmp_path / "store")) == {"a": 7, "b": 4, "c": 2}
