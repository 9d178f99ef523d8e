"""`hetlora simulate` end to end on the tiny model: records, plot, versions in peft format, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from services.cli import build_parser, main
from trainer.data.types import ClientDataset, TokenBlocks
from trainer.simulation import SimulationConfig, capped_train
from trainer.strategies import strategy_names

ARGS = ["simulate", "--model", "tiny", "--clients", "6", "--per-round", "3", "--rounds", "2",
        "--local-steps", "1", "--batch-size", "2", "--eval-blocks", "2"]  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim")
    assert main([*ARGS, "--strategy", "homlora,hetlora,flexlora", "--dropout", "0.3", "--out", str(out)]) == 0
    return out


def test_writes_metrics_plot_and_versions(run_dir: Path) -> None:
    data = json.loads((run_dir / "metrics.json").read_text())
    recs = data["records"]
    assert {r["strategy"] for r in recs} == {"homlora", "hetlora", "flexlora"}
    assert len(recs) == 3 * 3  # round 0 plus two rounds each
    for r in recs:
        assert {"strategy", "round", "heldout_loss", "ranks", "upload_bytes"} <= r.keys()
    r1 = [r for r in recs if r["round"] > 0]
    assert all(1 <= r["global_live_rank"] <= 32 for r in r1)
    assert all(r["upload_bytes"] > 0 or len(r["dropped"]) == 3 for r in r1)
    flex = sum(r["upload_bytes"] for r in recs if r["strategy"] == "flexlora")
    het = sum(r["upload_bytes"] for r in recs if r["strategy"] == "hetlora")
    assert flex > 0 and het > 0
    finals = [r for r in recs if r["round"] == 2]
    assert all(len(r["device_losses"]) == 6 for r in finals)
    assert set(next(r for r in finals if r["strategy"] == "homlora")["device_ranks"].values()) == {2}
    assert (run_dir / "heldout_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    versions = sorted(p.name for p in (run_dir / "hetlora" / "versions").iterdir())
    assert versions[0] == "LATEST" and "v0000" in versions


def test_same_seed_same_result(run_dir: Path, tmp_path: Path) -> None:
    assert main([*ARGS, "--strategy", "hetlora", "--dropout", "0.3", "--no-save-versions", "--out", str(tmp_path)]) == 0
    again = json.loads((tmp_path / "metrics.json").read_text())["records"]
    first = [r for r in json.loads((run_dir / "metrics.json").read_text())["records"] if r["strategy"] == "hetlora"]
    assert [r["heldout_loss"] for r in again] == pytest.approx([r["heldout_loss"] for r in first], abs=1e-6)
    assert [r["ranks"] for r in again] == [r["ranks"] for r in first]


def test_cli_rejects_unknown_strategy(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["simulate", "--strategy", "fedprox", "--out", "x"])
    assert "choose from" in capsys.readouterr().err


def test_live_rank_counts_components_alive_in_any_module() -> None:
    import numpy as np

    from trainer.factors import LoraFactors
    from trainer.simulation import live_rank
    from trainer.strategies import GlobalAdapter

    B = np.zeros((3, 4))
    B[:, 1] = 1
    B[0, 3] = 2
    adapter = GlobalAdapter(
        {"a": LoraFactors(B, np.ones((4, 2))), "b": LoraFactors(np.ones((3, 2)), np.ones((2, 2)))}, 1
    )
    assert live_rank(adapter) == 3


def test_every_registered_strategy_completes_a_round(tmp_path: Path) -> None:
    """One round of each strategy through the same engine and devices (hooks included) gives a finite model."""
    names = strategy_names()
    small = [*ARGS, "--rounds", "1", "--clients", "3", "--per-round", "2", "--eval-blocks", "1", "--no-save-versions"]
    assert main([*small, "--strategy", ",".join(names), "--out", str(tmp_path)]) == 0
    recs = json.loads((tmp_path / "metrics.json").read_text())["records"]
    done = {r["strategy"]: r for r in recs if r["round"] == 1}
    assert set(done) == set(names)
    assert all(np.isfinite(r["heldout_loss"]) and r["upload_bytes"] > 0 for r in done.values())


def _client(n_train: int) -> ClientDataset:
    ids = torch.arange(n_train * 4).reshape(n_train, 4)
    blocks = TokenBlocks(ids, ids.clone(), torch.ones_like(ids))
    return ClientDataset("c0", blocks, blocks.select([0]), num_train_examples=17)


def test_capped_train_keeps_the_first_blocks_and_the_weight() -> None:
    capped = capped_train(_client(6), 2)
    assert capped.train.input_ids.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert capped.num_train_examples == 17  # the federation's weighting is unchanged
    assert len(capped_train(_client(3), 10).train) == 3  # a cap above the data keeps all of it


def test_train_blocks_must_be_positive() -> None:
    with pytest.raises(ValueError, match="train_blocks must be >= 1"):
        SimulationConfig(train_blocks=0)
