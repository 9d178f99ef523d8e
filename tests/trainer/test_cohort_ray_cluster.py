"""A two-node local Ray cluster: a round's clients train on both nodes, with the in-process result."""

from __future__ import annotations

from dataclasses import replace

import pytest

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")

from trainer.cohort import RayOptions  # noqa: E402
from trainer.simulation import SimulationConfig, run_simulation  # noqa: E402

CFG = SimulationConfig(
    strategies=("hetlora",), model="tiny", clients=6, per_round=4, rounds=1, local_steps=2, batch_size=2,
    eval_blocks=2, device_eval=False, save_versions=False,
)  # fmt: skip


@pytest.mark.timeout(300)
def test_clients_train_on_both_nodes_of_a_two_node_cluster() -> None:
    expected = run_simulation(CFG, progress=False)
    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        got = run_simulation(replace(CFG, backend="ray", ray=RayOptions(2, address=cluster.address)), progress=False)
    finally:
        ray.shutdown()
        cluster.shutdown()
    nodes = {w.split("@")[1] for w in got[-1]["backend"]["workers"]}
    assert len(nodes) == 2, got[-1]["backend"]  # one 1-CPU actor per node: both nodes trained clients
    assert got[-1]["ranks"] == expected[-1]["ranks"] and got[-1]["dropped"] == expected[-1]["dropped"]
    assert got[-1]["heldout_loss"] == pytest.approx(expected[-1]["heldout_loss"], abs=1e-5)
