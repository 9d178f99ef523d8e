"""A client's dataset from the user's own files: one device's data, or one simulated client per file.

A client is a file (or a folder holding ``training.jsonl`` and optionally ``validation.jsonl``, the
layout ``hetlora data export`` writes). Without a validation file, ~15 % of the records are held out by
a hash of each record's canonical JSON, like the built-in corpora's splits: the split does not move when
records are added, and duplicates land on the same side. Clients too small for the block minimums are
skipped in simulation exactly as ``trainer.data.registry`` does; for one device they are an error.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from trainer.data.blocks import pack_blocks, pad_id_of
from trainer.data.records import FORMATS, Columns, RecordFormat, read_rows, to_records
from trainer.data.render import Pair, token_stream
from trainer.data.types import IGNORE_INDEX, ClientDataset, DataError, LossOn, TokenBlocks

HELDOUT_PERCENT = 15
TRAINING_FILE = "training.jsonl"
VALIDATION_FILE = "validation.jsonl"
CLIENT_FILE = "client.json"  # {"client_id": ...}: keeps an exported client's id (folder names are sanitised)
_SUFFIXES = (".jsonl", ".json", ".ndjson", ".csv", ".parquet")
_Row = tuple[str, int, dict[str, Any]]  # (file, index in it, row): error messages name both
Tokenizer = PreTrainedTokenizerBase
Blocks = TokenBlocks | str  # the blocks, or why there are too few


@dataclass(frozen=True)
class DataSpec:
    """Where a client's records are and how to read them (column names: see ``records.Columns``)."""

    path: Path
    validation: Path | None = None
    format: RecordFormat = "auto"
    loss_on: LossOn = "response"
    columns: Columns = field(default_factory=Columns)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise DataError(f"unknown record format {self.format!r}; valid formats: {', '.join(FORMATS)}")
        if self.loss_on not in ("response", "all"):
            raise DataError(f"loss_on must be 'response' or 'all', got {self.loss_on!r}")


def _canonical(value: Any) -> Any:
    """``value`` without None entries: datasets fills a column a row lacks with None, and a new column
    in one added record must not change every other record's hash."""
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def is_heldout_record(row: dict[str, Any]) -> bool:
    """Deterministic ~15 % of records, by sha1 of the record's canonical JSON."""
    text = json.dumps(_canonical(row), sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return int(hashlib.sha1(text.encode("utf-8")).hexdigest(), 16) % 100 < HELDOUT_PERCENT


@dataclass(frozen=True)
class _Split:
    train: list[_Row]
    heldout: list[_Row]


def _rows(path: Path, allow_empty: bool = False) -> list[_Row]:
    return [(str(path), i, row) for i, row in enumerate(read_rows(path, allow_empty))]


def _split(rows: list[_Row], validation: Path | None) -> _Split:
    if validation is not None:
        return _Split(rows, _rows(validation, allow_empty=True))  # no held-out text: "too small", not "bad"
    split = _Split([], [])
    for r in rows:
        (split.heldout if is_heldout_record(r[2]) else split.train).append(r)
    return split


def client_files(spec: DataSpec) -> tuple[Path, Path | None]:
    """(training file, validation file or None); a folder holding training.jsonl means that file and its
    sibling validation.jsonl, when there is one and ``spec.validation`` names none."""
    path, validation = Path(spec.path), spec.validation
    if path.is_dir() and (path / TRAINING_FILE).exists():
        if validation is None and (path / VALIDATION_FILE).exists():
            validation = path / VALIDATION_FILE
        path = path / TRAINING_FILE
    return path, Path(validation) if validation is not None else None


def _read_split(spec: DataSpec) -> _Split:
    train, validation = client_files(spec)
    return _split(_rows(train), validation)


def _stream(rows: list[_Row], spec: DataSpec, tok: Tokenizer) -> list[Pair]:
    """Every row rendered, so bad data anywhere fails here, before anything trains."""
    pairs: list[Pair] = []
    for source in dict.fromkeys(r[0] for r in rows):  # keeps file order
        mine = [(i, row) for s, i, row in rows if s == source]
        records = to_records([row for _, row in mine], spec.format, spec.columns, source)
        pairs += token_stream(records, tok, spec.loss_on, source, [i for i, _ in mine])
    return pairs


def _blocks(rows: list[_Row], spec: DataSpec, tok: Tokenizer, seq_len: int, cap: int | None, least: int) -> Blocks:
    """The packed blocks of ``rows``, or why there are fewer than ``least`` of them."""
    pairs = _stream(rows, spec, tok)
    blocks = pack_blocks(pairs, pad_id_of(tok), seq_len, max_blocks=cap)
    if len(blocks) >= least:
        return blocks
    n_tokens = sum(len(ids) for ids, _ in pairs)
    n_labels = sum(x != IGNORE_INDEX for _, labels in pairs for x in labels)
    return (
        f"{len(rows)} records make {len(blocks)} blocks of {seq_len} tokens ({n_tokens} tokens, {n_labels} with loss)"
    )


def _build(
    name: str, split: _Split, spec: DataSpec, tok: Tokenizer, seq_len: int, need: tuple[int, int]
) -> ClientDataset | str:
    """The client's dataset, or why it is too small (held-out first: capped, it rules a client out cheaply)."""
    heldout_blocks, min_train_blocks = need
    heldout = _blocks(split.heldout, spec, tok, seq_len, heldout_blocks, heldout_blocks)
    if isinstance(heldout, str):
        return f"{name}: its held-out {heldout}; {heldout_blocks} are needed"
    train = _blocks(split.train, spec, tok, seq_len, None, min_train_blocks)
    if isinstance(train, str):
        return f"{name}: its training {train}; at least {min_train_blocks} are needed"
    return ClientDataset(name, train, heldout, num_train_examples=len(split.train))


def is_client_entry(path: Path) -> bool:
    """A file or client folder that makes one client in a data folder (hidden names never do)."""
    return not path.name.startswith(".") and (path.suffix.lower() in _SUFFIXES or (path / TRAINING_FILE).exists())


def _client_id(path: Path) -> str:
    marker = path / CLIENT_FILE
    if path.is_dir() and marker.exists():
        return str(json.loads(marker.read_text(encoding="utf-8"))["client_id"])
    return path.name.removesuffix(path.suffix) if path.is_file() else path.name


def load_client_data(
    spec: DataSpec,
    tokenizer: PreTrainedTokenizerBase,
    seq_len: int,
    heldout_blocks: int = 8,
    min_train_blocks: int = 4,
    client_id: str | None = None,
) -> ClientDataset:
    """One client's train blocks and ``heldout_blocks`` held-out blocks from its files; a ``DataError``
    when the data is malformed or too small (``min_train_blocks`` train blocks are required)."""
    name = client_id or _client_id(Path(spec.path))
    built = _build(name, _read_split(spec), spec, tokenizer, seq_len, (heldout_blocks, min_train_blocks))
    if isinstance(built, str):
        raise DataError(built)
    return built


def _partition(path: Path, column: str, spec: DataSpec) -> list[tuple[str, _Split]]:
    """One client per value of ``column``: most records first, ties by value."""
    groups: dict[str, list[_Row]] = {}
    for row in _rows(path) + (_rows(spec.validation) if spec.validation else []):
        if row[2].get(column) is None:
            found = sorted(k for k, v in row[2].items() if v is not None)
            raise DataError(f"{row[0]}: record {row[1]} has no {column!r} to partition by (fields: {found})")
        groups.setdefault(str(row[2][column]), []).append(row)
    sizes = Counter({k: len(v) for k, v in groups.items()})
    out = []
    for value in sorted(groups, key=lambda v: (-sizes[v], v)):
        rows, valid = groups[value], str(spec.validation)
        split = _Split([r for r in rows if r[0] != valid], [r for r in rows if r[0] == valid])
        out.append((f"{column}:{value}", split if spec.validation else _split(rows, None)))
    return out


def load_client_dirs(
    data_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    n_clients: int,
    seq_len: int,
    heldout_blocks: int = 8,
    min_train_blocks: int = 4,
    partition_by: str | None = None,
    **spec_fields: Any,
) -> list[ClientDataset]:
    """The first ``n_clients`` clients of ``data_dir`` that meet the block minimums, for simulation.

    ``data_dir`` holds one file (or ``training.jsonl`` folder) per client, taken in name order, or is one
    file that ``partition_by`` splits by a column's value. ``spec_fields`` are ``DataSpec`` fields.
    """
    if n_clients < 1:
        raise ValueError(f"n_clients must be >= 1, got {n_clients}")
    data_dir = Path(data_dir)
    spec = DataSpec(path=data_dir, **spec_fields)
    candidates: Iterable[tuple[str, _Split]]
    if partition_by is not None:
        candidates = _partition(data_dir, partition_by, spec)
        total = len(candidates)
    elif data_dir.is_dir():
        entries = [p for p in sorted(data_dir.iterdir()) if is_client_entry(p)]
        candidates = ((_client_id(p), _read_split(DataSpec(path=p, **spec_fields))) for p in entries)  # lazy
        total = len(entries)
    else:
        raise DataError(f"{data_dir}: one file makes one client; pass partition_by=COLUMN to split it into clients")
    kept: list[ClientDataset] = []
    for name, split in candidates:
        built = _build(name, split, spec, tokenizer, seq_len, (heldout_blocks, min_train_blocks))
        if isinstance(built, ClientDataset):
            kept.append(built)
            if len(kept) == n_clients:
                return kept
    raise DataError(
        f"{data_dir}: only {len(kept)} of its {total} clients have >= {min_train_blocks} train blocks "
        f"and >= {heldout_blocks} held-out blocks of {seq_len} tokens; {n_clients} were requested"
    )
