"""Held-out text to score global versions on: the clients of a data folder, or one server-side file.

The orchestrator (``[eval] path``) and ``hetlora evaluate --data`` score every committed version on text no
device trains on: either a folder laid out like a simulation's data (each client's validation split), or a
single file the operator holds out on the server, used whole.
"""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedTokenizerBase

from trainer.data.local import DataSpec, is_client_entry, load_client_data, load_client_dirs
from trainer.data.types import TokenBlocks


def heldout_sets(
    path: Path, tokenizer: PreTrainedTokenizerBase, clients: int | None, seq_len: int, blocks: int
) -> list[TokenBlocks]:
    """Up to ``blocks`` held-out blocks per client of a data folder (the first ``clients``), or of one file."""
    if path.is_file():
        whole = DataSpec(path=path, validation=path)  # every record held out: the file is the server's own
        return [load_client_data(whole, tokenizer, seq_len, heldout_blocks=blocks, min_train_blocks=1).heldout]
    n = clients if clients is not None else sum(is_client_entry(p) for p in path.iterdir())
    return [c.heldout for c in load_client_dirs(path, tokenizer, n, seq_len, heldout_blocks=blocks, min_train_blocks=1)]
