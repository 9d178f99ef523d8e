"""The orchestrator process: devices poll it for tasks over mTLS; it drives the aggregator for the sums."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from services.aggregator.client import exclude_members, open_round, round_sums
from services.aio_transport import AioServer
from services.api.hetlora.v1 import aggregator_pb2_grpc as agg_rpc
from services.api.hetlora.v1 import orchestrator_pb2 as pb
from services.deadlines import Deadlines
from services.metrics import PrometheusRoundListener, record_certificate
from services.orchestrator.coordinator import Coordinator, DeviceTrust, RoundSettings
from services.orchestrator.evaluation import VersionEvaluator
from services.orchestrator.listeners import RoundListener, RoundListeners
from services.orchestrator.report_check import ReportLimits
from services.orchestrator.servicer import OrchestratorServicer, TaskTemplate
from services.privacy_settings import example_dp_message, user_dp_message
from services.registry import DeviceRegistry
from services.settings import strategy_config
from services.transport import MAX_MESSAGE_BYTES, TlsFiles, channel
from trainer.factors import ModuleShape
from trainer.privacy import ExampleDP, UserDP
from trainer.privacy.federation import FederationPrivacy
from trainer.privacy.user_dp import value_headroom
from trainer.round_engine import RoundEngine, derive_seed
from trainer.store import DirectoryStore
from trainer.strategies import make_strategy
from trainer.strategies.base import GlobalAdapter

log = logging.getLogger("hetlora.orchestrator")


@dataclass(frozen=True)
class OrchestratorConfig:
    strategy: pb.StrategySettings
    train: pb.TrainSettings
    rounds: RoundSettings
    aggregator_target: str
    seed: int = 0
    base_model: str = "tiny"
    example_dp: ExampleDP | None = None
    user_dp: UserDP | None = None
    base_model_fingerprint: str = ""  # trainer.fingerprint; devices whose base differs are refused


@dataclass
class RunningOrchestrator:
    server: AioServer
    port: int
    coordinator: Coordinator
    registry: DeviceRegistry
    evaluator: VersionEvaluator | None = None

    def stop(self, grace: float | None = None) -> None:
        self.coordinator.stop()
        if self.evaluator is not None:
            self.evaluator.stop()
        self.server.stop(grace)
        self.registry.close()


def pruned_ranks(store: DirectoryStore) -> dict[str, int]:
    """Each device's lowest rank after training, from the records committed with every version."""
    ranks: dict[str, int] = {}
    for version in range(1, store.latest_version() + 1):
        for device, rank in (store.record(version).get("ranks") or {}).items():
            ranks[device] = min(ranks.get(device, rank), int(rank))
    return ranks


def start(
    pki: Path,
    registry_db: Path | str,
    store_dir: Path,
    shapes: dict[str, ModuleShape],
    cfg: OrchestratorConfig,
    host: str,
    port: int,
    score: Callable[[GlobalAdapter], float] | None = None,
    deadlines: Deadlines | None = None,
) -> RunningOrchestrator:
    """Resumes from the newest committed version in ``store_dir`` (a crash never loses a committed one).

    ``score`` (held-out loss of an adapter) turns on scoring every committed version for monitoring.
    ``deadlines``: server-side caps and the task-download idle timeout (default: ``services.deadlines``).
    """
    strategy = make_strategy(cfg.strategy.name, strategy_config(cfg.strategy))
    initial = strategy.initial(shapes, derive_seed(cfg.seed, "init"))
    store = DirectoryStore(store_dir, initial, base_model=cfg.base_model)
    registry = DeviceRegistry(registry_db)
    privacy = FederationPrivacy(cfg.user_dp) if cfg.user_dp is not None else None
    engine = RoundEngine(strategy, store, {}, cfg.rounds.per_round, cfg.seed, privacy)
    tls = TlsFiles.load(pki, "service")
    record_certificate("orchestrator", tls.cert_pem)
    aggregator = agg_rpc.AggregatorServiceStub(
        channel(cfg.aggregator_target, tls.ca_pem, tls.cert_pem, tls.key_pem, max_message_bytes=1 << 30)
    )

    pruned = pruned_ranks(store)

    def device_rank(device_id: str) -> int:
        """The enrolled rank, lowered to what the device self-pruned to in committed rounds (survives restarts)."""
        record = registry.get(device_id)
        enrolled = record.rank if record else cfg.strategy.r_min
        return min(enrolled, pruned.get(device_id, enrolled))

    # Weights travel inside the masked values divided by a public bound: sparsity scores are O(1); example
    # counts (token blocks × tokens, ~1e4 per chitchat user) need room, and a device above the bound counts as it.
    # User-level DP weighs every device 1, and its values are clipped updates plus noise shares: the value bound
    # must leave room for 4 standard deviations of one device's share, or the codec would clip the noise.
    bound = 10.0 if cfg.strategy.name == "hetlora" else 1e6
    values = cfg.rounds.secure.value_bound
    if cfg.user_dp is not None:
        bound = 1.0
        share = cfg.user_dp.noise_std if cfg.user_dp.mode == "distributed" else 0.0
        values = max(values, value_headroom(cfg.user_dp.clip_norm, share, 1))
    secure = dataclasses.replace(cfg.rounds.secure, weight_bound=bound, value_bound=values)
    rounds = dataclasses.replace(cfg.rounds, secure=secure)
    latest = store.latest_version()
    resumed = (store.record(latest).get("round") or 0) if latest else 0
    if resumed:
        log.info("resuming after round %d (committed version %d)", resumed, latest)
    metrics = PrometheusRoundListener()
    if privacy is not None:
        metrics.privacy_configured(privacy.user.epsilon_budget, privacy.spent())
    listeners: list[RoundListener] = [metrics]
    evaluator = VersionEvaluator(store, score, metrics.version_evaluated) if score else None
    if evaluator is not None:
        listeners.append(evaluator)
        evaluator.start()
    coordinator = Coordinator(
        engine,
        shapes,
        rounds,
        device_rank,
        lambda config, members, timeout: open_round(aggregator, config, members, timeout),
        lambda config, codec, deadline: round_sums(aggregator, config, codec, deadline),
        first_round=resumed + 1,
        listener=RoundListeners(*listeners),
        trust=DeviceTrust(
            revoked=lambda device: (record := registry.get(device)) is None or record.revoked,
            revoked_now=registry.revoked_devices,
            exclude=lambda round_id, clients, why: exclude_members(aggregator, round_id, clients, why),
            limits=ReportLimits(r_min=strategy.config.r_min),
        ),
    )
    train = pb.TrainSettings()
    train.CopyFrom(cfg.train)
    if cfg.example_dp is not None:
        train.example_dp.CopyFrom(example_dp_message(cfg.example_dp))
    template = TaskTemplate(
        cfg.strategy,
        train,
        cfg.aggregator_target,
        int(cfg.rounds.round_deadline_s * 1000),
        user_dp_message(cfg.user_dp) if cfg.user_dp is not None else None,
        cfg.base_model_fingerprint,
    )
    # grpc.aio: a device waiting for a task holds no thread, however many wait.
    server = AioServer(MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES, service="orchestrator", deadlines=deadlines)
    server.add_servicer(
        pb.DESCRIPTOR.services_by_name["OrchestratorService"], OrchestratorServicer(coordinator, registry, template)
    )
    bound = server.bind(f"{host}:{port}", tls)
    server.start()
    coordinator.start()
    log.info("orchestrator listening on %s:%d, strategy %s", host, bound, cfg.strategy.name)
    return RunningOrchestrator(server, bound, coordinator, registry, evaluator)
