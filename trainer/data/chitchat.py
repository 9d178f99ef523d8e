"""chitchat-dataset users as federated clients: a natural per-person split of real human chat.

Each user's examples are "what the other person just said" (or, on a conversation's first turn, the
conversation's prompt) → "what this user answered". The held-out split is by whole conversation, hashed
from its id, so a client's held-out exchanges never share a conversation with its training data and the
split does not depend on which or how many users are loaded.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from trainer.data.types import ClientText, Example

HELDOUT_PERCENT = 15


def dataset_path() -> Path:
    """``chitchat_dataset/dataset.json``, located without importing the package."""
    spec = importlib.util.find_spec("chitchat_dataset")
    if spec is None or spec.origin is None:
        raise RuntimeError("package 'chitchat_dataset' is not installed (pip install chitchat-dataset)")
    return Path(spec.origin).parent / "dataset.json"


def is_heldout_conversation(conversation_id: str) -> bool:
    """Deterministic ~15 % of conversations, by sha1 of the conversation id (the JSON's top-level key)."""
    digest = hashlib.sha1(conversation_id.encode("utf-8")).hexdigest()
    return int(digest, 16) % 100 < HELDOUT_PERCENT


def _turn_text(turn: list[dict[str, Any]]) -> str:
    """A turn's utterances joined by newlines; blank utterances are dropped."""
    return "\n".join(s for s in (str(m["text"]).strip() for m in turn) if s)


def _client_id(sender: str) -> str:
    return f"chitchat:{sender[:8]}"


@functools.lru_cache(maxsize=1)
def _all_users() -> tuple[ClientText, ...]:
    """Every user, most utterances first (ties by id). Cached: parsing the 40 MB JSON takes seconds."""
    with dataset_path().open(encoding="utf-8") as f:
        conversations: dict[str, dict[str, Any]] = json.load(f)

    utterances: Counter[str] = Counter()
    train: dict[str, list[Example]] = defaultdict(list)
    heldout: dict[str, list[Example]] = defaultdict(list)
    for conv_id, conv in conversations.items():
        split = heldout if is_heldout_conversation(conv_id) else train
        context = str(conv.get("prompt", "")).strip()
        for turn in conv["messages"]:
            if not turn:
                continue
            sender = str(turn[0]["sender"])
            utterances[sender] += len(turn)
            text = _turn_text(turn)
            # No example without both sides; a blank turn is still "the previous turn" for the next one.
            if context and text:
                split[sender].append(Example(prompt=context, response=text))
            context = text

    ranked = sorted(utterances, key=lambda s: (-utterances[s], s))
    ids = [_client_id(s) for s in ranked]
    if len(set(ids)) != len(ids):  # 8 hex chars of 1,315 UUIDs: a collision would silently merge clients
        raise RuntimeError("chitchat client id prefix collision; lengthen the prefix in _client_id")
    return tuple(
        ClientText(cid, tuple(train.get(s, ())), tuple(heldout.get(s, ()))) for s, cid in zip(ranked, ids, strict=True)
    )


def load_chitchat_users(n_users: int) -> list[ClientText]:
    """The ``n_users`` users with the most utterances, in that order."""
    if n_users < 0:
        raise ValueError(f"n_users must be >= 0, got {n_users}")
    return list(_all_users()[:n_users])
