"""In-process device agents for the service tests: each trains in its own thread until the rounds are done.

Agents run the real device code (`DeviceAgent`) against real services; only the process boundary is left out,
so a test can start a few devices in milliseconds. Loops are bounded and back off on retryable statuses, as
`hetlora device run` does, so a restarting service is waited for rather than treated as a failure.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from services.device.agent import RETRYABLE, DeviceAgent, all_rounds_finished
from services.device.secure_upload import LeftRoundError
from tests.services.test_round_services import device_data
from trainer.fingerprint import model_fingerprint


@dataclass
class DeviceThreads:
    threads: list[threading.Thread]
    stop: threading.Event = field(default_factory=threading.Event)
    failures: list[BaseException] = field(default_factory=list)

    def finish(self, timeout_s: float = 60) -> None:
        """Ask every device to leave and wait (bounded) for it."""
        self.stop.set()
        for t in self.threads:
            t.join(timeout=timeout_s)


def start_devices(
    target: str, pki: Path, creds: dict[str, tuple[bytes, bytes]], tokenizer, tiny_model_factory, attempts: int = 200
) -> DeviceThreads:
    """One thread per enrolled device in ``creds``, each holding a real chitchat client's text."""
    ca = (pki / "ca.crt").read_bytes()
    models = {n: tiny_model_factory(0) for n in creds}  # main thread: the tiny init draws from the global RNG
    running = DeviceThreads([])

    def device(name: str, data) -> None:
        fingerprint = model_fingerprint("tiny", models[name])  # what a CLI orchestrator on the tiny model expects
        agent = DeviceAgent.connect(target, ca, *creds[name], models[name], data, fingerprint=fingerprint)
        for _ in range(attempts):  # bounded; each check-in waits at most 2 s
            if running.stop.is_set():
                return
            try:
                agent.run_round(wait_s=2.0)
            except (LeftRoundError, TimeoutError):
                continue
            except grpc.RpcError as e:
                if all_rounds_finished(e):
                    return
                if e.code() not in RETRYABLE:
                    running.failures.append(e)
                    return
                running.stop.wait(0.5)  # back off while a service restarts
            except BaseException as e:  # surfaced by the test
                running.failures.append(e)
                return

    for client in device_data(tokenizer, list(creds)):
        running.threads.append(threading.Thread(target=device, args=(client.client_id, client)))
    for t in running.threads:
        t.start()
    return running
