"""``hetlora device enroll`` and ``hetlora device run``: the agent a platform team installs on each device.

A device holds its own data and its own copy of the base model; neither leaves it. ``run`` loads both, checks
the data before it ever checks in (a device with bad data tells the orchestrator why and stops, instead of
silently never training), and refuses a task for a different base model than the one it loaded.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import grpc

from services.cli_options import add_data_arguments, add_model_arguments
from services.cli_rpc import rpc_or_exit
from services.job_cli import add_job_arguments
from services.pki import new_key_and_csr, write_private
from trainer.probe import parse_ranks


def add_device_commands(sub: argparse._SubParsersAction) -> None:
    dev = sub.add_parser("device", help="the device agent").add_subparsers(dest="device_cmd", required=True)
    en = dev.add_parser("enroll", help="create a key, enroll with a token, store the certificate in --dir")
    en.add_argument("--token", required=True)
    en.add_argument("--target", default="127.0.0.1:50051", help="enrollment address")
    en.add_argument("--ca", type=Path, required=True, help="the deployment's ca.crt, to verify the server")
    en.add_argument("--dir", type=Path, required=True, help="where the device keeps its key and certificate")
    en.add_argument(
        "--probe",
        action="store_true",
        help="measure real LoRA training steps on --model at --ranks; the service picks the rank from them",
    )
    en.add_argument("--memory-mb", type=float, help="instead of --probe: memory free for training, MiB")
    en.add_argument("--gflops", type=float, help="instead of --probe: sustained fp32 throughput, GFLOP/s")
    add_model_arguments(en, default="smollm2", trains=True)  # --probe trains the job's model the way 'run' will
    en.add_argument("--batch-size", type=int, default=4, help="--probe: the job's local batch size")
    en.add_argument("--seq-len", type=int, default=64, help="--probe: the job's tokens per block")
    en.add_argument("--ranks", type=parse_ranks, default=(2, 32), help="--probe: ranks to measure (r_min,r_max)")
    en.add_argument("--device", default="cpu", help="--probe: torch device the agent trains on (cpu, cuda)")
    en.set_defaults(func=_device_enroll)

    run = dev.add_parser(
        "run",
        help="take part in rounds: train locally on --data, mask, upload (needs 'device enroll' first)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    run.add_argument("--dir", type=Path, required=True, help="the device's enrollment directory")
    run.add_argument("--orchestrator", default="127.0.0.1:50054")
    add_model_arguments(run, default="smollm2", trains=True, targets=False)
    add_data_arguments(run, simulation=False)
    run.add_argument("--seq-len", type=int, default=64, help="tokens per training block (the job's rounds.seq_len)")
    run.add_argument("--max-rounds", type=int, default=1000, help="leave after training this many rounds")
    add_job_arguments(run, secure_aggregation=False)  # a device config file: its [model] and [data] sections
    run.set_defaults(func=_device_run)


def _device_enroll(args: argparse.Namespace) -> int:
    from services.api.hetlora.v1 import enrollment_pb2 as pb
    from services.api.hetlora.v1 import enrollment_pb2_grpc as rpc
    from services.enrollment.client import probed_profile, typed_profile
    from services.transport import channel
    from trainer.probe import ProbeError

    record: dict = {}
    profile = typed_profile(args.memory_mb, args.gflops, args.probe)
    if profile is None:
        try:
            profile, record["probe"] = probed_profile(
                args.model,
                args.target_modules,
                args.ranks,
                args.batch_size,
                args.seq_len,
                args.device,
                args.dtype,
                args.gradient_checkpointing,
                say=lambda line: print(line, flush=True),
            )
        except ProbeError as e:
            raise ValueError(f"probe failed at {e}") from None
    key_pem, csr_pem = new_key_and_csr()
    stub = rpc.EnrollmentServiceStub(channel(args.target, args.ca.read_bytes()))
    request = pb.EnrollRequest(token=args.token, csr_pem=csr_pem, profile=profile)
    reply = rpc_or_exit(lambda: stub.Enroll(request, timeout=30))
    write_private(args.dir / "device.key", key_pem)
    (args.dir / "device.crt").write_bytes(reply.certificate_pem)
    (args.dir / "ca.crt").write_bytes(reply.ca_certificate_pem)
    enrolled = {"device_id": reply.device_id, "rank": reply.rank, **record}
    (args.dir / "enrollment.json").write_text(json.dumps(enrolled))
    print(f"enrolled as {reply.device_id!r} at LoRA rank {reply.rank}; credentials in {args.dir}")
    return 0


def _device_run(args: argparse.Namespace) -> int:
    from services.api.hetlora.v1 import orchestrator_pb2 as pb
    from services.api.hetlora.v1 import orchestrator_pb2_grpc as rpc
    from services.device.agent import (
        CHECK_IN_WAIT_S,
        RETRYABLE,
        BaseModelMismatchError,
        DeviceAgent,
        all_rounds_finished,
        report_unavailable,
    )
    from services.device.secure_upload import LeftRoundError
    from services.transport import channel
    from trainer.data.local import DataSpec, load_client_data
    from trainer.data.records import Columns
    from trainer.fingerprint import model_fingerprint
    from trainer.model import load_base_model, load_tokenizer
    from trainer.privacy.device_side import BudgetExhaustedError

    ca, cert, key = (args.dir / n for n in ("ca.crt", "device.crt", "device.key"))
    if not all(p.exists() for p in (ca, cert, key)):
        raise ValueError(f"{args.dir} has no credentials: run 'hetlora device enroll --dir {args.dir}' first")
    me = json.loads((args.dir / "enrollment.json").read_text())["device_id"]
    ca_pem, cert_pem, key_pem = ca.read_bytes(), cert.read_bytes(), key.read_bytes()
    if args.data is None:
        raise ValueError("no training data: give --data PATH (or [data] path in the --config file)")
    spec = DataSpec(
        path=args.data,
        validation=args.validation,
        format=args.data_format,
        loss_on=args.loss_on,
        columns=Columns(**dict(args.columns)),
    )
    try:
        # The held-out split stays off the training data, but a device scores nothing on it: no minimum.
        data = load_client_data(spec, load_tokenizer(args.model), args.seq_len, 0, 1, me)
    except ValueError as e:
        stub = rpc.OrchestratorServiceStub(channel(args.orchestrator, ca_pem, cert_pem, key_pem))
        report_unavailable(stub, pb.UNAVAILABLE_REASON_BAD_DATA, str(e))
        raise ValueError(f"{me}: cannot train on {args.data}: {e}") from None
    model = load_base_model(args.model, dtype=args.dtype, gradient_checkpointing=args.gradient_checkpointing)
    agent = DeviceAgent.connect(
        args.orchestrator,
        ca_pem,
        cert_pem,
        key_pem,
        model,
        data,
        ledger_path=args.dir / "privacy_ledger.json",
        fingerprint=model_fingerprint(args.model, model),
    )
    print(f"READY device={me} base={agent.fingerprint} train_blocks={len(agent.data.train)}", flush=True)
    trained = 0
    while trained < args.max_rounds:
        try:
            done = agent.run_round(wait_s=CHECK_IN_WAIT_S)
        except grpc.RpcError as e:
            if all_rounds_finished(e):
                print(f"{me}: {e.details()}", flush=True)
                return 0
            if e.code() not in RETRYABLE:
                raise
            print(f"{me}: {e.code().name} ({e.details()}); checking in again", flush=True)
            time.sleep(1.0)  # back off before the next check-in, not a synchronisation
            continue
        except BaseModelMismatchError as e:
            raise ValueError(f"{me}: {e}") from None
        except (LeftRoundError, TimeoutError) as e:
            print(f"{me}: left the round ({e}); checking in again", flush=True)
            continue
        except BudgetExhaustedError as e:
            print(f"{me}: {e}", flush=True)
            return 0
        if done is not None:
            trained += 1
            status = "uploaded" if done.wire else "dropped from secure aggregation"
            print(
                f"{me}: round {done.round_id} rank {done.rank_before}->{done.rank_after} "
                f"loss {done.train_loss:.4f} {status}",
                flush=True,
            )
    return 0
